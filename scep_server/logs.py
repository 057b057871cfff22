"""Structured logs (structlog): JSON lines by default, one event per SCEP transaction.

Events logged through the standard library (the `otp` and `trustkit` libraries use `logging`, with their
fields in `extra=`; alembic and aiohttp too) go through structlog's `ProcessorFormatter`: every line is one
JSON object (or one console line) with the event's fields, whichever API wrote it. Every line written while
a request is handled carries its `request_id` (structlog's context variables, bound by
:mod:`scep_server.web.access`). The events are catalogued in :mod:`scep_server.logevents`.
"""
from __future__ import annotations

import atexit
import json
import logging
import re
import sys
import time

import structlog

from trustkit.deferred import DeferredFlush


_format: "str | None" = None  # the format configured, None before configure()


def configure(level: str = "info", fmt: str = "json", *, cache: bool = False) -> None:
    """Configure structlog and logging. ``cache`` freezes each logger at first use: for server workers only,
    since a frozen logger ignores any later configuration (a CLI command run in-process must not freeze them).
    """
    global _format
    lvl = getattr(logging, level.upper())
    _format = fmt
    if fmt == "json":
        rendering: list = [structlog.processors.JSONRenderer()]
    else:
        rendering = [_one_line, structlog.dev.ConsoleRenderer(colors=False)]
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            *rendering,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr) if cache else _StderrLoggerFactory(),
        cache_logger_on_first_use=cache,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),  # the record's `extra=` fields
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            *rendering,
        ],
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)  # configured again (a CLI command after another, in one process)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(_CancelledCloses(lvl))  # a handler's filter sees the records of every logger below the root
    root.addHandler(handler)
    root.setLevel(lvl)
    # Alembic announces each of its plugins at info at every start: noise for an operator below debug
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING if lvl > logging.DEBUG else logging.NOTSET)
    server = logging.getLogger("aiohttp.server")
    for old in [f for f in server.filters if isinstance(f, _MalformedRequests)]:
        server.removeFilter(old)
    server.addFilter(_MalformedRequests(lvl))


log = structlog.get_logger("http")

# Characters that end or rewrite a line at a terminal or in a line-based collector: C0 and C1 controls, DEL and
# the Unicode line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROLS_BUT_LINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_MULTILINE_KEYS = frozenset({"exception", "stack"})  # a traceback keeps its line breaks (\n), and only them


def _one_line(_logger: object, _name: str, event_dict: dict) -> dict:
    """The console format writes text values as they are; a value a client chose (a Basic user name, a header)
    with a line break in it would start a line of its own that reads as another event. Its control characters
    are written escaped (``\\n``, ``\\x1b``); JSON lines escape them already."""
    for key, value in event_dict.items():
        if type(value) is str:
            controls = _CONTROLS_BUT_LINES if key in _MULTILINE_KEYS else _CONTROLS
            if controls.search(value):
                event_dict[key] = controls.sub(_escaped, value)
    return event_dict


