"""The connection layer under the application: the limits of aiohttp's HTTP parser, and the answer to a request
that parser refuses, as a problem document like every other failure of the server (docs/api.md "Errors").

aiohttp parses a request before any route or middleware sees it. What it refuses (a request line or a header
longer than its limit, too many headers, a malformed request line, method, target or header, broken chunked
framing) it answers itself, in ``RequestHandler.handle_error``: a ``text/plain`` 400 that quotes the bytes that
did not parse. Here that answer is a problem document instead: 414 for a request line over
:data:`MAX_REQUEST_LINE` (RFC 9112 §3), 431 for a header over :data:`MAX_FIELD_SIZE` or more than
:data:`MAX_HEADERS` of them (RFC 6585 §5), 400 for the rest; its ``detail`` is a fixed sentence per kind of
failure, never the request's bytes. The connection is closed after it, as aiohttp closes it, and the log line
is still the one ``http.malformed_request`` at info (:mod:`scep_server.logs`), without traceback.

aiohttp has no public hook for this answer (aio-libs/aiohttp#3287): the handler class is chosen by
``web.Server.__call__`` and the server made by ``AppRunner._make_server``. :class:`AppRunner` overrides that
method (the one :class:`aiohttp.web.BaseRunner` declares for its subclasses) and builds a :class:`ProblemServer`
from the server aiohttp made, with its own handler settings (``_loop``, ``_kwargs``: read, never written).
:func:`run_app` is aiohttp's ``web.run_app`` for one listening socket, with that runner. A change of these
aiohttp internals fails at start (an attribute gone) or in tests/app/test_parse_errors.py, never silently in a
way that sends another body than the one tested.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import (BadHttpMessage, BadHttpMethod, BadStatusLine, HttpProcessingError,
                                     InvalidHeader, InvalidURLError, LineTooLong, PayloadEncodingError)
from aiohttp.streams import StreamReader
from aiohttp.web import RequestPayloadError

from trustkit.problems import problem

MAX_REQUEST_LINE = 16 * 1024
"""The longest request target aiohttp reads (its ``max_line_size``; aiohttp's own default is 8190). A SCEP
PKIOperation over GET carries the whole pkiMessage in base64 in its query: a PKCSReq with an RSA-4096 key is a
request line of about 5.9 KB, the renewal of a certificate with twenty SANs under RSA-4096 keys, signed by that
certificate, 8.6 to 9 KB: past aiohttp's limit. 16 KiB gives such requests nearly twice that room; larger ones
are POSTed (GetCACaps offers POSTPKIOperation). A line this long costs what a POSTed pkiMessage of that size
costs: one linear pass."""
MAX_FIELD_SIZE = 8190
"""The longest header line (name and value), aiohttp's default. It differs from MAX_REQUEST_LINE: that is how
an over-long request line (414) is told from an over-long header (431), both raised as one exception type
naming its limit. (aiohttp's pure-Python parser, used without its C extension, names the request-line limit for
any unterminated line longer than it, a header's too: that one is a 414.)"""
MAX_HEADERS = 128
"""The most header lines in a request, aiohttp's default."""

LIMITS: dict[str, int] = {"max_line_size": MAX_REQUEST_LINE, "max_field_size": MAX_FIELD_SIZE,
                          "max_headers": MAX_HEADERS}
"""The parser's limits as aiohttp's ``handler_args`` (the application carries them: every runner applies them)."""

_TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message (both parsers), which quotes nothing


def parse_problem(exc: HttpProcessingError, status: int, *, max_line_size: int, max_field_size: int,
                  max_headers: int) -> web.Response:
    """The problem document answering a request the HTTP parser refused with `exc` (`status` is aiohttp's, 400).
    The status is refined where the failure says which limit was passed; the detail names the kind of failure
    and the limit, and nothing the client sent."""
    if status != 400:  # an aiohttp that chooses a finer status itself is followed
        return problem(status, "the request could not be parsed as HTTP/1.1", code="malformed_request")
    if isinstance(exc, LineTooLong):
        limit = _limit(exc)
        if limit == max_line_size != max_field_size:
            return problem(414, f"the request line is longer than {max_line_size} bytes; a SCEP PKIOperation "
                                "this large is sent with POST", code="uri_too_long")
        if limit == max_field_size != max_line_size:
            return problem(431, f"a header line is longer than {max_field_size} bytes", code="header_too_large")
        return problem(400, "a line of the request is too long", code="line_too_long")
    if type(exc) is BadHttpMessage and exc.message == _TOO_MANY_HEADERS:
        return problem(431, f"the request has more than {max_headers} header lines", code="too_many_headers")
    if isinstance(exc, BadHttpMethod):
        return problem(400, "the request method is not a valid HTTP method", code="invalid_method")
    if isinstance(exc, BadStatusLine):
        return problem(400, "the request line is malformed", code="malformed_request_line")
    if isinstance(exc, InvalidURLError):
        return problem(400, "the request target is not a valid URL", code="invalid_target")
    if isinstance(exc, InvalidHeader):
        return problem(400, "a header is malformed", code="invalid_header")
    if isinstance(exc, PayloadEncodingError):
        return problem(400, "the request body's framing (Content-Length or chunked encoding) is broken",
                       code="malformed_framing")
    return problem(400, "the request could not be parsed as HTTP/1.1 (its request line, headers or chunked "
                        "framing)", code="malformed_request")


def _limit(exc: LineTooLong) -> int | None:
    """The limit a LineTooLong names (its second argument: an int from the C parser, a str from Python's)."""
    try:
        return int(exc.args[1])
    except (IndexError, TypeError, ValueError):
        return None


class ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering a request its parser refused with a problem document.

    It also ends the body of a request whose framing breaks after its route started reading it (a chunk size
    that does not parse, in a later packet than the headers). aiohttp's C parser then drops that body and queues
    the parse error as a request of its own, after the one still being read: the route would wait on the body
    for ever (until the body deadline, :mod:`scep_server.web.bodytime`) and the 400 would come after its answer.
    Here the body fails at once with ``RequestPayloadError``, as aiohttp's pure-Python parser fails it, which the
    route's errors answer as a 400 (``http.bad_body``); the connection takes no more bytes and is closed after
    that answer, the queued error left unanswered. This reads aiohttp's queue of parsed requests (``_messages``,
    ``_request_count``) and writes none of it."""

    __slots__ = ("_receiving",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._receiving: StreamReader | None = None  # the body the parser is feeding, until its end

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        added = self._request_count - count
        if not added:
            return
        messages = self._messages
        for index in range(len(messages) - added, len(messages)):
            message, payload = messages[index]
            if isinstance(message, RawRequestMessage):
                self._receiving = None if payload.is_eof() else payload
                continue
            body = self._receiving  # a parse error: in the body still arriving, or in a request of its own
            self._receiving = None
            if body is not None and not body.is_eof():
                self.close()  # nothing more is parsed, and the connection is closed after the route's answer (the
                # queued error with it, unanswered)
                body.set_exception(RequestPayloadError("the chunked framing of the request body is broken"))
                body.feed_eof()  # ended: aiohttp does not linger reading it after the answer
            return

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or status >= 500:
            return super().handle_error(request, status, exc, message)  # a handler's failure: aiohttp's 500
        answer = parse_problem(exc, status, max_line_size=self.max_line_size, max_field_size=self.max_field_size,
                               max_headers=self.max_headers)
        exc.code = answer.status  # the status the log line names (scep_server.logs: http.malformed_request)
        # aiohttp's own answer is only made for what it does besides: the log record (one line, without the
        # traceback: scep_server.logs) and the ConnectionError when part of an answer was sent already
        super().handle_error(request, status, exc, message)
        answer.force_close()
        return answer


class ProblemServer(web.Server):
    """aiohttp's low-level server, whose connections are :class:`ProblemRequestHandler`s."""

    def __call__(self) -> ProblemRequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """aiohttp's application runner, serving through a :class:`ProblemServer`."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # the application started and frozen, its handler settings applied
        return ProblemServer(made.request_handler, request_factory=made.request_factory,
                             handler_cancellation=made.handler_cancellation, loop=made._loop, **made._kwargs)


def run_app(app: web.Application, *, sock: socket.socket, **kwargs: Any) -> None:
    """Serve `app` on the listening socket `sock` until SIGINT or SIGTERM, as ``aiohttp.web.run_app`` does (a 60 s
    shutdown), through :class:`AppRunner`. `kwargs` go to the runner: its keep-alive is aiohttp's handler default
    (3630 s) unless ``keepalive_timeout`` is given (``web.run_app`` gives 75 s)."""
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        runner = AppRunner(app, handle_signals=True, **kwargs)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            while True:
                await asyncio.sleep(3600)
        finally:
            await runner.cleanup()

    main = loop.create_task(serve())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                try:
                    loop.run_until_complete(main)
                except asyncio.CancelledError:
                    pass
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still running on `loop` and wait for them (what asyncio.run does at its end)."""
    left = asyncio.all_tasks(loop)
    if not left:
        return
    for task in left:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    for task in left:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception while the server stopped",
                                         "exception": task.exception(), "task": task})
