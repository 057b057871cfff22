"""Pending enrolments nobody decided in time (profile setting ``pending_expiry_days``): rejected, with the audit event
``scep.enrolment.expire``, when they are next read (a CertPoll or a retried request, an administrator's decision)
and by a periodic sweep, so that the queue and the enrolment counts show them as rejected.

Every rejection is the repository's compare-and-set from ``pending`` (``reject_pending``): with several processes
on one database, one of them rejects an enrolment (and records its event); the others, and a decision made at the
same moment, find it decided.
"""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from trustkit.clock import aware

from ..profiles import Profile, ProfileError
from .model import EXPIRY_ACTOR, bounded, expired_text, pending_expiry
from .repository import NotPending

if TYPE_CHECKING:
    from .service import ScepService

log = structlog.get_logger("scep")

# pending enrolments rejected per profile and sweep at most (the next sweep takes the rest)
SWEEP_BATCH = 500


class PendingExpiry:
    def __init__(self, service: ScepService):
        self.service = service

    async def expire(self, profile: Profile, key: str, created_at: datetime, *, now: datetime) -> bool:
        """Reject one pending enrolment found past its profile's expiry: True when this call rejected it, False
        when it was decided meanwhile (by an administrator, or by another process)."""
        created = aware(created_at)
        days = profile.settings.pending_expiry_days
        try:
            await self.service.repository.reject_pending(
                profile.name, key, expired_text(profile.settings), dict(
                    at=now, kind="scep.enrolment.expire", subject=key, actor=EXPIRY_ACTOR,
                    data={"profile": profile.name, "created_at": created.isoformat(), "expiry_days": days}),
                actor=EXPIRY_ACTOR, now=now)
        except NotPending:
            return False
        log.info("scep.enrolment.expire", profile=profile.name, transaction_id=bounded(key),
                 created_at=created.isoformat(), expiry_days=days)
        return True

    async def run(self, *, batch: int = SWEEP_BATCH) -> dict[str, int]:
        """Reject the pending enrolments of every profile that are past its expiry. Returns {profile: count}."""
        svc = self.service
        now = svc.clock()
        done: dict[str, int] = {}
        for name in await svc.repository.pending_profiles():
            try:
                profile = await svc.profiles.get(name)
            except ProfileError:  # deleted (its pending enrolments were rejected with it), or unreadable settings
                continue
            expiry = pending_expiry(profile.settings)
            if expiry is None:
                continue
            rows = await svc.repository.pending_before(name, now - expiry, limit=batch)
            count = 0
            for row in rows:
                count += await self.expire(profile, row["transaction_id"], row["created_at"], now=now)
            if count:
                done[name] = count
        return done
