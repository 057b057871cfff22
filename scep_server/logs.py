"""Structured logs (structlog): JSON lines by default, one event per SCEP transaction.

Every line written while a request is handled carries its `request_id` (structlog's context variables,
bound by :mod:`scep_server.web.access`). Events logged through the standard library (the `crl` and `otp` libraries use `logging`, with their
fields in `extra=`) go through structlog's `ProcessorFormatter`: every line is one JSON object (or one
console line) with the event's fields, whichever API wrote it.
"""
from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", fmt: str = "json", *, cache: bool = False) -> None:
    """Configure structlog and logging. ``cache`` freezes each logger at first use: for server workers only,
    since a frozen logger ignores any later configuration (a CLI command run in-process must not freeze them).
    """
    lvl = getattr(logging, level.upper())
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
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
            renderer,
        ],
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)  # configured again (a CLI command after another, in one process)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(lvl)
    # Alembic announces each of its plugins at info at every start: noise for an operator below debug
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING if lvl > logging.DEBUG else logging.NOTSET)


def access_logger():
    """The access log's logger: the configured processors and output, but its `info` lines are written
    whatever `log.level` is (an operator who turns `log.access` on wants them)."""
    return structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                                 logger_factory_args=("http.access",))


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