def _escaped(match: re.Match) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class _CancelledCloses(logging.Filter):
    """SQLAlchemy's pool logs a connection close that a task's cancellation interrupted (a worker stopped while it
    starts, a time limit around a query) as an error with a traceback. Nothing is lost there: what was not
    committed is not, and the connection is dropped. Such a record is kept for debug, in one line."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not record.name.startswith("sqlalchemy.pool"):
            return True
        import asyncio

        if not isinstance(record.exc_info[1], asyncio.CancelledError):
            return True
        if self.level > logging.DEBUG:
            return False
        record.exc_info, record.exc_text = None, None
        record.msg = f"{record.msg} (cancelled)"
        return True


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (bad request line, method or header, a line too long) as an
    error with a traceback. On a server facing the internet that is the client's doing, not a fault of
    ours: such a record becomes one `http.malformed_request` line at info, without traceback (the client
    got a 400)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1]
        if not isinstance(exc, HttpProcessingError):
            return True
        if self.level <= logging.INFO:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
            log.info("http.malformed_request", peer=str(peer) if peer is not None else None, status=exc.code,
                     error=type(exc).__name__, detail=_without_quoted_bytes(str(exc.message)))
        return False


def _without_quoted_bytes(message: str) -> str:
    """What a parse error of aiohttp's says, without the bytes it quotes (the line that did not parse may be an
    Authorization header, or a request line with a token in its query): its first line, up to the quote."""
    first = message.split("\n", 1)[0]
    quoted = _QUOTED.search(first)
    return (first[:quoted.start()] if quoted else first).rstrip(" :")[:200]


_QUOTED = re.compile(r"(?:bytearray\(b|\bb)?['\"]")  # b'...', bytearray(b'...'), '...'; what aiohttp quotes


# the access log's lines are written whatever log.level is (an operator who turns log.access on wants them)
_access_log = structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                                    logger_factory_args=("http.access",))
_quote = json.encoder.encode_basestring_ascii  # a JSON string literal, escaped (C)


# A request only queues its access line's values; they wait up to ACCESS_FLUSH_SECONDS, or until ACCESS_FLUSH_LINES
# of them, and are then formatted together and go out in one write: one system call for every line of that time
# instead of one per line, and the formatting run as one loop (measured in a serving worker: a line formatted at
# its request cost about three times what the same lines cost formatted in a row). A worker's exit writes what is
# left (flush_access); a process killed outright loses at most that much of its access log, never an answer.
ACCESS_FLUSH_SECONDS = 0.25
ACCESS_FLUSH_LINES = 256
_pending_access: list[tuple] = []  # (method, route, status, duration_ms, client, request_id, time.time())

# The JSON literals of the values an access line repeats (methods, route templates, client addresses), each
# escaped once; bounded, since client addresses are many.
_QUOTED_MAX = 4096
_quoted: dict[str, str] = {}


def _quoted_literal(text: str) -> str:
    found = _quoted.get(text)
    if found is None:
        if len(_quoted) >= _QUOTED_MAX:
            _quoted.clear()
        found = _quoted[text] = _quote(text)
    return found


def _json_lines(pending: list[tuple]) -> str:
    """The JSON lines of queued access lines: the line structlog would write (same keys and order, its ISO
    timestamp in UTC with `Z`), formatted without its processor chain."""
    q, gmtime, strftime = _quoted_literal, time.gmtime, time.strftime
    second, date = None, ""  # the timestamp to the second, made once per second of the batch
    out = []
    for method, route, status, duration_ms, client, request_id, at in pending:
        whole = int(at)
        if whole != second:
            second, date = whole, strftime("%Y-%m-%dT%H:%M:%S", gmtime(whole))
        out.append(f'{{"method": {q(method)}, "route": {q(route)}, "status": {int(status)}, '
                   f'"duration_ms": {float(duration_ms):.3f}, "client": {q(client)}, '
                   f'"request_id": {_quote(request_id)}, "event": "http.access", "level": "info", '
                   f'"timestamp": "{date}.{int((at - whole) * 1e6):06d}Z"}}\n')
    return "".join(out)


def flush_access() -> None:
    """Write the access lines waiting to go out (at once)."""
    if not _pending_access:
        return
    pending = _pending_access[:]
    _pending_access.clear()
    try:
        stream = sys.stderr
        stream.write(_json_lines(pending))
        stream.flush()
    except (OSError, ValueError):  # stderr gone (a collector that died): the requests are answered all the same
        pass


_deferred = DeferredFlush(flush_access, ACCESS_FLUSH_SECONDS)
atexit.register(flush_access)  # lines still waiting when the process stops


def access_line(method: str, route: str, status: int, duration_ms: float, client: str, request_id: str) -> None:
    """Write one `http.access` line. In JSON (the default): within ACCESS_FLUSH_SECONDS on an event loop, with the
    other lines of that time, at once outside one; there is one per request, so queueing it must cost little (under
    a microsecond). In the console format (for a person at a terminal), at once, through structlog."""
    if _format != "json":
        _access_log.info("http.access", method=method, route=route, status=status,
                         duration_ms=round(duration_ms, 3), client=client, request_id=request_id)
        return
    on_loop = _deferred.on_loop(bool(_pending_access))
    _pending_access.append((method, route, status, duration_ms, client, request_id, time.time()))
    if not on_loop or len(_pending_access) >= ACCESS_FLUSH_LINES:
        flush_access()


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record is emitted."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _StderrLoggerFactory:
    """Loggers that write to whatever ``sys.stderr`` is when they log (it may be swapped, e.g. by click's runner)."""

    def __call__(self, *args) -> "_StderrLogger":
        return _StderrLogger()


class _StderrLogger:
    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg
