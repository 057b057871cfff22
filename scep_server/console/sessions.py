"""Console sessions, kept in the database (`console_sessions`) so that every process and instance shares them.

The cookie holds 256 random bits; the table holds only their SHA-256, so a read of the database signs nobody
in. A session ends at sign-out, after ``console.idle_timeout`` seconds without a request, ``console.lifetime``
seconds after sign-in, or when the token it was opened with is disabled or expires (checked at each request
by the caller, through the token store's 5-second cache).
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import Clock, aware
from trustkit.db import writer

from ..store.events import record_event
from ..store.tables import console_sessions
from .model import Session

TOUCH_EVERY = timedelta(seconds=10)  # last_seen_at is written at most this often per session
MAX_ID_CHARS = 64


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class ConsoleSessions:
    """Open, find (and keep alive) and end console sessions."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock, idle_timeout: int, lifetime: int) -> None:
        self._engine = engine
        self._clock = clock
        self.idle = timedelta(seconds=idle_timeout)
        self.lifetime = timedelta(seconds=lifetime)

    async def open(self, *, principal: str, token_id: str | None) -> str:
        """A new session; returns its id (for the cookie, never stored)."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        async with writer(self._engine).begin() as conn:
            await conn.execute(console_sessions.insert().values(
                id_sha256=_digest(session_id), token_id=token_id, principal=principal[:255], created_at=now,
                last_seen_at=now, expires_at=now + self.lifetime))
            await record_event(conn, at=now, kind="security.console.signin", subject=token_id, actor=principal[:255],
                               data={"session": _digest(session_id)[:16]})
            # sessions that ended long ago are of no further use: removed as new ones are opened
            await conn.execute(console_sessions.delete().where(
                console_sessions.c.expires_at < now - timedelta(days=1)))
        return session_id

    async def find(self, session_id: str) -> Session | None:
        """The live session of this id (its idle clock restarted), or None."""
        if not (session_id and len(session_id) <= MAX_ID_CHARS and session_id.isascii()):
            return None
        digest = _digest(session_id)
        now = self._clock()
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(console_sessions).where(
                console_sessions.c.id_sha256 == digest, console_sessions.c.ended_at.is_(None)))).first()
        if row is None:
            return None
        last_seen, expires = aware(row.last_seen_at), aware(row.expires_at)
        if now >= expires or now - last_seen >= self.idle:
            await self.end_digest(digest)
            return None
        if now - last_seen >= TOUCH_EVERY:
            async with writer(self._engine).begin() as conn:
                await conn.execute(console_sessions.update().where(
                    console_sessions.c.id_sha256 == digest, console_sessions.c.ended_at.is_(None)
                ).values(last_seen_at=now))
            last_seen = now
        return Session(digest, row.token_id, row.principal, aware(row.created_at), last_seen, expires)

    async def end(self, session_id: str, *, actor: str | None = None) -> None:
        """Sign out: the session is refused from now on, by every process. With `actor` (the session's
        principal signing out) an audit event ``security.console.signout``."""
        if not (session_id and len(session_id) <= MAX_ID_CHARS and session_id.isascii()):
            return  # no session has such an id (a cookie's bytes that are not UTF-8 arrive as surrogates)
        await self.end_digest(_digest(session_id), actor=actor)

    async def end_digest(self, digest: str, *, actor: str | None = None) -> None:
        now = self._clock()
        async with writer(self._engine).begin() as conn:
            res = await conn.execute(console_sessions.update().where(
                console_sessions.c.id_sha256 == digest, console_sessions.c.ended_at.is_(None)
            ).values(ended_at=now))
            if actor is not None and res.rowcount == 1:
                await record_event(conn, at=now, kind="security.console.signout", actor=actor,
                                   data={"session": digest[:16]})
