"""The one writer of certificate status: revocation and holds, the day-91 rule, telling the CRL publishers.

Decisions (docs/crl-and-binding.md "Hold and revoke by lifecycle", "The 91-day rule"): a hold
(certificateHold) can be released; a revocation is final; a certificate never used in a successful
management attestation within 90 days of issue is revoked on day 91 (reason cessationOfOperation).

Every write of ``certificates.status`` and of its revocation fields is `change_status` (or the row lock
`lock_status`), inside the caller's transaction, so a change commits together with what caused it (a device
change, a binding, an issuance) and with its audit event; docs/crl-and-binding.md "Who writes certificate
status". Whoever commits tells the CRL publishers afterwards (`RevocationService.notify`, or the
``notify_changed`` callable the services are given). `RevocationService` does both for a change made on its
own (an administrator's revoke, hold, release; the day-91 rule).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Callable

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustkit.clock import Clock, utcnow
from trustkit.db import writer
from ..store.events import record_event
from ..store.tables import certificates
from . import inventory
from .inventory import CertRecord, InvalidTransition, Reason, UnknownCertificate
from .status import CHANGEABLE, DEFAULT_KIND, CertStatus, EventKind, StatusChange

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


Expect = CertStatus | Iterable[CertStatus] | None


def _expected(expect: Expect) -> frozenset[CertStatus] | None:
    if expect is None:
        return None
    states = frozenset({CertStatus(expect)} if isinstance(expect, str) else (CertStatus(e) for e in expect))
    if not states & CHANGEABLE:
        raise ValueError(f"expected states {sorted(states)}: a revoked certificate never changes")
    return states


async def change_status(conn: AsyncConnection, serial: str, status: CertStatus, *, at: datetime, actor: str,
                        reason: Reason | int | None = None, invalidity_date: datetime | None = None,
                        expect: Expect = None, never_used: bool = False, kind: EventKind | None = None,
                        data: dict[str, Any] | None = None, record: bool = True) -> StatusChange | None:
    """Write one certificate's status inside the caller's transaction, and record its audit event there.

    - ``status``: VALID clears the revocation fields; HOLD stores reason certificateHold; REVOKED is final
      and stores ``reason`` (none when unspecified) and ``invalidity_date``.
    - ``expect``: the state (or states) the certificate must be in, checked by the UPDATE itself, so a
      concurrent change that committed first wins. When it is in none of them, or unknown, nothing is
      written and None is returned (e.g. ``expect=CertStatus.VALID``: supersede only a still valid
      certificate). Without ``expect`` any state but revoked changes, and an unknown or revoked
      certificate raises InventoryError.
    - ``never_used``: also require that it never attested (the day-91 rule); a miss returns None.
    - ``kind``: the event recorded, by default the one of ``status`` (`status.DEFAULT_KIND`); always one
      of `status.STATUS_CHANGE_KINDS`, which the CRL safety net watches.
    - ``record=False``: the caller records a status-change event of its own in the same transaction
      (a renewal's `EventKind.RENEW` covers the supersede of its predecessor).
    - ``data``: the event's data, after ``{"reason": <reason name or None>}`` (a ``reason`` key in
      ``data`` wins).

    Returns the change (with the row after it). The caller's commit makes it final; the caller then tells
    the CRL publishers of ``change.ca`` (`RevocationService.notify`).
    """
    status = CertStatus(status)
    kind = DEFAULT_KIND[status] if kind is None else EventKind(kind)
    if not kind.changes_status:
        raise ValueError(f"{kind.value} is not a status-change event: the CRL safety net would not see it")
    if status is CertStatus.HOLD:
        reason = Reason.CERTIFICATE_HOLD
    elif status is CertStatus.VALID and (reason is not None or invalidity_date is not None):
        raise ValueError("a valid certificate has no revocation reason or invalidity date")
    elif status is CertStatus.REVOKED and reason in (Reason.CERTIFICATE_HOLD, Reason.REMOVE_FROM_CRL):
        raise ValueError("certificateHold and removeFromCRL are not revocation reasons: hold or release instead")
    states = _expected(expect)
    values: dict[str, Any] = {"status": status.value, "updated_at": at}
    if status is CertStatus.VALID:
        values.update(revocation_reason=None, revoked_at=None, invalidity_date=None)
    else:
        values.update(revocation_reason=None if reason in (None, 0) else int(reason), revoked_at=at,
                      invalidity_date=invalidity_date)
    allowed = CHANGEABLE if states is None else states & CHANGEABLE
    where = [certificates.c.serial == serial, certificates.c.status.in_(sorted(s.value for s in allowed))]
    if never_used:
        where.append(certificates.c.first_used_at.is_(None))
    res = await conn.execute(certificates.update().where(*where).values(**values))
    if res.rowcount != 1:
        if states is not None or never_used:
            return None
        if await inventory.get(conn, serial) is None:
            raise UnknownCertificate(f"no certificate with serial {serial}")
        raise InvalidTransition(f"certificate {serial} is revoked for good and cannot change")
    after = await inventory.get(conn, serial)
    assert after is not None
    if record:
        await record_event(conn, at=at, kind=kind.value, subject=serial, actor=actor,
                           data={"reason": Reason(reason).name if reason is not None else None, **(data or {})})
    return StatusChange(serial, after.ca, status, after)


async def lock_status(conn: AsyncConnection, serial: str, *, expect: Expect, at: datetime) -> bool:
    """Lock a certificate's row in the caller's transaction while it is in ``expect`` (the UPDATE touches
    ``updated_at`` only): a concurrent status change waits for this transaction, or committed first and
    this returns False (as for an unknown serial). For work that needs the state to hold until it commits
    (a renewal signed by a certificate that must stay valid)."""
    states = _expected(expect)
    assert states is not None
    res = await conn.execute(certificates.update().where(
        certificates.c.serial == serial, certificates.c.status.in_(sorted(s.value for s in states)),
    ).values(updated_at=at))
    return res.rowcount == 1


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

    def notify(self, changes: Iterable[StatusChange | None]) -> None:
        """After the commit of `change` calls: tell the listeners once per CA that changed."""
        for ca in sorted({c.ca for c in changes if c is not None}):
            self.notify_changed(ca)

    async def change(self, conn: AsyncConnection, serial: str, status: CertStatus, *, actor: str,
                     at: datetime | None = None, **kw: Any) -> StatusChange | None:
        """`change_status` inside the caller's transaction, at this service's clock unless ``at`` is given.
        The caller calls `notify` with the changes after its commit."""
        return await change_status(conn, serial, status, at=at or self.clock(), actor=actor, **kw)

    async def _change(self, serial: str, status: CertStatus, *, actor: str, **kw: Any) -> CertRecord:
        """One change in a transaction of its own, then the listeners."""
        async with writer(self.engine).begin() as conn:
            change = await self.change(conn, serial, status, actor=actor, **kw)
            if change is None:  # a conditional change whose condition did not hold
                current = await inventory.get(conn, serial)
                if current is None:
                    raise UnknownCertificate(f"no certificate with serial {serial}")
                raise InvalidTransition(f"certificate {serial} is {current.status.value}, not on hold")
        assert change.record is not None
        kind = EventKind(kw.get("kind") or DEFAULT_KIND[status])
        log.info(kind.value, serial=serial, actor=actor, status=status.value, reason=change.record.revocation_reason)
        self.notify([change])
        return change.record

    async def revoke(self, serial: str, reason: Reason = Reason.UNSPECIFIED, *, actor: str,
                     invalidity_date: datetime | None = None, data: dict | None = None) -> CertRecord:
        """Revoke for good (a held certificate may be revoked too)."""
        if reason in (Reason.CERTIFICATE_HOLD, Reason.REMOVE_FROM_CRL):
            raise ValueError("use hold() / release() for certificateHold")
        return await self._change(serial, CertStatus.REVOKED, actor=actor, reason=reason,
                                  invalidity_date=invalidity_date, data=data)

    async def hold(self, serial: str, *, actor: str, data: dict | None = None) -> CertRecord:
        """certificateHold: on the CRL until released."""
        return await self._change(serial, CertStatus.HOLD, actor=actor, data=data)

    async def release(self, serial: str, *, actor: str, data: dict | None = None) -> CertRecord:
        """Lift a hold: the certificate leaves the next CRL."""
        return await self._change(serial, CertStatus.VALID, actor=actor, expect=CertStatus.HOLD, data=data)

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
                sa.select(certificates.c.serial).where(
                    certificates.c.status.in_(sorted(s.value for s in CHANGEABLE)),
                    certificates.c.first_used_at.is_(None), clock_start <= cutoff).limit(limit))).scalars().all()
        changes: list[StatusChange] = []
        for serial in rows:
            async with writer(self.engine).begin() as conn:
                change = await change_status(
                    conn, serial, CertStatus.REVOKED, at=now, actor="system:day-91", reason=PERMANENT_REASON,
                    expect=CHANGEABLE, never_used=True,
                    data={"detail": f"never used within {unused_days} days of issue"})
            if change is not None:
                changes.append(change)
        self.notify(changes)
        if changes:
            log.info("pki.cert.revoke_unused", count=len(changes), unused_days=unused_days)
        return [c.serial for c in changes]
