"""The deadline for sending a large answer, on every route: a client that reads it slowly, or not at all, is cut.

aiohttp writes an answer's body to the connection in one ``transport.write`` (on Python before 3.12.9 after
joining it to the headers: a copy of the whole body), and asyncio keeps in the transport's buffer a copy of all
the socket did not take; the route then waits for that buffer to drain with no deadline. A client that asks for a
large answer and reads nothing (a CRL of a million entries is 46 MB; a SCEP GetCRL answer is as large and built
for that request alone) would hold that memory, the answer and the connection for as long as it keeps the
connection open: N such clients, N times the answer.

Here a body of :data:`LARGE` bytes or more is written in slices of :data:`CHUNK` bytes of the answer itself
(memoryview slices: no copy of the answer is made, and asyncio buffers at most about one slice beyond its
high-water mark), each written once the transport has drained below its low-water mark. The body must have been
sent within ``server.send_timeout_seconds`` plus one second for every ``server.send_min_rate`` bytes sent so far
(the rule of the request body's deadline, :mod:`scep_server.web.bodytime`, in the other direction), and the
client must take more of it at least every ``server.send_timeout_seconds`` (nginx's ``send_timeout``). "Sent" is
what the client's side took: on Linux the bytes its TCP acknowledged (what this process handed the system, less
what the system still holds unacknowledged, SIOCOUTQ), elsewhere what the system took. The system's send buffer
takes megabytes at once and wakes a writer only once a third of it has drained, so what this process hands it
says neither that a client reads (one reading at the rate may not drain a third of a 4 MB buffer within the
stall time) nor that it stopped. A client that reads nothing still has its receive buffer filled; the second
rule cuts it ``send_timeout_seconds`` after that. A client that keeps reading at least the rate is never cut,
however large the answer. Past the deadline the connection is reset (closed at once, what this
process and the system had buffered for it dropped, as nginx's ``reset_timedout_connection``), the log has one
``http.send_timeout`` line and the metric ``http_send_timeouts_total`` counts it by route.

A body smaller than :data:`LARGE` is written as aiohttp writes it: no timer, no task, nothing per request but a
length test. Its copy in the transport is below asyncio's high-water mark, so its route never waits on a client
to read it. A HEAD request, a 304 and an answer that is streamed, chunked or compressed are left alone.

:func:`after_send` lets a route keep a resource (a place in SCEP's GetCRL lane) until its answer has been sent,
or cut, or its connection is gone: the request's task runs the route and then sends its answer (aiohttp's
``RequestHandler._handle_request``), and whatever way it ends, the resource is released when that task is done.
"""
from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from typing import Callable

import structlog
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from .. import metrics
from . import access, client

log = structlog.get_logger("http")

LARGE = 32 * 1024
"""The smallest body sent in slices with a deadline: below asyncio's write-buffer high-water mark (64 KiB), so an
answer smaller than this never makes its route wait on the client."""
CHUNK = 64 * 1024
"""The bytes of a large body handed to the transport at a time (a slice of the answer, not a copy)."""


_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # Linux: a TCP socket's bytes sent but not acknowledged, or unsent


def _unacknowledged(sock: socket.socket | None) -> int:
    """The bytes of a TCP socket's send buffer the client's side has not acknowledged (Linux SIOCOUTQ), 0 where
    the system cannot say. The system's buffer takes megabytes at once and wakes a writer only once a third of it
    drained: what the transport handed it is not what the client took."""
    if sock is None or _SIOCOUTQ is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):  # closed meanwhile, or not a TCP socket
        return 0


