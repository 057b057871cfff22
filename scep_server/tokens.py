"""Bearer tokens for the REST API, each with one scope: admin or signin."""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.db import writer
from .store.tables import api_tokens

SCOPES = ("admin", "signin")


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    scope: str
    created_at: datetime
    disabled_at: datetime | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Tokens are stored as SHA-256 digests; lookups are cached briefly (a disabled token stops within the TTL)."""

    def __init__(self, engine: AsyncEngine, *, cache_seconds: float = 5.0):
        self._engine = engine
        self._ttl = cache_seconds
        self._cache: dict[str, tuple[float, tuple[str, str, str] | None]] = {}

    async def create(self, *, scope: str, name: str, now: datetime) -> tuple[str, str]:
        """A new token: returns (id, secret token); the secret is shown once and never stored."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}: {' or '.join(SCOPES)}")
        token_id = secrets.token_hex(8)
        token = f"dt_{scope}_{secrets.token_urlsafe(32)}"
        async with writer(self._engine).begin() as conn:
            await conn.execute(api_tokens.insert().values(id=token_id, name=name, scope=scope,
                                                          token_sha256=_digest(token), created_at=now))
        return token_id, token

    async def scope_of(self, token: str) -> str | None:
        """The scope of an enabled token, or None."""
        granted = await self.identify(token)
        return granted[0] if granted else None

    async def identify(self, token: str) -> tuple[str, str, str] | None:
        """(scope, id, name) of an enabled token, or None."""
        digest = _digest(token)
        hit = self._cache.get(digest)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(api_tokens.c.scope, api_tokens.c.id, api_tokens.c.name).where(
                api_tokens.c.token_sha256 == digest, api_tokens.c.disabled_at.is_(None)))).first()
        granted = (row.scope, row.id, row.name) if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self._ttl, granted)
        return granted

    async def list(self) -> list[TokenInfo]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(api_tokens).order_by(api_tokens.c.created_at))).all()
        return [TokenInfo(r.id, r.name, r.scope, r.created_at, r.disabled_at) for r in rows]

    async def disable(self, token_id: str, *, now: datetime) -> bool:
        async with writer(self._engine).begin() as conn:
            res = await conn.execute(api_tokens.update().where(
                api_tokens.c.id == token_id, api_tokens.c.disabled_at.is_(None)).values(disabled_at=now))
        self._cache.clear()
        return res.rowcount == 1
