"""Noticing, within a fraction of a second, that another process sharing the database changed something.

- PostgreSQL: one connection per server process LISTENs on :data:`~scep_server.store.events.CHANGES_CHANNEL`.
  A status change NOTIFYs ``status`` in the transaction that records its audit event
  (:func:`scep_server.store.events.record_event`), and a publisher NOTIFYs ``crl:<ca>`` after recording a
  CRL. A lost connection is re-opened after a short, growing delay; every (re)connection reports a
  ``resync`` since notifications sent meanwhile are lost.
- SQLite has no notifications: one held connection reads ``PRAGMA data_version`` every
  ``SQLITE_INTERVAL`` seconds; the value changes when any other connection (of this process or another)
  has committed. Only then does it look at what the commits brought, with the same payloads as PostgreSQL's
  notifications: ``status`` when a status-change event is among the new audit events (ids only grow: SQLite
  has one writer at a time), ``crl:<ca>`` for each CRL recorded since. Other writes (enrolments, above all)
  cost one ``max(id)`` and one small read of ``crl_state``, and the listeners hear nothing.

Either way, the periodic poll of each publisher (``crl.poll_interval``) stays as the safety net.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..store.events import CHANGES_CHANNEL, STATUS_EVENTS

log = structlog.get_logger("crl.changes")

SQLITE_INTERVAL = 0.15  # seconds between two reads of PRAGMA data_version
PG_KEEPALIVE = 15.0  # seconds between two liveness checks of the listening connection
RECONNECT_MIN, RECONNECT_MAX = 0.5, 10.0  # delay before re-opening a lost connection (doubles up to the max)

Listener = Callable[[str], None]


class ChangeFeed:
    """Calls ``listener(payload)`` on the event loop for every change another connection announced or made."""

    def __init__(self, engine: AsyncEngine, listener: Listener, *, sqlite_interval: float = SQLITE_INTERVAL,
                 keepalive: float = PG_KEEPALIVE) -> None:
        self.engine = engine
        self.listener = listener
        self.sqlite_interval = sqlite_interval
        self.keepalive = keepalive
        self.connected = False
        self.connections = 0  # successful (re)connections, for tests and logs

    async def run(self) -> None:
        """Listen until cancelled, re-opening the connection after a failure."""
        delay = RECONNECT_MIN
        while True:
            before = self.connections
            try:
                async with self.engine.connect() as conn:
                    try:
                        await self._listen(conn)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        await conn.invalidate()  # never hand a broken or still-listening connection back to the pool
                        raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while: retry
                if self.connections > before:  # it was working: start the delays over
                    delay = RECONNECT_MIN
                log.warning("crl.changes.disconnected", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
            finally:
                self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _listen(self, conn: AsyncConnection) -> None:
        raw = (await conn.get_raw_connection()).driver_connection
        if conn.dialect.name == "postgresql":
            await self._listen_pg(raw)
        elif conn.dialect.name == "sqlite":
            await self._watch_sqlite(raw)
        else:  # pragma: no cover - only the two supported databases
            raise RuntimeError(f"no change feed for {conn.dialect.name}")

    def _connected(self) -> None:
        self.connected = True
        self.connections += 1
        if self.connections > 1:
            log.info("crl.changes.reconnected", connections=self.connections)
        self.listener("resync")

    async def _listen_pg(self, apg) -> None:
        lost = asyncio.Event()

        def on_notify(_conn, _pid, _channel, payload: str) -> None:
            self.listener(payload)

        def on_terminate(_conn) -> None:
            lost.set()

        apg.add_termination_listener(on_terminate)
        await apg.add_listener(CHANGES_CHANNEL, on_notify)
        try:
            self._connected()
            while not lost.is_set():
                try:
                    async with asyncio.timeout(self.keepalive):
                        await lost.wait()
                except TimeoutError:
                    async with asyncio.timeout(self.keepalive):
                        await apg.fetchval("SELECT 1")
            raise ConnectionError("the listening connection was closed")
        finally:
            apg.remove_termination_listener(on_terminate)
            if not apg.is_closed():
                try:
                    await asyncio.shield(apg.remove_listener(CHANGES_CHANNEL, on_notify))
                except Exception:  # noqa: BLE001 - the connection is invalidated by the caller then
                    pass

    async def _watch_sqlite(self, aconn) -> None:
        async def one(sql: str, *params) -> int:
            async with aconn.execute(sql, params) as cur:
                return (await cur.fetchone())[0] or 0

        async def crls() -> dict[str, object]:
            async with aconn.execute("SELECT ca, crl_number FROM crl_state") as cur:
                return dict(await cur.fetchall())

        status_sql = f"SELECT count(*) FROM events WHERE id > ? AND kind IN ({', '.join('?' * len(STATUS_EVENTS))})"
        seen = await one("PRAGMA data_version")
        newest, recorded = await one("SELECT max(id) FROM events"), await crls()
        self._connected()
        while True:
            await asyncio.sleep(self.sqlite_interval)
            now = await one("PRAGMA data_version")
            if now == seen:
                continue
            seen = now
            top = await one("SELECT max(id) FROM events")
            if top > newest:
                status = await one(status_sql, newest, *STATUS_EVENTS)
                newest = top
                if status:
                    self.listener("status")
            now_recorded = await crls()
            for ca, number in now_recorded.items():
                if recorded.get(ca) != number:
                    self.listener(f"crl:{ca}")
            recorded = now_recorded