class _Sending:
    """The timer of one large body: fires at the base deadline, moved on while the body leaves at the minimum
    rate and keeps leaving, and aborts the connection when it falls behind or stalls."""

    __slots__ = ("_request", "_transport", "_loop", "_start", "_base", "_rate", "_size", "handed", "progress",
                 "acked", "handle")

    def __init__(self, request: web.BaseRequest, transport: asyncio.Transport, base: float, rate: int,
                 size: int) -> None:
        loop = asyncio.get_running_loop()
        self._request = request
        self._transport = transport
        self._loop = loop
        self._start = self.progress = loop.time()  # progress: when the client last took more of the answer
        self.acked = 0  # bytes the client's side has taken, as last seen
        self._base = base
        self._rate = rate
        self._size = size
        self.handed = 0  # bytes of the body given to the transport
        self.handle: asyncio.TimerHandle = loop.call_at(self._start + base, self._check)

    def _check(self) -> None:
        transport = self._transport
        if transport.is_closing() and not transport.get_write_buffer_size():
            # closed with nothing left to send (the client went away, or the server closes): the write ends on its
            # own. A transport closing with bytes still buffered waits for the client to read them: a client that
            # half-closes (FIN) and reads nothing makes asyncio close the transport that way, so the deadline holds
            return
        sock = transport.get_extra_info("socket")
        sent = self.handed - transport.get_write_buffer_size() - _unacknowledged(sock)
        now = self._loop.time()
        if sent > self.acked:  # the client took more since the last look: it is reading
            self.acked, self.progress = sent, now
        due = self._start + self._base + sent / self._rate
        stalled_until = self.progress + self._base
        if now < due and now < stalled_until:  # still leaving, at the minimum rate
            self.handle = self._loop.call_at(min(due, stalled_until), self._check)
            return
        request = self._request
        route = access.route_template(request)
        log.info("http.send_timeout", method=request.method, route=route, client=client.client_address(request),
                 sent=sent, size=self._size, seconds=round(now - self._start, 1))
        metrics.send_timeout(route)
        if sock is not None:  # reset, not closed: the system drops what its buffers hold for this client too
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:  # pragma: no cover - the connection is gone already
                pass
        transport.abort()  # closed now: the waiting write fails (ConnectionResetError), the buffer is dropped


class PacedBody(Payload):
    """A response body written in slices under the send deadline (see the module's docstring)."""

    _autoclose = True  # bytes in memory: nothing to close

    def __init__(self, value: bytes | bytearray, request: web.BaseRequest, base: float, rate: int,
                 content_type: str | None) -> None:
        super().__init__(value, content_type=content_type)
        self._size = len(value)
        self._request = request
        self._base = base
        self._rate = rate

    @property
    def value(self) -> bytes | bytearray:
        """The body's bytes."""
        return self._value

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return bytes(self._value)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        transport = self._request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the connection was closed before the answer was sent")
        sending = _Sending(self._request, transport, self._base, self._rate, len(view))
        try:
            for offset in range(0, len(view), CHUNK):
                chunk = view[offset:offset + CHUNK]
                # aiohttp's write hands the slice to the transport at once and, once it holds more than 64 KiB,
                # waits for it to drain (the only wait, and the one the deadline ends): counted as handed before
                sending.handed += len(chunk)
                await writer.write(chunk)
        finally:
            sending.handle.cancel()


def middleware(base_seconds: float, min_rate: int):
    """The middleware sending each large answer under the send deadline (`base_seconds`, then one second per
    `min_rate` bytes sent)."""

    @web.middleware
    async def send_deadline(request: web.Request, handler):
        response = await handler(request)
        body = getattr(response, "body", None)  # a web.Response's bytes; a StreamResponse has none
        if (type(body) is bytes or type(body) is bytearray) and len(body) >= LARGE and not response.prepared \
                and not response.chunked and not response.compression and request.method != hdrs.METH_HEAD:
            response.body = PacedBody(body, request, base_seconds, min_rate, response.content_type)
        return response

    return send_deadline


def after_send(request: web.BaseRequest, release: Callable[[], None]) -> None:
    """Call `release` once `request`'s answer has been sent, or cut, or the request ended any other way (its
    route failed or was cancelled, the connection went away). Called from the route, in the request's task."""
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - a route always runs in a task
        release()
        return
    task.add_done_callback(lambda _task: release())
