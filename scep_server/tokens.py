"""Bearer tokens for the REST API, each with one scope: admin or signin (docs/api.md "Authentication").

A token is stored as its SHA-256 digest; the secret is shown once, when it is made. Lookups are cached for
``cache_seconds`` per process: a token disabled elsewhere stops within that period (at once in the process
that disabled it). The cache holds each token's ``expires_at``, so an expired token is refused at once.
When a token was last accepted is written at most once a minute per token and process, by a task off the
request path (:meth:`TokenStore.close` writes what is left).
"""
from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import Clock, aware, utcnow
from trustkit.db import writer
from trustkit.lookupcache import LookupCache
from trustkit.paging import Page, PageRequest, after, order, take
from trustkit.problems import NotFound, Unprocessable

from .store.events import record_event
from .store.tables import api_tokens, console_sessions

SCOPES = ("admin", "signin")
MAX_NAME = 255
LAST_USED_EVERY = 60.0  # seconds: at most one last_used_at write per token and process in this period
PAGE_KEY = (datetime, str)  # the list's order: created_at, id


class TokenError(Unprocessable):
    """A token cannot be made as asked (unknown scope, an expiry in the past, a name too long)."""

    code = "invalid_token_request"


class UnknownToken(NotFound):
    code = "token_not_found"


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    scope: str
    created_at: datetime
    disabled_at: datetime | None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None

    def view(self) -> dict:
        """The JSON view of the API (never the secret nor its digest)."""
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {"id": self.id, "name": self.name, "scope": self.scope, "created_at": iso(self.created_at),
                "expires_at": iso(self.expires_at), "disabled_at": iso(self.disabled_at),
                "last_used_at": iso(self.last_used_at)}


@dataclass(frozen=True)
class Grant:
    """What the cache keeps of an enabled token."""

    id: str
    scope: str
    name: str
    expires_at: datetime | None


def _digest(token: str) -> str:
    # a header's or form's bytes that are not UTF-8 arrive as unpaired surrogates: hashed as they came, they match nothing
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _info(r) -> TokenInfo:
    return TokenInfo(r.id, r.name, r.scope, aware(r.created_at), aware(r.disabled_at), aware(r.expires_at),
                     aware(r.last_used_at))


class TokenStore:
    def __init__(self, engine: AsyncEngine, *, cache_seconds: float = 5.0, clock: Clock = utcnow,
                 last_used_every: float = LAST_USED_EVERY):
        self._engine = engine
        self._ttl = cache_seconds
        self._clock = clock
        # emptied at each disable and rotation here; a lookup in flight then caches nothing
        self._cache: LookupCache[str, Grant | None] = LookupCache(lambda: self._ttl)
        self._last_used_every = last_used_every
        self._noted: dict[str, float] = {}  # token id -> monotonic time of the last use queued for writing
        self._unwritten: dict[str, datetime] = {}  # token id -> last use not yet written
        self._writer: asyncio.Task | None = None

    @property
    def cache_seconds(self) -> float:
        return self._ttl

    async def create(self, *, scope: str, name: str, now: datetime, expires_at: datetime | None = None,
                     actor: str | None = None) -> tuple[str, str]:
        """A new token: returns (id, secret token); the secret is shown once and never stored. With `actor`
        (a caller of the API) the creation is an audit event (``security.token.create``)."""
        if scope not in SCOPES:
            raise TokenError(f"scope: unknown scope {scope!r}: {' or '.join(SCOPES)}", field="scope")
        if len(name) > MAX_NAME:
            raise TokenError(f"name: at most {MAX_NAME} characters", field="name")
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise TokenError("expires_at: a time with its UTC offset", field="expires_at")
            try:
                expires_at = expires_at.astimezone(timezone.utc)  # stored as UTC (beyond year 9999: refused)
            except OverflowError:
                raise TokenError("expires_at: out of range", field="expires_at") from None
            if expires_at <= now:
                raise TokenError("expires_at: a time in the future", field="expires_at")
        token_id = secrets.token_hex(8)
        token = f"dt_{scope}_{secrets.token_urlsafe(32)}"
        async with writer(self._engine).begin() as conn:
            await conn.execute(api_tokens.insert().values(id=token_id, name=name, scope=scope, expires_at=expires_at,
                                                          token_sha256=_digest(token), created_at=now))
            if actor is not None:
                await record_event(conn, at=now, kind="security.token.create", subject=token_id, actor=actor,
                                   data={"scope": scope, "name": name, "expires_at": expires_at})
        return token_id, token

    async def scope_of(self, token: str) -> str | None:
        """The scope of an enabled token, or None."""
        granted = await self.identify(token)
        return granted[0] if granted else None

    async def identify(self, token: str) -> tuple[str, str, str] | None:
        """(scope, id, name) of an enabled, unexpired token, or None."""
        grant = await self.grant(token)
        return (grant.scope, grant.id, grant.name) if grant else None

    async def grant(self, token: str) -> Grant | None:
        """The grant of an enabled, unexpired token, or None; notes the use (see :meth:`_note_use`)."""
        digest = _digest(token)
        grant = await self._cached(digest, api_tokens.c.token_sha256 == digest)
        if grant is None:
            return None
        now = self._clock()
        if grant.expires_at is not None and grant.expires_at <= now:
            return None
        self._note_use(grant.id, now)
        return grant

    async def grant_of(self, token_id: str) -> Grant | None:
        """The grant of the enabled, unexpired token with this id, or None (cached like :meth:`grant`, so a
        disabled token is refused within ``cache_seconds``): what a console session checks at each request."""
        grant = await self._cached("id:" + token_id, api_tokens.c.id == token_id)
        if grant is None or (grant.expires_at is not None and grant.expires_at <= self._clock()):
            return None
        return grant

    async def _cached(self, key: str, which: sa.ColumnElement[bool]) -> Grant | None:
        """The grant of the enabled token `which` selects (expired or not), from the cache while it is fresh."""
        async def load() -> Grant | None:
            async with self._engine.connect() as conn:
                row = (await conn.execute(sa.select(api_tokens.c.id, api_tokens.c.scope, api_tokens.c.name,
                                                    api_tokens.c.expires_at).where(
                    which, api_tokens.c.disabled_at.is_(None)))).first()
            return Grant(row.id, row.scope, row.name, aware(row.expires_at)) if row else None

        return await self._cache.get(key, load)

    def _forget(self) -> None:
        """A token changed here: no grant read before stays cached (nor is cached by a lookup in flight)."""
        self._cache.changed()

    def _note_use(self, token_id: str, now: datetime) -> None:
        """Queue a last_used_at write unless one was queued for this token within the period."""
        mono = time.monotonic()
        if mono - self._noted.get(token_id, float("-inf")) < self._last_used_every:
            return
        if len(self._noted) > 10_000:
            self._noted.clear()
        self._noted[token_id] = mono
        self._unwritten[token_id] = now
        if self._writer is None or self._writer.done():
            try:
                self._writer = asyncio.get_running_loop().create_task(self._write_uses())
            except RuntimeError:  # no running loop: written by the next close()
                pass

    async def _write_uses(self) -> None:
        """Write the queued last uses (one transaction); a failure is logged, never the caller's."""
        while self._unwritten:
            batch, self._unwritten = self._unwritten, {}
            try:
                async with writer(self._engine).begin() as conn:
                    for token_id, at in sorted(batch.items()):
                        await conn.execute(api_tokens.update().where(
                            api_tokens.c.id == token_id,
                            sa.or_(api_tokens.c.last_used_at.is_(None), api_tokens.c.last_used_at < at),
                        ).values(last_used_at=at))
            except Exception as exc:  # noqa: BLE001 - a lost last-used time is not worth a failed request
                import structlog  # here: a command that makes a token need not import it

                log = structlog.get_logger("tokens")
                log.warning("tokens.last_used_failed", error=repr(exc), tokens=len(batch))
                return

    async def close(self) -> None:
        """Write the last uses still queued (before the engine is closed)."""
        if self._writer is not None and not self._writer.done():
            async with asyncio.timeout(10):
                await asyncio.shield(self._writer)
        if self._unwritten:
            await self._write_uses()

    async def list(self) -> list[TokenInfo]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id))).all()
        return [_info(r) for r in rows]

    async def page(self, request: PageRequest) -> Page[TokenInfo]:
        """One page of the tokens, oldest first (by created_at, then id)."""
        columns = (api_tokens.c.created_at, api_tokens.c.id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(api_tokens).where(after(columns, request.after))
                                       .order_by(*order(columns)).limit(request.limit + 1))).all()
        return take([_info(r) for r in rows], request.limit, lambda t: (t.created_at, t.id))

    async def get(self, token_id: str) -> TokenInfo:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id))).first()
        if row is None:
            raise UnknownToken(f"no API token with id {token_id!r}")
        return _info(row)

    async def disable(self, token_id: str, *, now: datetime, actor: str | None = None) -> bool:
        """Disable a token: True when this call disabled it, False when it already was (UnknownToken when there
        is none). With `actor` the change is an audit event (``security.token.disable``)."""
        if len(token_id) > 32:
            raise UnknownToken(f"no API token with id {token_id[:32]!r}...")
        async with writer(self._engine).begin() as conn:
            res = await conn.execute(api_tokens.update().where(
                api_tokens.c.id == token_id, api_tokens.c.disabled_at.is_(None)).values(disabled_at=now))
            changed = res.rowcount == 1
            if not changed:
                exists = (await conn.execute(sa.select(api_tokens.c.id).where(api_tokens.c.id == token_id))).first()
                if exists is None:
                    raise UnknownToken(f"no API token with id {token_id!r}")
            elif actor is not None:
                await record_event(conn, at=now, kind="security.token.disable", subject=token_id, actor=actor)
        self._forget()
        return changed

    async def rotate(self, token_id: str, *, now: datetime, actor: str | None = None) -> str:
        """A new secret for an enabled token, same id, name, scope and expiry; the old secret is refused at once
        here and within ``cache_seconds`` by every other process, and the console sessions it opened end at once. UnknownToken when there is none, TokenError
        for a disabled one. With `actor` the change is an audit event (``security.token.rotate``)."""
        if len(token_id) > 32:
            raise UnknownToken(f"no API token with id {token_id[:32]!r}...")
        async with writer(self._engine).begin() as conn:
            row = (await conn.execute(sa.select(api_tokens.c.scope, api_tokens.c.disabled_at)
                                      .where(api_tokens.c.id == token_id))).first()
            if row is None:
                raise UnknownToken(f"no API token with id {token_id!r}")
            if row.disabled_at is not None:
                raise TokenError(f"token {token_id} is disabled: make a new one", field="id")
            token = f"dt_{row.scope}_{secrets.token_urlsafe(32)}"
            await conn.execute(api_tokens.update().where(api_tokens.c.id == token_id, api_tokens.c.disabled_at.is_(None))
                               .values(token_sha256=_digest(token)))
            # the console sessions the old secret opened end with it (whoever held it is signed out everywhere)
            await conn.execute(console_sessions.update().where(
                console_sessions.c.token_id == token_id, console_sessions.c.ended_at.is_(None)).values(ended_at=now))
            if actor is not None:
                await record_event(conn, at=now, kind="security.token.rotate", subject=token_id, actor=actor)
        self._forget()
        return token


__all__ = ["LAST_USED_EVERY", "PAGE_KEY", "SCOPES", "Grant", "TokenError", "TokenInfo", "TokenStore",
           "UnknownToken"]
