"""SQLAlchemy's pool logs a connection close that a task's cancellation interrupted as an error with a traceback:
a worker stopped while it starts (another worker could not start, `test_worker_restart`) or a time limit around a
query. Nothing is lost there (what was not committed is not; the connection is dropped), and an operator reading
a traceback looks for a fault: the record is kept for debug, in one line; other pool errors keep theirs."""
from __future__ import annotations

import asyncio
import logging

from tests.app.test_access_log import json_logs, lines  # noqa: F401  (fixture)

POOL = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"  # SQLAlchemy's instance logger of an async engine's pool


def _close_failed(exc: BaseException) -> None:
    try:
        raise exc
    except BaseException:  # as sqlalchemy.pool.base.Pool._close_connection logs it
        logging.getLogger(POOL).error("Exception closing connection %r", "<AsyncAdapt_aiosqlite_connection>",
                                      exc_info=True)


def test_a_close_interrupted_by_a_cancellation_is_no_traceback(json_logs, capsys):  # noqa: F811
    json_logs("warning")
    capsys.readouterr()
    _close_failed(asyncio.CancelledError())
    assert "Traceback" not in capsys.readouterr().err

    json_logs("debug")
    _close_failed(asyncio.CancelledError())
    events = [e for e in lines(capsys) if e.get("logger") == POOL]
    assert len(events) == 1 and "exception" not in events[0], events
    assert "cancelled" in events[0]["event"]


def test_other_close_errors_keep_their_traceback(json_logs, capsys):  # noqa: F811
    json_logs("warning")
    capsys.readouterr()
    _close_failed(OSError("disk I/O error"))
    events = [e for e in lines(capsys) if e.get("logger") == POOL]
    assert len(events) == 1 and "OSError: disk I/O error" in events[0]["exception"], events
