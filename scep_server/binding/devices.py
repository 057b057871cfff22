"""Devices and their lifecycle; each change is recorded (who, when, why) and drives certificate state.

| device state | our certificate (inventory, CRL)        | attestation |
|--------------|------------------------------------------|-------------|
| active       | valid, not listed                         | managed     |
| suspended    | valid, not listed                         | not managed |
| deactivated  | certificateHold (listed, reversible)      | not managed |
| deleted      | revoked cessationOfOperation (final)      | not managed |

Transitions: suspend (active -> suspended), unsuspend (suspended -> active), deactivate (active or
suspended -> deactivated), reactivate (deactivated -> active), delete (any but deleted -> deleted).
Deleted is final: the device id is never reused and its certificates are never accepted again.

A device's certificates are those bound to it and those of ours issued for it (`enrolled_device_id`) that have
not bound yet: a certificate enrolled for a device follows the device from its issue on.

Certificate changes happen in the same transaction as the device change, so the inventory never
disagrees with the device; they are written by the status writer (`scep_server.ca.revocation.change_status`)
and the CRL publishers are told after the commit.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Awaitable, Callable

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..ca import inventory
from ..ca.inventory import Reason
from ..ca.revocation import PERMANENT_REASON, change_status
from ..ca.status import CHANGEABLE, CertStatus, StatusChange
from trustkit import paging
from trustkit.clock import Clock, aware, utcnow
from trustkit.db import writer
from trustkit.paging import Page, PageRequest
from ..store.events import record_event
from ..store.tables import certificates
from .errors import (ChangedConcurrently, DeviceExists, DeviceNotFound, InvalidInput, InvalidTransition,
                     SupersededByNewerEvent)
from .tables import device_certs, device_enrolments, devices, mdm_devices

log = structlog.get_logger("device")

DEVICE_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")  # \Z: `$` also matches before a final newline


DEVICE_KEY = (datetime, str)
"""The kinds of a device list's cursor: registration time, then id."""
MAX_HISTORY = 500  # the newest events of one device shown with it (as a certificate shows its newest 500)


class DeviceStatus(str, Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DEACTIVATED = "deactivated"
    DELETED = "deleted"


S = DeviceStatus
# action -> (allowed source states, target state)
ANY_TIME = object()  # transition(judged_at=): not checked
TRANSITIONS: dict[str, tuple[frozenset[DeviceStatus], DeviceStatus]] = {
    "suspend": (frozenset({S.ACTIVE}), S.SUSPENDED),
    "unsuspend": (frozenset({S.SUSPENDED}), S.ACTIVE),
    "deactivate": (frozenset({S.ACTIVE, S.SUSPENDED}), S.DEACTIVATED),
    "reactivate": (frozenset({S.DEACTIVATED}), S.ACTIVE),
    "delete": (frozenset({S.ACTIVE, S.SUSPENDED, S.DEACTIVATED}), S.DELETED),
}


@dataclass(frozen=True)
class Device:
    id: str
    name: str
    status: DeviceStatus
    created_at: datetime
    created_by: str | None
    status_changed_at: datetime
    status_changed_by: str | None
    status_reason: str | None

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "status": self.status.value,
                "created_at": self.created_at.isoformat(), "created_by": self.created_by,
                "status_changed_at": self.status_changed_at.isoformat(),
                "status_changed_by": self.status_changed_by, "status_reason": self.status_reason}


@dataclass(frozen=True)
class Binding:
    fingerprint_sha256: str
    device_id: str
    ca: str
    external: bool
    serial: str
    not_after: datetime
    current: bool
    state: str
    retired_reason: str | None
    bound_at: datetime
    retired_at: datetime | None

    def to_json(self) -> dict:
        return {"fingerprint_sha256": self.fingerprint_sha256, "device_id": self.device_id, "ca": self.ca,
                "external": self.external, "serial": self.serial, "not_after": self.not_after.isoformat(),
                "current": self.current, "state": self.state, "retired_reason": self.retired_reason,
                "bound_at": self.bound_at.isoformat(),
                "retired_at": self.retired_at.isoformat() if self.retired_at else None}


# What a lifecycle change did to one of our certificates.
CertChange = StatusChange


def _device(row) -> Device:
    m = row._mapping
    return Device(id=m["id"], name=m["name"], status=DeviceStatus(m["status"]), created_at=aware(m["created_at"]),
                  created_by=m["created_by"], status_changed_at=aware(m["status_changed_at"]),
                  status_changed_by=m["status_changed_by"], status_reason=m["status_reason"])


def _binding(row) -> Binding:
    m = row._mapping
    return Binding(fingerprint_sha256=m["fingerprint_sha256"], device_id=m["device_id"], ca=m["ca"],
                   external=bool(m["external"]), serial=m["serial"], not_after=aware(m["not_after"]),
                   current=bool(m["current"]), state=m["state"], retired_reason=m["retired_reason"],
                   bound_at=aware(m["bound_at"]),
                   retired_at=aware(m["retired_at"]))


async def _no_newer_event(conn: AsyncConnection, device_id: str, source: str, at: datetime) -> None:
    """SupersededByNewerEvent if `source` recorded an event about the device dated after `at`."""
    query = sa.select(mdm_devices.c.last_event_at).where(mdm_devices.c.source == source,
                                                         mdm_devices.c.device_id == device_id)
    if conn.dialect.name == "postgresql":  # SQLite: the write lock taken at BEGIN serialises with the recording
        query = query.with_for_update()
    last = (await conn.execute(query)).scalar()
    if last is not None and aware(last) > at:
        raise SupersededByNewerEvent(f"a later event of {source!r} about device {device_id!r} decides")


class DeviceStore:
    """Device records, their lifecycle and the certificate state it drives."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow,
                 notify_changed: Callable[[str], None] | None = None):
        self.engine = engine
        self.clock = clock
        self._notify = notify_changed or (lambda ca: None)

    async def create(self, device_id: str | None, *, name: str = "", actor: str) -> Device:
        """Register a device (active); a random id when none is given. Ids are never reused."""
        device_id = device_id or f"dev_{secrets.token_hex(10)}"
        if not DEVICE_ID.fullmatch(device_id):
            raise InvalidInput(f"device id {device_id!r}: 1-64 characters of letters, digits and _.:- "
                               f"starting with a letter or digit")
        if len(name) > 255:
            raise InvalidInput("device name: at most 255 characters")
        now = self.clock()
        async with writer(self.engine).begin() as conn:
            exists = (await conn.execute(sa.select(devices.c.status).where(devices.c.id == device_id))).first()
            if exists is not None:
                raise DeviceExists(f"device {device_id!r} exists ({exists.status}); device ids are never reused")
            try:
                await conn.execute(devices.insert().values(
                    id=device_id, name=name, status=S.ACTIVE.value, created_at=now, created_by=actor,
                    status_changed_at=now, status_changed_by=actor, status_reason="registered"))
            except IntegrityError:  # created meanwhile (PostgreSQL: both transactions saw it absent)
                raise DeviceExists(f"device {device_id!r} exists; device ids are never reused") from None
            await record_event(conn, at=now, kind="device.create", subject=device_id, actor=actor,
                               data={"name": name})
        log.info("device.create", device=device_id, actor=actor)
        return Device(device_id, name, S.ACTIVE, now, actor, now, actor, "registered")

    async def ensure(self, device_id: str, actor: str, *, register: bool = True) -> str | None:
        """Register a device an enrolment names (active) unless it exists; its status (``active`` when new).
        ``register=False``: only its status, None for a device not registered."""
        if not DEVICE_ID.fullmatch(device_id):
            raise InvalidInput(f"device id {device_id!r}: not a device id")
        async with self.engine.connect() as conn:
            status = (await conn.execute(sa.select(devices.c.status).where(devices.c.id == device_id))).scalar()
        if not register:
            return status
        if status is None:
            try:
                await self.create(device_id, actor=actor)
            except (DeviceExists, IntegrityError):  # registered meanwhile by another request or process
                async with self.engine.connect() as conn:
                    status = (await conn.execute(sa.select(devices.c.status)
                                                 .where(devices.c.id == device_id))).scalar()
        return status or S.ACTIVE.value

    async def get(self, device_id: str) -> Device:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(devices).where(devices.c.id == device_id))).first()
        if row is None:
            raise DeviceNotFound(f"no device {device_id!r}")
        return _device(row)

    async def page(self, page: PageRequest, *, status: str | None = None) -> Page[Device]:
        """One page of the devices, oldest first (registration time, then id; docs/api.md "Pagination"),
        of one status or all: an index range of ix_devices_status_created or ix_devices_created."""
        key = [devices.c.created_at, devices.c.id]
        q = (sa.select(devices).where(paging.after(key, page.after)).order_by(*paging.order(key))
             .limit(page.limit + 1))
        if status:
            q = q.where(devices.c.status == DeviceStatus(status).value)
        async with self.engine.connect() as conn:
            rows = [_device(r) for r in await conn.execute(q)]
        return paging.take(rows, page.limit, key=lambda d: (d.created_at, d.id))

    async def bindings(self, device_id: str) -> list[Binding]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(device_certs).where(device_certs.c.device_id == device_id)
                                      .order_by(device_certs.c.bound_at))
            return [_binding(r) for r in rows]

    async def history(self, device_id: str, limit: int = MAX_HISTORY) -> list[dict]:
        """The recorded changes of a device, oldest first: the newest ``limit`` of them (a device's history grows
        with every refused attestation naming it; the audit trail, filtered by subject, lists them all)."""
        from ..store.tables import events
        import json

        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(events).where(events.c.subject == device_id)
                                       .order_by(events.c.id.desc()).limit(limit))).all()
        return [{"at": aware(r.at).isoformat(), "kind": r.kind, "actor": r.actor, "data": json.loads(r.data)}
                for r in reversed(rows)]

    async def transition(self, device_id: str, action: str, *, actor: str, reason: str | None = None,
                         judged_at: datetime | None | object = ANY_TIME,
                         mdm_event: tuple[str, datetime] | None = None,
                         guard: Callable[[AsyncConnection], Awaitable[None]] | None = None,
                         ) -> tuple[Device, list[CertChange]]:
        """Apply a lifecycle action; returns the device after it and the certificate changes it made.

        ``judged_at``: the device's ``status_changed_at`` when the caller decided on the action (an MDM's sync or
        webhook): ChangedConcurrently if its status changed since, even back to the same status (an
        administrator's reactivate and deactivate in between are not undone).

        ``mdm_event``: (source, time) of the MDM event that asks for the action: SupersededByNewerEvent if the
        source has since recorded a later event about the device (``mdm_devices.last_event_at``, locked until the
        commit on PostgreSQL, so that a newer event recorded meanwhile either is seen here or reads the device
        after this change).

        ``guard``: run first in the action's transaction (which holds SQLite's write lock); what it raises refuses
        the action, nothing written (an MDM source's brake counts and locks what it needs there)."""
        if action not in TRANSITIONS:
            raise InvalidInput(f"unknown action {action!r}; one of: {', '.join(TRANSITIONS)}")
        sources, target = TRANSITIONS[action]
        now = self.clock()
        async with writer(self.engine).begin() as conn:
            if guard is not None:
                await guard(conn)
            if mdm_event is not None:
                await _no_newer_event(conn, device_id, *mdm_event)
            row = (await conn.execute(sa.select(devices).where(devices.c.id == device_id))).first()
            if row is None:
                raise DeviceNotFound(f"no device {device_id!r}")
            current = DeviceStatus(row.status)
            if current not in sources:
                raise InvalidTransition(f"device {device_id!r} is {current.value}: cannot {action} "
                                        f"(allowed from {', '.join(sorted(s.value for s in sources))})")
            unchanged = [devices.c.status == current.value]
            if judged_at is not ANY_TIME:
                if aware(row.status_changed_at) != judged_at:
                    raise ChangedConcurrently(f"device {device_id!r} changed since it was read; try again")
                unchanged.append(devices.c.status_changed_at.is_(None) if row.status_changed_at is None
                                 else devices.c.status_changed_at == row.status_changed_at)
            res = await conn.execute(devices.update().where(devices.c.id == device_id, *unchanged)
                                     .values(status=target.value, status_changed_at=now, status_changed_by=actor,
                                             status_reason=reason))
            if res.rowcount != 1:  # changed meanwhile by another process (PostgreSQL read committed)
                raise ChangedConcurrently(f"device {device_id!r} changed concurrently; try again")
            await record_event(conn, at=now, kind=f"device.{action}", subject=device_id, actor=actor,
                               data={"from": current.value, "to": target.value, "reason": reason})
            held_since = aware(row.status_changed_at) if current is S.DEACTIVATED else None
            changes = await _apply_to_certificates(conn, device_id, target, now=now, actor=actor, reason=reason,
                                                   held_since=held_since)
        log.info(f"device.{action}", device=device_id, actor=actor, reason=reason,
                 certificates=[c.serial for c in changes])
        for ca in sorted({c.ca for c in changes}):
            self._notify(ca)
        return _device_after(row, target, now, actor, reason), changes

    async def preregister(self, device_id: str, *, profile: str, transaction_id: str, actor: str) -> dict:
        """State that the enrolment (profile, SCEP transactionID) is this device's: the certificate issued for it
        names the device (enrolled_device_id). One device per enrolment; not for a deleted device."""
        if not transaction_id or len(transaction_id) > 255 or "\0" in transaction_id:
            raise InvalidInput("transaction id: 1-255 characters")
        if not profile or len(profile) > 64:
            raise InvalidInput("profile: 1-64 characters")
        now = self.clock()
        async with writer(self.engine).begin() as conn:
            row = (await conn.execute(sa.select(devices.c.status).where(devices.c.id == device_id))).first()
            if row is None:
                raise DeviceNotFound(f"no device {device_id!r}")
            if row.status == S.DELETED.value:
                raise InvalidTransition(f"device {device_id!r} is deleted")
            taken = (await conn.execute(sa.select(device_enrolments.c.device_id).where(
                device_enrolments.c.profile == profile, device_enrolments.c.transaction_id == transaction_id))).first()
            if taken is not None:
                raise DeviceExists(f"enrolment {transaction_id!r} of profile {profile!r} is pre-registered for "
                                   f"device {taken.device_id!r}")
            try:
                await conn.execute(device_enrolments.insert().values(
                    profile=profile, transaction_id=transaction_id, device_id=device_id, created_at=now,
                    created_by=actor))
            except IntegrityError:  # pre-registered meanwhile by another request or process
                raise DeviceExists(f"enrolment {transaction_id!r} of profile {profile!r} is pre-registered "
                                   f"already") from None
            await record_event(conn, at=now, kind="device.enrolment.preregister", subject=device_id, actor=actor,
                               data={"profile": profile, "transaction_id": transaction_id})
        log.info("device.enrolment.preregister", device=device_id, profile=profile, transaction_id=transaction_id,
                 actor=actor)
        return {"device_id": device_id, "profile": profile, "transaction_id": transaction_id,
                "created_at": now.isoformat(), "created_by": actor}

    async def enrolment_device(self, profile: str, transaction_id: str) -> str | None:
        """The device pre-registered for an enrolment (the SCEP service asks before issuing), if any."""
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(device_enrolments.c.device_id).where(
                device_enrolments.c.profile == profile, device_enrolments.c.transaction_id == transaction_id))).scalar()

    async def remove_certificate(self, device_id: str, *, actor: str, reason: str | None = None) -> Binding:
        """Take the device's current certificate out of the directory: never accepted again (ours is revoked)."""
        now = self.clock()
        async with writer(self.engine).begin() as conn:
            row = (await conn.execute(sa.select(device_certs).where(
                device_certs.c.device_id == device_id, device_certs.c.current.is_(True)))).first()
            if row is None:
                if (await conn.execute(sa.select(devices.c.id).where(devices.c.id == device_id))).first() is None:
                    raise DeviceNotFound(f"no device {device_id!r}")
                raise InvalidTransition(f"device {device_id!r} has no current certificate")
            await retire(conn, row.fingerprint_sha256, "removed", now)
            await record_event(conn, at=now, kind="device.cert.remove", subject=device_id, actor=actor,
                               data={"fingerprint_sha256": row.fingerprint_sha256, "serial": row.serial,
                                     "ca": row.ca, "reason": reason})
            touched = None
            if not row.external:
                touched = await _revoke_ours(conn, row.serial, now=now, actor=actor, reason=PERMANENT_REASON,
                                             why="certificate removed from the device")
            binding = _binding((await conn.execute(sa.select(device_certs).where(
                device_certs.c.fingerprint_sha256 == row.fingerprint_sha256))).first())
        if touched:
            self._notify(touched.ca)
        return binding


def _device_after(row, target: DeviceStatus, now: datetime, actor: str, reason: str | None) -> Device:
    d = _device(row)
    return Device(d.id, d.name, target, d.created_at, d.created_by, now, actor, reason)


async def retire(conn: AsyncConnection, fingerprint: str, why: str, now: datetime) -> None:
    """A binding that is never accepted again (the row stays: the certificate can never bind elsewhere)."""
    await conn.execute(device_certs.update().where(device_certs.c.fingerprint_sha256 == fingerprint,
                                                   device_certs.c.state == "active")
                       .values(state="retired", retired_reason=why, retired_at=now, current=False))


async def _revoke_ours(conn: AsyncConnection, serial: str, *, now: datetime, actor: str, reason: Reason,
                       why: str, invalidity_date: datetime | None = None) -> CertChange | None:
    """Revoke one of our certificates unless it is revoked already (None then)."""
    return await change_status(conn, serial, CertStatus.REVOKED, at=now, actor=actor, reason=reason,
                               invalidity_date=invalidity_date, expect=CHANGEABLE, data={"detail": why})


async def _apply_to_certificates(conn: AsyncConnection, device_id: str, target: DeviceStatus, *, now: datetime,
                                 actor: str, reason: str | None, held_since: datetime | None = None
                                 ) -> list[CertChange]:
    """The certificate side of a lifecycle change (our certificates in the inventory; bindings). A reactivation
    (`held_since`: when the device was deactivated) releases the holds its deactivation placed, not one an
    administrator placed on a certificate before it."""
    rows = (await conn.execute(
        sa.select(device_certs.c.fingerprint_sha256, device_certs.c.serial, device_certs.c.external,
                  device_certs.c.state, certificates.c.status, certificates.c.revocation_reason, certificates.c.ca,
                  certificates.c.revoked_at)
        .select_from(device_certs.outerjoin(certificates,
                                            certificates.c.fingerprint_sha256 == device_certs.c.fingerprint_sha256))
        .where(device_certs.c.device_id == device_id))).all()
    # our certificates issued for the device (enrolled_device_id) that have not bound yet follow it too
    bound = sa.select(device_certs.c.fingerprint_sha256).where(
        device_certs.c.fingerprint_sha256 == certificates.c.fingerprint_sha256)
    unbound = (await conn.execute(
        sa.select(certificates.c.fingerprint_sha256, certificates.c.serial, sa.literal(False).label("external"),
                  sa.literal("active").label("state"), certificates.c.status, certificates.c.revocation_reason,
                  certificates.c.ca, certificates.c.revoked_at)
        .where(certificates.c.enrolled_device_id == device_id, ~bound.exists()))).all()
    rows = [*rows, *unbound]
    changes: list[CertChange] = []
    data = {"device": device_id, "reason": reason}
    for r in rows:
        ours = not r.external and r.status is not None
        if target is S.DEACTIVATED and ours and r.state == "active" and r.status == CertStatus.VALID:
            change = await change_status(conn, r.serial, CertStatus.HOLD, at=now, actor=actor,
                                         expect=CertStatus.VALID, data=data)
            if change:
                changes.append(change)
        elif (target is S.ACTIVE and ours and r.state == "active" and r.status == CertStatus.HOLD
              and held_since is not None and (r.revoked_at is None or aware(r.revoked_at) >= held_since)):
            change = await change_status(conn, r.serial, CertStatus.VALID, at=now, actor=actor,
                                         expect=CertStatus.HOLD, data=data)
            if change:
                changes.append(change)
        elif target is S.DELETED:
            await retire(conn, r.fingerprint_sha256, "device_deleted", now)
            if ours:
                change = await _revoke_ours(conn, r.serial, now=now, actor=actor, reason=PERMANENT_REASON,
                                            why=f"device {device_id} deleted")
                if change:
                    changes.append(change)
    return changes
