"""Structured logs (structlog): JSON lines by default, one event per SCEP transaction."""
from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", fmt: str = "json", *, cache: bool = False) -> None:
    """Configure structlog and logging. ``cache`` freezes each logger at first use: for server workers only,
    since a frozen logger ignores any later configuration (a CLI command run in-process must not freeze them).
    """
    lvl = getattr(logging, level.upper())
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr) if cache else _StderrLoggerFactory(),
        cache_logger_on_first_use=cache,
    )


class _StderrLoggerFactory:
    """Loggers that write to whatever ``sys.stderr`` is when they log (it may be swapped, e.g. by click's runner)."""

    def __call__(self, *args) -> "_StderrLogger":
        return _StderrLogger()


class _StderrLogger:
    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg
