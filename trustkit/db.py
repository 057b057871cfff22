"""Engine factory for the embedded SQLite default and PostgreSQL, and write transactions.

On SQLite every connection gets the same pragmas (:func:`sqlite_pragmas`), and a transaction begun on
:func:`writer` starts with ``BEGIN IMMEDIATE``: the ``sqlite_begin`` execution option is honoured by every
engine this module makes, whoever begins the transaction."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Callable, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.engine import make_url as _make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

R = TypeVar("R")


def make_url(url: str) -> URL:
    """SQLAlchemy's reading of a database URL; a port that is not a number is an ArgumentError that does not repeat
    it: a password holding an unencoded ``@`` makes the rest of the password the "port", which ValueError quoted."""
    try:
        return _make_url(url)
    except ValueError:
        raise ArgumentError("the database URL's port is not a number (an @ in the password must be written "
                            "%40)") from None


def normalise_url(url: str) -> str:
    """Accept plain `sqlite:///` and `postgresql://` URLs and pick the async drivers."""
    u = make_url(url)
    if u.drivername in ("sqlite", "sqlite+pysqlite"):
        u = u.set(drivername="sqlite+aiosqlite")
    elif u.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    """A database URL as a person may see it (a log line, an error, a report): without its password, whether in
    its user part or in a ``password`` query parameter (libpq's, which the drivers take as well)."""
    u = make_url(url)
    if u.host and "@" in u.host:  # a password holding an unencoded @: SQLAlchemy takes the rest of it for the host
        u = u.set(host=u.host.rpartition("@")[2], password=u.password or "")
    return _QUERY_PASSWORD.sub(r"\1***", u.render_as_string(hide_password=True))


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)  # the query as SQLAlchemy renders it


def is_sqlite(engine_or_url) -> bool:
    name = engine_or_url.dialect.name if hasattr(engine_or_url, "dialect") else make_url(str(engine_or_url)).get_backend_name()
    return name == "sqlite"


SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class RollbackOnClose(sqlite3.Connection):
    """A SQLite connection that ends its transaction before it closes.

    A connection closed inside a transaction while one of its statements is still part-way through (a task
    cancelled between a query and its rows: the pool then closes the connection) is left open by SQLite until
    that statement is finalized, and keeps the write lock as long: every other connection, in this process or
    another, waits for it to its busy timeout. Rolled back first, it holds nothing once closed."""

    def close(self) -> None:
        if self.in_transaction:
            try:
                self.rollback()
            except sqlite3.Error:  # pragma: no cover - closing anyway; SQLite rolls back what it can
                pass
        super().close()


def sqlite_pragmas(dbapi_conn, synchronous: str = "FULL") -> None:
    """WAL, the durability level, enforced foreign keys and a busy wait, on one DB-API connection."""
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", f"synchronous={synchronous}", "foreign_keys=ON", "busy_timeout=30000"):
        cur.execute("PRAGMA " + pragma)
    cur.close()


def create_engine(url: str, *, pool_size: int = 10, sqlite_synchronous: str = "FULL") -> AsyncEngine:
    """An AsyncEngine; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        db = make_url(url).database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30, "factory": RollbackOnClose})
        sync = sqlite_synchronous.upper()
        if sync not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"database.sqlite_synchronous: unknown value {sqlite_synchronous!r}")

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every SQLite test
            sqlite_pragmas(dbapi_conn, sync)

        # The driver's own transaction handling is switched off so that we emit BEGIN ourselves:
        # a write transaction must start with BEGIN IMMEDIATE, or two processes that both read
        # first and then write get SQLITE_BUSY at once (no busy wait for a lock upgrade in WAL).
        @event.listens_for(engine.sync_engine, "connect")
        def _no_autobegin(dbapi_conn, _record):  # pragma: no cover
            dbapi_conn.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn):  # pragma: no cover
            conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "DEFERRED"))

        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False)


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine, but its transactions take the write lock at BEGIN on SQLite.

    Use `async with writer(engine).begin() as conn:` for every transaction that writes.
    """
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="IMMEDIATE")
    return engine


async def on_sqlite_thread(engine: AsyncEngine, fn: Callable[..., R]) -> R:
    """Run `fn(sqlite3_connection)` on the thread of one pooled aiosqlite connection, as one hand-off.

    Each statement through SQLAlchemy and aiosqlite is a hand-off to the connection's thread and back;
    a transaction that needs several statements can run them all in one call this way. `fn` manages its
    own transaction (the engine's connections run in autocommit mode, `isolation_level = None`) and must
    leave none open; it runs off the event loop, so it must not touch asyncio objects.
    """
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection  # aiosqlite.Connection
        return await driver._execute(lambda: fn(driver._conn))
