"""The deadline for receiving a request's body, on every route.

aiohttp bounds how long a connection may take to send a request's headers (the keep-alive timer), but once
they are parsed the route runs and reads the body with no deadline: a client that announces a body and then
sends it a byte at a time, or not at all, would hold a connection, a handler and its buffers for as long as it
likes, on routes that need no credential (SCEP, OCSP, the OTP validation protocol, the console's sign-in).

Here a request with a body must have received it whole within ``server.body_timeout_seconds`` plus one second
for every ``server.body_min_rate`` bytes received so far (Apache's mod_reqtimeout rule, ``body=20,MinRate=500``,
with a rate fit for today's links). A client that keeps sending at least that rate is never cut, however large
its body (a YubiKey secrets file up to ``otp.import_max_bytes``); what it announces in ``Content-Length`` buys it
nothing, only bytes sent do, and every route bounds the bytes it reads (``server.max_body_bytes``, SCEP's 64 KiB,
OCSP's ``max_request_bytes``, ``otp.import_max_bytes``), so a connection is held at most the base time plus its
route's limit at that rate. Only the receiving of the body is bounded: once it is all in, what the handler does
next (an enrolment waiting on Intune) is not. A request without a body arms nothing; one with a body costs one
timer handle, moved only for a body still arriving when it fires.

Past the deadline the pending read fails with :class:`BodyTimeout` (``StreamReader.set_exception``), which the
application's errors answer as a 408 problem document (code ``body_timeout``, ``Connection: close``); the
connection takes no more bytes and is closed after that answer, and the log has one ``http.body_timeout`` line.
"""
from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from trustkit.problems import DomainError

from . import client

log = structlog.get_logger("http")


class BodyTimeout(DomainError):
    """The request's body did not arrive within its deadline."""

    status = 408
    code = "body_timeout"


class _Deadline:
    """The timer of one request's body: fires at the base deadline, moved on while the body arrives at the
    minimum rate, and ends the read when it falls behind."""

    __slots__ = ("_request", "_loop", "_start", "_base", "_rate", "handle")

    def __init__(self, request: web.Request, loop: asyncio.AbstractEventLoop, base: float, rate: int) -> None:
        self._request = request
        self._loop = loop
        self._start = loop.time()
        self._base = base
        self._rate = rate
        self.handle: asyncio.TimerHandle = loop.call_at(self._start + base, self._check)

    def _check(self) -> None:
        content = self._request.content
        if content.is_eof():  # the whole body is in: what the handler does with it is not bounded here
            return
        received = content.total_bytes
        due = self._start + self._base + received / self._rate
        now = self._loop.time()
        if now < due:  # still arriving at the minimum rate
            self.handle = self._loop.call_at(due, self._check)
            return
        request = self._request
        log.info("http.body_timeout", method=request.method, path=request.path, client=client.client_address(request),
                 received=received, announced=request.content_length, seconds=round(now - self._start, 1))
        protocol = request.protocol
        if protocol is not None:
            protocol.close()  # no more of this connection is read; it is closed once the answer is sent
        content.set_exception(BodyTimeout(
            f"the request body was not received in time (at least {self._rate} bytes per second after "
            f"{self._base:g} s)", headers={"Connection": "close"}))
        # the body has ended for aiohttp too: it does not linger reading the rest (the read would fail again)
        content.feed_eof()


def middleware(base_seconds: float, min_rate: int):
    """The middleware arming each request's body deadline (`base_seconds`, then one second per `min_rate`
    bytes received)."""

    @web.middleware
    async def body_deadline(request: web.Request, handler):
        if request.content.is_eof():  # no body, or all of it in already: nothing to wait for
            return await handler(request)
        deadline = _Deadline(request, asyncio.get_running_loop(), base_seconds, min_rate)
        try:
            return await handler(request)
        finally:
            deadline.handle.cancel()

    return body_deadline
