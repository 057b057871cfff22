"""SCEP GetCRL's lane (RFC 8894 §3.3.4): the work of a GetCRL answer that grows with the CRL, apart from enrolments.

A GetCRL answer is the CA's CRL in a degenerate PKCS#7, encrypted to the requester and signed by the RA: its cost
grows with the CRL (about 26 ms for a 3 MB CRL, and a million entries is 46 MB), and anyone can ask (a self-signed
signer is enough). Built on the SCEP threads, a flood of them held the threads that serve PKCSReq and RenewalReq.
Here it runs on a thread of its own, and at most ``limit`` GetCRLs are in the lane (being built or waiting); one
more is refused at once (GetCrlBusy: HTTP 503 with Retry-After), never queued without bound. The degenerate PKCS#7
holding a CRL is built once per CRL and reused; the encryption and the RA's signature are per request.

An answer built is as large as the CRL and belongs to its request alone, so it keeps its place in the lane until
it has been delivered too, when the caller asks for that (:func:`delivering`: the HTTP layer does, and ends the
delivery once the answer is sent, or cut by the send deadline, or the connection is gone): answers built and
waiting on a client that reads them slowly, or not at all, count against the same ``limit``, so at most ``limit``
such answers are held in memory, however many clients ask and never read.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Iterator

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


class _Place:
    """A place in the lane held by an answer until both its building and its delivery are over (two releases,
    from the lane's thread and from the event loop, in either order)."""

    __slots__ = ("_leave", "_left", "_lock")

    def __init__(self, leave: Callable[[], None]) -> None:
        self._leave = leave
        self._left = 2
        self._lock = threading.Lock()

    def release(self, _future=None) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._leave()


class GetCrlBusy(ServiceUnavailable):
    """A GetCRL while this process's GetCRL lane is full (``server.scep_getcrl_queue`` answers being built,
    waiting, or built and still being sent): try again, rather than wait behind the others (HTTP 503 with
    Retry-After)."""

    code = "getcrl_busy"


class Delivery:
    """The places in GetCRL lanes held by the answers of one request until :meth:`done`: the answer is delivered
    (or will never be). Made by :func:`delivering`."""

    __slots__ = ("_leaves",)

    def __init__(self) -> None:
        self._leaves: list[Callable[[], None]] | None = []

    def _hold(self, leave: Callable[[], None]) -> bool:
        """Keep a place until :meth:`done` (False once done: the caller gives it back itself)."""
        if self._leaves is None:
            return False
        self._leaves.append(leave)
        return True

    def done(self) -> None:
        """The answers are delivered, or never will be: their places are given back (once; later calls do
        nothing)."""
        leaves, self._leaves = self._leaves, None
        for leave in leaves or ():
            leave()


_DELIVERY: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar("getcrl_delivery", default=None)


@contextlib.contextmanager
def delivering() -> Iterator[Delivery]:
    """GetCRL answers built within this block (in this task) keep their places in the lane until the
    :class:`Delivery` yielded is done. The caller must call its ``done()`` on every path once it holds a place."""
    delivery = Delivery()
    token = _DELIVERY.set(delivery)
    try:
        yield delivery
    finally:
        _DELIVERY.reset(token)


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
        when the lane is full; `crl` (which may answer CrlNotReady) is awaited once a place is taken. The place is
        held until the answer is built (or dropped unstarted) and, within :func:`delivering`, until the delivery
        is done as well."""
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
            # request stops waiting for it: requests abandoned by their clients cannot pile work up behind the bound;
            # with a delivery, not before the delivery is done either (the answer sent, or never to be)
            delivery = _DELIVERY.get()
            if delivery is None:
                future.add_done_callback(self._leave)
            else:
                place = _Place(self._leave)
                if not delivery._hold(place.release):
                    place.release()
                future.add_done_callback(place.release)
            return await asyncio.wrap_future(future)
        finally:
            if not submitted:
                self._leave()

    def _leave(self, _future=None) -> None:
        with self._lock:
            self._in_lane -= 1

    @property
    def in_lane(self) -> int:
        """GetCRLs in the lane now: being built, waiting, or built and not yet delivered."""
        return self._in_lane

    def _build(self, ca: str, crl_der: bytes, reply: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
        cached = self._content.get(ca)
        if cached is None or cached[0] is not crl_der:
            cached = self._content[ca] = (crl_der, codec.build_degenerate([], [crl_der]))
        return cached[1], reply(cached[1])

    async def close(self) -> None:
        """Stop once the answer being built is done (those waiting are dropped)."""
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._executor.shutdown, wait=True, cancel_futures=True))
