"""Reads of a SQLite database over the standard library's sqlite3, for commands that only list.

A command that lists spends most of its time importing SQLAlchemy; on a SQLite database given by a plain file
URL it can read through sqlite3 instead. These are the pieces every such reader needs: which URLs it takes,
time values bound and parsed as SQLAlchemy's SQLite dialect stores them, keyset paging as SQL text, and a way
to run the stores' ``async`` read methods without an event loop (the sqlite3 reads never wait).
"""
from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, Coroutine, Sequence, TypeVar

T = TypeVar("T")

# the URLs a reader takes: sqlite:///PATH with the default or one of the SQLite drivers, nothing after the path
_SQLITE_URL = re.compile(r"\Asqlite(?:\+aiosqlite|\+pysqlite)?:///([^?#%]+)\Z")
BUSY_TIMEOUT_SECONDS = 30  # as trustkit.db's engines: wait for a writer's lock rather than fail


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL a reader takes, or None."""
    m = _SQLITE_URL.match(url)
    if m is None or m.group(1) == ":memory:":
        return None
    return Path(m.group(1))


def bind_time(value: datetime) -> str:
    """A time as SQLAlchemy's SQLite dialect binds and stores it (the fields as given, no offset)."""
    return (f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}:"
            f"{value.second:02d}.{value.microsecond:06d}")


def bind(value: Any) -> Any:
    """A parameter as the dialect binds it (times as :func:`bind_time`, the rest as given)."""
    return bind_time(value) if isinstance(value, datetime) else value


def after(columns: Sequence[str], key: Sequence[Any] | None, *, descending: bool = False
          ) -> tuple[str, list[Any]]:
    """:func:`trustkit.paging.after` as SQL text and parameters: the redundant bound, then the expanded OR."""
    if key is None:
        return "1 = 1", []
    if len(columns) != len(key):
        raise ValueError("the key and the columns differ in length")
    op = "<" if descending else ">"
    clauses, params = [], []
    for i, column in enumerate(columns):
        parts = [f"{c} = ?" for c in columns[:i]] + [f"{column} {op} ?"]
        clauses.append("(" + " AND ".join(parts) + ")")
        params += [bind(v) for v in key[:i]] + [bind(key[i])]
    if len(columns) == 1:
        return clauses[0], params
    bound = f"{columns[0]} {'<=' if descending else '>='} ?"
    return f"{bound} AND ({' OR '.join(clauses)})", [bind(key[0]), *params]


def time_ranges(bounds: Sequence[tuple[str, "datetime | None", "datetime | None"]]) -> tuple[list[str], list[Any]]:
    """``column >= low`` and ``column < high`` for each bound given, as SQL text and parameters (times bound as
    the dialect binds them): the stores' range filters (``*_after`` inclusive, ``*_before`` exclusive)."""
    where: list[str] = []
    params: list[Any] = []
    for column, low, high in bounds:
        if low is not None:
            where.append(f"{column} >= ?")
            params.append(bind_time(low))
        if high is not None:
            where.append(f"{column} < ?")
            params.append(bind_time(high))
    return where, params


def row_factory(cursor: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
    """Rows as dicts by column name."""
    return {d[0]: v for d, v in zip(cursor.description, row)}


def parse_times(row: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """The time columns parsed as SQLAlchemy's SQLite dialect reads them (naive, as stored)."""
    for c in columns:
        if isinstance(row[c], str):
            row[c] = datetime.fromisoformat(row[c])
    return row


def connect(path: Path) -> sqlite3.Connection:
    """A connection as the engines' (autocommit, waiting for a writer's lock), rows as dicts."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    conn.row_factory = row_factory
    return conn


class Reader:
    """One connection (:func:`connect`) held by a reader, closed with it (``with`` or :meth:`close`)."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def complete(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits for anything (asyncio is not even imported): RuntimeError if it
    does wait."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the coroutine waited: it needs an event loop (run)")
