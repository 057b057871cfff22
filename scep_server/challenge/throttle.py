"""Failed HTTP Basic logins of the challenge endpoint, counted in the database so that every process and
every instance sharing it sees the same counts.

Two counters per profile: one per client address (an IPv6 client by its /64), one for the configured
username (failures with that username from all addresses together, the guard against a distributed
guess). A counter reaching its limit within the window blocks further attempts for the lockout; a
blocked login is refused before any password check. Each failure is one upsert; rows whose window and
lockout have passed are pruned, and the table is held to `max_throttle_rows` (address counters go first).

The username's lock slows a distributed guess, but the username is no secret: anyone could lock it and keep
the real client (Jamf Pro, an NDES scraper) from its challenges. So an address that logged in with the
username and its password within `known_address_seconds` (table `challenge_login_known`, one upsert per good
login) is not held back by the username's lock; its own address counter still applies to it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import aware
from trustkit.db import writer
from .tables import login_known as k, login_throttle as t

PRUNE_EVERY_FAILURES = 500


@dataclass(frozen=True)
class Limits:
    failures_per_address: int = 5
    failures_per_user: int = 20
    window_seconds: int = 300
    lockout_seconds: int = 300
    max_rows: int = 100_000
    known_address_seconds: int = 86_400

    @classmethod
    def from_settings(cls, section) -> "Limits":
        return cls(section.failures_per_address, section.failures_per_user, section.window_seconds,
                   section.lockout_seconds, section.max_throttle_rows, section.known_address_hours * 3600)


def _key(kind: str, profile: str, value: str) -> str:
    return hashlib.sha256("\0".join((kind, profile, value)).encode("utf-8", "surrogatepass")).hexdigest()


def address_key(profile: str, address: str) -> str:
    return _key("address", profile, address)


# A username's counter is told apart from an address's by its first character (not a hex digit), so that
# pruning never forgets it to make room for address counters: failures from many addresses (an IPv6 client
# has /64s by the thousand) must not reset the guard against a distributed guess.
USER_KEY_PREFIX = "u"


def user_key(profile: str, username: str) -> str:
    return USER_KEY_PREFIX + _key("user", profile, username)[1:]


def known_key(profile: str, username: str, address: str) -> str:
    """An address (a throttle_key: an IPv6 client by its /64) that logged in with `username` at `profile`."""
    return _key("known", profile, username + "\0" + address)


class LoginThrottle:
    def __init__(self, engine: AsyncEngine, limits: Limits = Limits()):
        self.engine = engine
        self.limits = limits
        self._failures_since_prune = 0

    async def blocked(self, keys: list[str], now: datetime) -> dict[str, int]:
        """For each of `keys` that is blocked now: the seconds until it is released."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(t.c.key_sha256, t.c.blocked_until).where(
                t.c.key_sha256.in_(keys), t.c.blocked_until.is_not(None)))).all()
        out = {}
        for r in rows:
            wait = (aware(r.blocked_until) - now).total_seconds()
            if wait > 0:
                out[r.key_sha256] = max(1, int(wait + 0.999))
        return out

    async def failed(self, keys: list[tuple[str, int]], now: datetime) -> bool:
        """Count one failure against each (key, limit); True when one of them is now blocked."""
        return bool(await self.failed_keys(keys, now))

    async def failed_keys(self, keys: list[tuple[str, int]], now: datetime) -> list[str]:
        """Count one failure against each (key, limit); the keys this failure blocked."""
        cutoff = now - timedelta(seconds=self.limits.window_seconds)
        until = now + timedelta(seconds=self.limits.lockout_seconds)
        is_pg = self.engine.dialect.name == "postgresql"
        blocked: list[str] = []
        async with writer(self.engine).begin() as conn:
            for key, limit in keys:
                stale = t.c.failures_since < sa.bindparam("cutoff", cutoff, type_=t.c.failures_since.type)
                ins = (postgresql.insert(t) if is_pg else sqlite.insert(t)).values(
                    key_sha256=key, failures=1, failures_since=now, blocked_until=None)
                ins = ins.on_conflict_do_update(index_elements=[t.c.key_sha256], set_={
                    "failures": sa.case((stale, 1), else_=t.c.failures + 1),
                    "failures_since": sa.case((stale, ins.excluded.failures_since), else_=t.c.failures_since),
                }).returning(t.c.failures)
                failures = (await conn.execute(ins)).scalar_one()
                if failures >= limit:
                    blocked.append(key)
                    await conn.execute(sa.update(t).where(t.c.key_sha256 == key).values(
                        failures=0, failures_since=now, blocked_until=until))
        self._failures_since_prune += 1
        if self._failures_since_prune >= PRUNE_EVERY_FAILURES:
            self._failures_since_prune = 0
            await self.prune(now)
        return blocked

    async def succeeded(self, key: str) -> None:
        """A good login clears its address's counter (the username's counter runs out on its own)."""
        async with writer(self.engine).begin() as conn:
            await conn.execute(sa.delete(t).where(t.c.key_sha256 == key, t.c.blocked_until.is_(None)))

    async def known(self, key: str, now: datetime) -> bool:
        """Whether the address of `key` (known_key) logged in within `known_address_seconds`."""
        if self.limits.known_address_seconds <= 0:
            return False
        since = now - timedelta(seconds=self.limits.known_address_seconds)
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(k.c.key_sha256).where(
                k.c.key_sha256 == key, k.c.last_login >= since))).first() is not None

    async def remember(self, key: str, now: datetime) -> None:
        """Record a good login of the address of `key` (known_key), for every process and instance."""
        if self.limits.known_address_seconds <= 0:
            return
        ins = (postgresql.insert(k) if self.engine.dialect.name == "postgresql" else sqlite.insert(k)).values(
            key_sha256=key, last_login=now)
        async with writer(self.engine).begin() as conn:
            await conn.execute(ins.on_conflict_do_update(index_elements=[k.c.key_sha256],
                                                         set_={"last_login": ins.excluded.last_login}))

    async def prune(self, now: datetime) -> int:
        """Forget counters whose window and lockout have passed; then keep at most `max_rows` (newest); forget
        known addresses that have not logged in within `known_address_seconds`."""
        cutoff = now - timedelta(seconds=self.limits.window_seconds)
        async with writer(self.engine).begin() as conn:
            removed = (await conn.execute(sa.delete(t).where(
                t.c.failures_since < cutoff, sa.or_(t.c.blocked_until.is_(None), t.c.blocked_until < now)))).rowcount
            count = (await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar_one()
            excess = count - self.limits.max_rows
            if excess > 0:
                # address counters first, oldest first; then username counters; blocks last
                oldest = sa.select(t.c.key_sha256).order_by(sa.case(
                    (t.c.blocked_until.is_not(None), 2), (t.c.key_sha256.startswith(USER_KEY_PREFIX), 1),
                    else_=0), t.c.failures_since).limit(excess)
                removed += (await conn.execute(sa.delete(t).where(t.c.key_sha256.in_(oldest)))).rowcount
            # known addresses whose last login is older than known_address_seconds (all of them when it is 0)
            forgotten = now - timedelta(seconds=max(0, self.limits.known_address_seconds))
            removed += (await conn.execute(sa.delete(k).where(k.c.last_login < forgotten))).rowcount
        return removed or 0
