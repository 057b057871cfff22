"""SCEP GetCRL's lane (RFC 8894 §3.3.4): the work of a GetCRL answer that grows with the CRL, apart from enrolments.

A GetCRL answer is the CA's CRL in a degenerate PKCS#7, encrypted to the requester and signed by the RA: its cost
grows with the CRL (about 26 ms for a 3 MB CRL, and a million entries is 46 MB), and anyone can ask (a self-signed
signer is enough). Built on the SCEP threads, a flood of them held the threads that serve PKCSReq and RenewalReq.
Here it runs on a thread of its own, and at most ``limit`` GetCRLs are in the lane (being built or waiting); one
more is refused at once (GetCrlBusy: HTTP 503 with Retry-After), never queued without bound. The degenerate PKCS#7
holding a CRL is built once per CRL and reused; the encryption and the RA's signature are per request.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable

from trustkit.problems import ServiceUnavailable

from .. import metrics
from ..scep import message as codec

GETCRL_QUEUE = 8
"""GetCRLs a worker builds or holds waiting in its lane by default (``server.scep_getcrl_queue``)."""
LANE_NICENESS = 10
"""How much lower than the rest of the process the lane's thread is scheduled (Linux: a thread has a nice value of
its own): when the CPUs are busy, enrolments and the event loop come first."""


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       min(19, os.getpriority(os.PRIO_PROCESS, 0) + LANE_NICENESS))
    except (AttributeError, OSError):  # not Linux, or not allowed: the thread keeps the process's priority
        pass


class GetCrlBusy(ServiceUnavailable):
    """A GetCRL while this process's GetCRL lane is full (``server.scep_getcrl_queue`` answers being built or
    waiting): try again, rather than wait behind the others (HTTP 503 with Retry-After)."""

    code = "getcrl_busy"


class GetCrlLane:
    """One thread, at most ``limit`` GetCRLs in it, and the degenerate PKCS#7 of each CA's current CRL."""

    def __init__(self, limit: int = GETCRL_QUEUE) -> None:
        self.limit = limit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scep-getcrl",
                                            initializer=_lower_priority)
        self._in_lane = 0
        self._lock = threading.Lock()
        # CA name -> (the CRL's DER, the degenerate PKCS#7 holding it): a publisher installs every new CRL as a new
        # object, so the PKCS#7 is built again only for a new CRL (read and written on the lane's one thread)
        self._content: dict[str, tuple[bytes, bytes]] = {}

    async def answer(self, ca: str, crl: Callable[[], Awaitable[bytes]],
                     reply: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
        """(the degenerate PKCS#7 holding `ca`'s CRL, ``reply(it)``: the CertRep built in the lane). GetCrlBusy
        when the lane is full; `crl` (which may answer CrlNotReady) is awaited once a place is taken."""
        with self._lock:
            busy = self._in_lane >= self.limit
            if not busy:
                self._in_lane += 1
        if busy:
            metrics.getcrl_busy(ca)
            raise GetCrlBusy(f"{self.limit} GetCRL answers are being built or waiting here; try again")
        submitted = False
        try:
            crl_der = await crl()
            future = self._executor.submit(contextvars.copy_context().run, self._build, ca, crl_der, reply)
            submitted = True
            # the place is given back once the lane has finished the answer or dropped it unstarted, not when the
            # request stops waiting for it: requests abandoned by their clients cannot pile work up behind the bound
            future.add_done_callback(self._leave)
            return await asyncio.wrap_future(future)
        finally:
            if not submitted:
                self._leave()

    def _leave(self, _future=None) -> None:
        with self._lock:
            self._in_lane -= 1

    def _build(self, ca: str, crl_der: bytes, reply: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
        cached = self._content.get(ca)
        if cached is None or cached[0] is not crl_der:
            cached = self._content[ca] = (crl_der, codec.build_degenerate([], [crl_der]))
        return cached[1], reply(cached[1])

    async def close(self) -> None:
        """Stop once the answer being built is done (those waiting are dropped)."""
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._executor.shutdown, wait=True, cancel_futures=True))
