"""Revocation and holds in the inventory, the day-91 rule, and telling the CRL publisher.

Decisions (docs/crl-and-binding.md "Hold and revoke by lifecycle", "The 91-day rule"): a hold
(certificateHold) can be released; a revocation is final; a certificate never used in a successful
management attestation within 90 days of issue is revoked on day 91 (reason cessationOfOperation).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import Clock, utcnow
from trustkit.db import writer
from ..store.events import record_event
from ..store.tables import certificates
from . import inventory
from .inventory import CertRecord, InventoryError, Reason

log = structlog.get_logger("revocation")

REASONS = {r.name.lower().replace("_", "-"): r for r in Reason
           if r not in (Reason.CERTIFICATE_HOLD, Reason.REMOVE_FROM_CRL)}
# The reason used when the product revokes for good (device deleted, unused by day 91).
PERMANENT_REASON = Reason.CESSATION_OF_OPERATION


def parse_reason(text: str) -> Reason:
    """A CLI/API reason name ("key-compromise", "superseded", ...) or number."""
    key = text.strip().lower().replace("_", "-")
    if key.isascii() and key.isdigit() and int(key) in {int(r) for r in REASONS.values()}:
        return Reason(int(key))
    if key not in REASONS:
        raise ValueError(f"unknown revocation reason {text!r}; one of: {', '.join(REASONS)}")
    return REASONS[key]


class RevocationService:
    """Status changes of issued certificates; every change reaches the CRL publisher of its CA."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow,
                 on_status_change: Callable[[str], None] | None = None):
        self.engine = engine
        self.clock = clock
        self._listeners: list[Callable[[str], None]] = [on_status_change] if on_status_change else []

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def notify_changed(self, ca: str) -> None:
        """Tell every listener (CRL publishers) that a certificate of ``ca`` changed status."""
        for listener in self._listeners:
            listener(ca)

    async def _set(self, serial: str, status: str, *, actor: str, kind: str, reason: int | None = None,
                   invalidity_date: datetime | None = None, data: dict | None = None) -> CertRecord:
        now = self.clock()
        async with writer(self.engine).begin() as conn:
            record = await inventory.set_status(conn, serial, status, at=now, reason=reason,
                                                invalidity_date=invalidity_date)
            await record_event(conn, at=now, kind=kind, subject=serial, actor=actor,
                               data={"reason": Reason(reason).name if reason is not None else None, **(data or {})})
        log.info(kind, serial=serial, actor=actor, status=status, reason=reason)
        self.notify_changed(record.ca)
        return record

    async def revoke(self, serial: str, reason: Reason = Reason.UNSPECIFIED, *, actor: str,
                     invalidity_date: datetime | None = None, data: dict | None = None) -> CertRecord:
        """Revoke for good (a held certificate may be revoked too)."""
        if reason in (Reason.CERTIFICATE_HOLD, Reason.REMOVE_FROM_CRL):
            raise ValueError("use hold() / release() for certificateHold")
        return await self._set(serial, "revoked", actor=actor, kind="pki.cert.revoke", reason=int(reason),
                               invalidity_date=invalidity_date, data=data)

    async def hold(self, serial: str, *, actor: str, data: dict | None = None) -> CertRecord:
        """certificateHold: on the CRL until released."""
        return await self._set(serial, "hold", actor=actor, kind="pki.cert.lifecycle.hold",
                               reason=int(Reason.CERTIFICATE_HOLD), data=data)

    async def release(self, serial: str, *, actor: str, data: dict | None = None) -> CertRecord:
        """Lift a hold: the certificate leaves the next CRL."""
        async with self.engine.connect() as conn:
            current = await inventory.get(conn, serial)
        if current is None:
            raise InventoryError(f"no certificate with serial {serial}")
        if current.status != "hold":
            raise InventoryError(f"certificate {serial} is {current.status}, not on hold")
        return await self._set(serial, "valid", actor=actor, kind="pki.cert.lifecycle.activate", data=data)

    async def revoke_unused(self, *, unused_days: int = 90, limit: int = 10_000) -> list[str]:
        """The day-91 rule: revoke valid certificates never used in a successful attestation within
        `unused_days` of issue. Each certificate is revoked exactly once (the update re-checks the state).

        The clock starts at issue, or for a renewal of a never-used certificate at its predecessor's start
        (``unused_since``): renewing does not reset it."""
        now = self.clock()
        cutoff = now - timedelta(days=unused_days)
        clock_start = sa.func.coalesce(certificates.c.unused_since, certificates.c.issued_at)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(certificates.c.serial, certificates.c.ca).where(
                    certificates.c.status.in_(("valid", "hold")), certificates.c.first_used_at.is_(None),
                    clock_start <= cutoff).limit(limit))).all()
        revoked: list[str] = []
        touched: set[str] = set()
        for serial, ca in rows:
            async with writer(self.engine).begin() as conn:
                res = await conn.execute(certificates.update().where(
                    certificates.c.serial == serial, certificates.c.status.in_(("valid", "hold")),
                    certificates.c.first_used_at.is_(None),
                ).values(status="revoked", revocation_reason=int(PERMANENT_REASON), revoked_at=now, updated_at=now))
                if res.rowcount == 1:
                    await record_event(conn, at=now, kind="pki.cert.revoke", subject=serial, actor="system:day-91",
                                       data={"reason": PERMANENT_REASON.name,
                                             "detail": f"never used within {unused_days} days of issue"})
                    revoked.append(serial)
                    touched.add(ca)
        for ca in touched:
            self.notify_changed(ca)
        if revoked:
            log.info("pki.cert.revoke_unused", count=len(revoked), unused_days=unused_days)
        return revoked
