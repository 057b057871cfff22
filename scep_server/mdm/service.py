"""MDM sources and their sync: the configuration of each source, what it last said of our devices, and the
lifecycle changes it drives (through the device store: every change is an audit event whose actor is
``mdm:<source>``, and the certificates follow the device as for any other change).

A sync reads the MDM's whole inventory first; when that fails, nothing is changed (and the failure is kept as
the source's last outcome). A dry run plans the same changes and applies none. Every other sync, periodic or asked
for, holds the source's claim in the database while it runs: one sync of a source at a time, in all processes and
instances. The claim is a lease: its process renews it while the sync runs, and one not renewed for
SYNC_LEASE_SECONDS (its process was killed, or lost the database) is taken by the next sync; a sync whose claim was
taken applies and records nothing more.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, Awaitable, Callable

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustkit.clock import Clock, aware, utcnow
from trustkit.db import writer

from .. import metrics
from ..binding.devices import ANY_TIME, TRANSITIONS, DeviceStore
from ..binding.errors import InvalidTransition
from ..binding.tables import devices, mdm_devices, mdm_sources
from ..store.events import record_event
from ..store.tables import events
from .errors import (DeviceNotListed, EventHeld, EventSuperseded, MdmError, MdmSourceExists, MdmSourceInvalid,
                     MdmSourceNotFound, MdmSyncRunning, SyncClaimLost)
from .plan import Change, MdmState, Ours, Record, Rules, Tracked, decide, plan

log = structlog.get_logger("mdm")

SOURCE_NAME = re.compile(r"\A[a-z][a-z0-9-]{0,31}\Z")
KINDS = ("jamf", "intune")
ID_FIELDS = {"jamf": ("udid", "serial_number"), "intune": ("device_id", "azure_ad_device_id", "serial_number")}
_CHUNK = 500
SYNC_READ_SKEW = timedelta(seconds=60)  # how far the MDM's clock may be behind ours
_STATUS_KINDS = tuple(f"device.{action}" for action in TRANSITIONS)  # what changes a device's status
TAKE_DOWNS = frozenset({"suspend", "deactivate", "delete"})  # what the brake counts
# A sync's claim of its source is a lease: the process holding it renews it (sync_renewed_at) every
# SYNC_LEASE_SECONDS / 3 while its sync runs, and a claim not renewed for SYNC_LEASE_SECONDS (the same for every
# process, whatever its settings) is stale: its process died in the sync (killed, out of memory, its node lost) or lost the database,
# and the next sync, periodic or asked for, takes it. A claim whose sync_renewed_at is NULL or before its
# sync_started_at was made by a version that does not renew: it is honoured until sync_claimed_until, as that
# version honours every claim (taken early, its sync, still running, would apply a second time).
SYNC_LEASE_SECONDS = 60.0
CLAIM_LOST = ("another sync took this sync's claim of the source (not renewed for {lease:g} s); nothing more was "
              "applied or recorded")


@dataclass
class _Lease:
    """A claim this process holds: the source's sync_started_at and sync_claimed_until as it wrote them (another
    sync's claim has another start: a stale claim is taken later than it was last renewed)."""

    name: str
    started: datetime
    until: datetime
    lost: bool = False


def _heartbeat(row) -> datetime | None:
    """When the claim in `row` was last renewed (None: its maker does not renew claims)."""
    if row.sync_renewed_at is None or row.sync_started_at is None:
        return None
    renewed = aware(row.sync_renewed_at)
    return renewed if renewed >= aware(row.sync_started_at) else None


@dataclass
class SyncReport:
    source: str
    dry_run: bool
    records: int = 0
    changes: list[Change] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # changes the device store refused (changed meanwhile)
    error: str | None = None
    # the brake: {"takedowns", "devices", "limit", "changes"} of a plan that takes down too many devices to be
    # applied without an administrator's confirmation (None: not held)
    held: dict | None = None

    def to_json(self) -> dict:
        return {"source": self.source, "dry_run": self.dry_run, "records": self.records,
                "changes": [c.to_json() for c in self.changes], "skipped": self.skipped, "error": self.error,
                "held": self.held}


def secret_sha256(secret: str) -> str:
    # a header's bytes that are not UTF-8 arrive as unpaired surrogates: hashed as they came, they match nothing
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def rules_of(settings) -> Rules:
    return Rules(unmanaged=settings.unmanaged_action, disabled=settings.disabled_action,
                 removed=settings.removed_action, removed_grace=timedelta(days=settings.removed_grace_days),
                 restore=settings.restore_when_managed)


def _public(row) -> dict:
    m = row._mapping
    return {"name": m["name"], "kind": m["kind"], "config": json.loads(m["config"]),
            "webhook": m["webhook_secret_sha256"] is not None,
            "last_sync_at": aware(m["last_sync_at"]).isoformat() if m["last_sync_at"] else None,
            "last_sync_outcome": m["last_sync_outcome"],
            "created_at": aware(m["created_at"]).isoformat(), "updated_at": aware(m["updated_at"]).isoformat()}


# reads a source's inventory: (records, the source row's Graph state to keep) -- see scep_server.mdm.readers
Reader = Callable[[dict, dict], Awaitable[tuple[list[Record], dict]]]

# how far a record's state lets a device be trusted: of two records of one device, the lower one counts
_TRUST = {MdmState.DISABLED: 0, MdmState.UNMANAGED: 1, MdmState.MISSING: 1, MdmState.MANAGED: 2}


def _is(column, value):
    """`column` holds `value` (a value read from it, None included)."""
    return column.is_(None) if value is None else column == value


def _upsert(dialect: str, row: dict, update: dict, where=None):
    """INSERT ... ON CONFLICT (source, device_id) DO UPDATE [WHERE], in SQLite's or PostgreSQL's words."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(mdm_devices).values(**row)
    return stmt.on_conflict_do_update(index_elements=[mdm_devices.c.source, mdm_devices.c.device_id], set_=update,
                                      where=where)


class MdmService:
    def __init__(self, engine: AsyncEngine, device_store: DeviceStore, settings, *, reader: Reader,
                 clock: Clock = utcnow):
        self.engine = engine
        self.devices = device_store
        self.settings = settings
        self.rules = rules_of(settings)
        self.reader = reader
        self.clock = clock
        self._leases: dict[str, _Lease] = {}  # the claims of the syncs this process runs, by source

    # ------------------------------------------------------------------ sources

    async def configure(self, name: str, kind: str, config: dict[str, Any], *, actor: str,
                        new_webhook_secret: bool = False) -> tuple[dict, str | None]:
        """Add or update a source; returns it and, when asked for (or on creation), its new webhook secret
        (shown once: only its SHA-256 is kept)."""
        if not SOURCE_NAME.fullmatch(name):
            raise MdmSourceInvalid("source name: 1-32 of a-z, 0-9 and -, starting with a letter")
        if kind not in KINDS:
            raise MdmSourceInvalid(f"kind: one of {', '.join(KINDS)}")
        id_field = config.get("id_field")
        if id_field not in ID_FIELDS[kind]:
            raise MdmSourceInvalid(f"id_field: one of {', '.join(ID_FIELDS[kind])}")
        now = self.clock()
        secret = None
        async with writer(self.engine).begin() as conn:
            row = (await conn.execute(sa.select(mdm_sources).where(mdm_sources.c.name == name))).first()
            if row is not None and row.kind != kind:
                raise MdmSourceExists(f"source {name!r} is a {row.kind} source")
            if row is None or new_webhook_secret:
                secret = secrets.token_urlsafe(32)
            values = {"kind": kind, "config": json.dumps(config, sort_keys=True), "updated_at": now}
            if secret is not None:
                values["webhook_secret_sha256"] = secret_sha256(secret)
            if row is None:
                await conn.execute(mdm_sources.insert().values(name=name, created_at=now, **values))
            else:
                await conn.execute(mdm_sources.update().where(mdm_sources.c.name == name).values(**values))
            await record_event(conn, at=now, kind="mdm.configure", subject=name, actor=actor,
                               data={"kind": kind, "config": config, "webhook_secret_rotated": secret is not None})
            row = (await conn.execute(sa.select(mdm_sources).where(mdm_sources.c.name == name))).first()
        log.info("mdm.configure", source=name, kind=kind, actor=actor)
        return _public(row), secret

    async def sources(self) -> list[dict]:
        async with self.engine.connect() as conn:
            return [_public(r) for r in await conn.execute(sa.select(mdm_sources).order_by(mdm_sources.c.name))]

    async def _row(self, name: str):
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(mdm_sources).where(mdm_sources.c.name == name))).first()
        if row is None:
            raise MdmSourceNotFound(f"no MDM source {name!r}")
        return row

    async def source(self, name: str) -> dict:
        return _public(await self._row(name))

    async def remove(self, name: str, *, actor: str) -> None:
        now = self.clock()
        async with writer(self.engine).begin() as conn:
            res = await conn.execute(mdm_sources.delete().where(mdm_sources.c.name == name))
            if res.rowcount != 1:
                raise MdmSourceNotFound(f"no MDM source {name!r}")
            await conn.execute(mdm_devices.delete().where(mdm_devices.c.source == name))
            await record_event(conn, at=now, kind="mdm.remove", subject=name, actor=actor, data={})
        log.info("mdm.remove", source=name, actor=actor)

    # ------------------------------------------------------------------ devices

    async def _ours(self, ids: list[str]) -> dict[str, Ours]:
        out: dict[str, Ours] = {}
        async with self.engine.connect() as conn:
            for i in range(0, len(ids), _CHUNK):
                rows = await conn.execute(sa.select(devices.c.id, devices.c.status, devices.c.status_changed_by,
                                                    devices.c.status_changed_at)
                                          .where(devices.c.id.in_(ids[i:i + _CHUNK])))
                out.update({r.id: Ours(r.status, r.status_changed_by, changed_at=aware(r.status_changed_at))
                            for r in rows})
            mdm_down = sorted(i for i, o in out.items() if o.status not in ("active", "deleted")
                              and (o.status_changed_by or "").startswith("mdm:"))
            for i in range(0, len(mdm_down), _CHUNK):
                rows = await conn.execute(sa.select(events.c.subject, events.c.actor, events.c.data).where(
                    events.c.subject.in_(mdm_down[i:i + _CHUNK]), events.c.kind.in_(_STATUS_KINDS))
                    .order_by(events.c.id.desc()))
                walked: set[str] = set()
                for r in rows:  # newest first: back through the run of changes by the device's last changer
                    if r.subject in walked:
                        continue
                    ours = out[r.subject]
                    if r.actor != ours.status_changed_by:
                        walked.add(r.subject)
                        continue
                    data = json.loads(r.data) if isinstance(r.data, str) else (r.data or {})
                    out[r.subject] = dataclasses.replace(ours, taken_from=data.get("from"))
        return out

    async def _tracked(self, name: str) -> dict[str, Tracked]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(mdm_devices).where(mdm_devices.c.source == name))
            return {r.device_id: Tracked(MdmState(r.state), aware(r.missing_since) if r.missing_since else None)
                    for r in rows}

    async def _apply(self, name: str, changes: list[Change], report: SyncReport, ours: dict[str, Ours], *,
                     event_at: datetime | None = None,
                     guard: Callable[[AsyncConnection], Awaitable[None]] | None = None) -> None:
        """Each change, unless the device's status changed after it was read (`ours`, its changed_at) or, for a
        webhook event dated `event_at`, the MDM gave a later time to another event about the device since."""
        actor = f"mdm:{name}"
        for change in changes:
            seen = ours.get(change.device_id)
            try:
                await self.devices.transition(change.device_id, change.action, actor=actor, reason=change.why,
                                              judged_at=seen.changed_at if seen is not None else ANY_TIME,
                                              mdm_event=(name, event_at) if event_at is not None else None,
                                              guard=guard)
            except InvalidTransition as exc:  # changed meanwhile (an admin, a webhook): the next sync looks again
                report.skipped.append({**change.to_json(), "error": exc.code})
            else:
                report.changes.append(change)

    async def _track(self, name: str, tracking: dict[str, tuple[Tracked, str | None]], before: dict[str, Tracked],
                     untrack: list[str], now: datetime, event_at: datetime | None = None, *,
                     from_event: bool = False, guard: Callable[[AsyncConnection], Awaitable[None]] | None = None
                     ) -> None:
        async with writer(self.engine).begin() as conn:
            if guard is not None:
                await guard(conn)
            for device_id, (t, mdm_id) in tracking.items():
                seen = now if t.state is not MdmState.MISSING else None
                values = {"state": t.state.value, "missing_since": t.missing_since, "updated_at": now}
                if event_at is not None:  # the newest time the MDM vouched for: never moved back
                    last = mdm_devices.c.last_event_at
                    values["last_event_at"] = sa.case((sa.or_(last.is_(None), last < event_at), event_at), else_=last)
                if mdm_id:
                    values["mdm_id"] = mdm_id
                if seen is not None:
                    values["last_seen_at"] = seen
                if device_id in before:
                    if before[device_id] == t and seen is None:
                        continue
                    where = [mdm_devices.c.source == name, mdm_devices.c.device_id == device_id]
                    if from_event and event_at is not None:  # what a later event recorded meanwhile said stays
                        where.append(sa.or_(mdm_devices.c.last_event_at.is_(None),
                                            mdm_devices.c.last_event_at <= event_at))
                    await conn.execute(mdm_devices.update().where(*where).values(values))
                else:  # an upsert: two events for one device at once (Jamf posts enrolled and check-in together)
                    first = {**values, "last_event_at": event_at} if event_at is not None else values
                    await conn.execute(_upsert(conn.dialect.name, dict(source=name, device_id=device_id, **first),
                                               values))
            for i in range(0, len(untrack), _CHUNK):
                await conn.execute(mdm_devices.delete().where(mdm_devices.c.source == name,
                                                              mdm_devices.c.device_id.in_(untrack[i:i + _CHUNK])))
            if guard is not None:  # renewed again as it commits: a write of a large inventory may outlast the lease,
                await guard(conn)  # and what others read once it commits is the time it ended, not began

    def _brake_limit(self, known: int) -> int:
        """The take-downs the brake allows among `known` devices: brake_devices, or brake_share of them if more
        (the share as written: 0.29 of 100 is 29, where floating point makes it 28.999999999999996)."""
        return max(self.settings.brake_devices, int(Fraction(str(self.settings.brake_share)) * known))

    def _brake(self, changes: list[Change], ours: dict[str, Ours], confirmed: int | None) -> dict | None:
        """What holds a plan back: more take-downs than `brake_devices` and than `brake_share` of the devices the
        source knows of ours, unless an administrator confirmed at least that many (None: the plan may apply)."""
        downs = [c for c in changes if c.action in TAKE_DOWNS]
        known = sum(1 for o in ours.values() if o.status != "deleted")
        limit = self._brake_limit(known)
        if len(downs) <= limit or (confirmed is not None and len(downs) <= confirmed):
            return None
        return {"takedowns": len(downs), "devices": known, "limit": limit, "changes": [c.to_json() for c in downs]}

    async def sync(self, name: str, *, dry_run: bool = False, actor: str,
                   confirm_takedowns: int | None = None) -> SyncReport:
        """A sync asked for now (`mdm sync`, its API twin): read the source's whole inventory and apply what it
        asks for (none of it on a dry run, nor when the brake holds it: more devices taken down than the settings
        allow and `confirm_takedowns` confirms).

        It takes the source's claim, as the periodic sync does, whether or not that one is due: no two syncs of a
        source (the periodic one, another administrator's, in any process or instance sharing the database) read
        it and apply what they read at once. MdmSyncRunning while another sync holds the claim. A dry run changes
        nothing (no device, no tracking, not the source's last outcome): it takes no claim and runs alongside."""
        if dry_run:
            return await self._sync(name, dry_run=True, actor=actor, confirm_takedowns=confirm_takedowns)
        hold = timedelta(seconds=self.settings.sync_interval_seconds + self.settings.sync_timeout_seconds)
        lease, before = await self._claim_now(name, hold=hold)
        return await self._holding(lease, actor=actor, confirm_takedowns=confirm_takedowns, release_to=before)

    async def _sync(self, name: str, *, dry_run: bool, actor: str, confirm_takedowns: int | None,
                    lease: _Lease | None = None) -> SyncReport:
        """The sync itself; the caller holds the source's claim, `lease` (a dry run needs none): each change, the
        tracking and the outcome are written only while it still holds it."""
        from .clients import MdmUnavailable

        row = await self._row(name)
        report = SyncReport(name, dry_run)
        state = {"delta_link": row.delta_link, "directory_disabled": json.loads(row.directory_disabled or "[]")}
        read_started = self.clock()
        # a peer answering each page just inside timeout_seconds could keep one sync reading for days
        deadline = asyncio.timeout(self.settings.sync_timeout_seconds)
        try:
            async with deadline:
                records, state = await self.reader({"kind": row.kind, **json.loads(row.config)}, state)
        except MdmUnavailable as exc:
            report.error = str(exc)[:500]
        except Exception as exc:  # noqa: BLE001 - an answer no check foresaw: a failed sync, not a 500
            if isinstance(exc, TimeoutError) and deadline.expired():
                report.error = (f"the inventory was not read within {self.settings.sync_timeout_seconds:g} s "
                                f"([mdm] sync_timeout_seconds)")
            else:
                log.exception("mdm.sync_failed")
                report.error = f"the inventory could not be read: {type(exc).__name__}"
        if report.error is None:
            report.records = len(records)
            by_id: dict[str, Record] = {}
            for r in records:  # two records of one device (a stale one, a second enrolment): the least trusted wins
                if r.device_id not in by_id or _TRUST[r.state] < _TRUST[by_id[r.device_id].state]:
                    by_id[r.device_id] = r
            tracked = await self._tracked(name)
            ours = await self._ours(sorted(set(by_id) | set(tracked)))
            now = self.clock()
            p = plan(by_id, tracked, ours, actor=f"mdm:{name}", rules=self.rules, now=now)
            # a device whose status changed while the inventory was read (a webhook, an administrator) is newer
            # than what was read about it: left alone until the next sync
            moved = {d for d, o in ours.items() if o.changed_at is not None and o.changed_at > read_started}
            for change in [c for c in p.changes if c.device_id in moved]:
                report.skipped.append({**change.to_json(), "error": "changed_while_read"})
            p.changes = [c for c in p.changes if c.device_id not in moved]
            p.tracking = {d: t for d, t in p.tracking.items() if d not in moved}
            report.held = self._brake(p.changes, ours, confirm_takedowns)
            if report.held is not None:
                if not dry_run:
                    metrics.mdm_brake_held("sync")
                log.warning("mdm.sync_held", source=name, takedowns=report.held["takedowns"],
                            devices=report.held["devices"], limit=report.held["limit"])
            if dry_run:
                report.changes = p.changes
            elif report.held is None:  # held: nothing applied, nothing remembered (a device gone is not "missing")
                guard = self._lease_guard(lease) if lease is not None else None
                try:
                    await self._apply(name, p.changes, report, ours, guard=guard)
                    # what the inventory said of a device is as new as its reading (less the clocks' possible
                    # skew): an event the MDM dated before it, delivered late or posted again, is not applied over it
                    await self._track(name, p.tracking, tracked, p.untrack, now,
                                      event_at=read_started - SYNC_READ_SKEW, guard=guard)
                except SyncClaimLost:
                    report.error = CLAIM_LOST.format(lease=self.lease_seconds())
        if lease is not None and lease.lost:  # the sync that took the claim records its own outcome
            report.error = report.error or CLAIM_LOST.format(lease=self.lease_seconds())
        elif not dry_run:
            try:
                await self._finish(name, report, state if report.error is None and report.held is None else None,
                                   actor, guard=self._lease_guard(lease) if lease is not None else None)
            except SyncClaimLost:
                report.error = CLAIM_LOST.format(lease=self.lease_seconds())
        log.info("mdm.sync", source=name, dry_run=dry_run, records=report.records, changes=len(report.changes),
                 skipped=len(report.skipped), error=report.error)
        return report

    async def _finish(self, name: str, report: SyncReport, state: dict | None, actor: str, *,
                      guard: Callable[[AsyncConnection], Awaitable[None]] | None = None) -> None:
        now = self.clock()
        outcome = f"error: {report.error}" if report.error else \
            f"ok: {report.records} records, {len(report.changes)} changes"
        if report.held is not None:
            outcome = (f"held: {report.held['takedowns']} of {report.held['devices']} devices would be taken down "
                       f"(limit {report.held['limit']}); nothing changed until confirmed (mdm sync "
                       f"--confirm-takedowns)")
        values: dict[str, Any] = {"last_sync_at": now, "last_sync_outcome": outcome[:500]}
        if state is not None:
            values.update(delta_link=state.get("delta_link"),
                          directory_disabled=json.dumps(sorted(state.get("directory_disabled") or [])))
        async with writer(self.engine).begin() as conn:
            if guard is not None:
                await guard(conn)
            await conn.execute(mdm_sources.update().where(mdm_sources.c.name == name).values(**values))
            await record_event(conn, at=now, kind="mdm.sync", subject=name, actor=actor,
                               data={"records": report.records, "changes": len(report.changes),
                                     "skipped": len(report.skipped), "error": report.error,
                                     "held": report.held["takedowns"] if report.held else None})

    def lease_seconds(self) -> float:
        """How long a claim not renewed stays its holder's: SYNC_LEASE_SECONDS, the same in every process (a
        process judging by its own settings would take the live claims of one that renews on another rhythm)."""
        return SYNC_LEASE_SECONDS

    def _running(self, row, now: datetime) -> bool:
        """Whether the claim in `row` marks a sync that runs: begun, not run out, and renewed within the lease (or
        made by a version that does not renew)."""
        if row.sync_started_at is None or row.sync_claimed_until is None or aware(row.sync_claimed_until) <= now:
            return False
        renewed = _heartbeat(row)
        return renewed is None or (now - renewed).total_seconds() < self.lease_seconds()

    def _taking(self, name: str, row, now: datetime) -> None:
        """Log that the claim in `row`, stale, is taken."""
        if row.sync_started_at is not None and row.sync_claimed_until is not None \
                and aware(row.sync_claimed_until) > now:
            renewed = _heartbeat(row)
            log.warning("mdm.sync_claim_taken", source=name, running_since=aware(row.sync_started_at).isoformat(),
                        renewed_at=renewed.isoformat() if renewed else None)

    _CLAIM_COLUMNS = (mdm_sources.c.sync_claimed_until, mdm_sources.c.sync_started_at, mdm_sources.c.sync_renewed_at)

    def _unchanged(self, name: str, row):
        """The source's row still holds the claim read in `row` (none renewed it, nor took it, meanwhile)."""
        return sa.and_(mdm_sources.c.name == name, _is(mdm_sources.c.sync_claimed_until, row.sync_claimed_until),
                       _is(mdm_sources.c.sync_started_at, row.sync_started_at),
                       _is(mdm_sources.c.sync_renewed_at, row.sync_renewed_at))

    async def claim(self, name: str, *, hold: timedelta) -> datetime | None:
        """Whether this process runs the source's periodic sync now: due, and not claimed by another process. The
        end of the claim it made (truthy), or None."""
        lease = await self._claim_periodic(name, hold=hold)
        return lease.until if lease is not None else None

    async def _claim_periodic(self, name: str, *, hold: timedelta) -> _Lease | None:
        now = self.clock()
        interval = timedelta(seconds=self.settings.sync_interval_seconds)
        async with writer(self.engine).begin() as conn:
            row = (await conn.execute(sa.select(*self._CLAIM_COLUMNS, mdm_sources.c.last_sync_at)
                                      .where(mdm_sources.c.name == name))).first()
            if row is None:
                return None
            claimed = aware(row.sync_claimed_until) if row.sync_claimed_until else None
            last = aware(row.last_sync_at) if row.last_sync_at else None
            if self._running(row, now) or (last is not None and now - last < interval):
                return None
            if claimed is not None and claimed > now and row.sync_started_at is None:
                return None  # the period of the sync that ended last
            res = await conn.execute(mdm_sources.update().where(self._unchanged(name, row))
                                     .values(sync_claimed_until=now + hold, sync_started_at=now, sync_renewed_at=now))
            if res.rowcount != 1:
                return None
            self._taking(name, row, now)
            return _Lease(name, now, now + hold)

    async def _claim_now(self, name: str, *, hold: timedelta) -> tuple[_Lease, datetime | None]:
        """Claim the source for a sync asked for now, due or not: this claim, and the end of the one it replaces
        when that only kept the periodic sync's period (a finished sync's: given back at the end, so the period
        stays). MdmSyncRunning while a sync holds the claim (begun, its claim not run out, and renewed within the
        lease, or made by a version that does not renew: then until it runs out); MdmSourceNotFound."""
        for _ in range(5):
            now = self.clock()
            async with writer(self.engine).begin() as conn:
                row = (await conn.execute(sa.select(*self._CLAIM_COLUMNS).where(mdm_sources.c.name == name))).first()
                if row is None:
                    raise MdmSourceNotFound(f"no MDM source {name!r}")
                claimed = aware(row.sync_claimed_until) if row.sync_claimed_until else None
                if self._running(row, now):
                    raise MdmSyncRunning(name, aware(row.sync_started_at), claimed, _heartbeat(row),
                                         self.lease_seconds())
                res = await conn.execute(mdm_sources.update().where(self._unchanged(name, row))
                                         .values(sync_claimed_until=now + hold, sync_started_at=now,
                                                 sync_renewed_at=now))
                if res.rowcount == 1:
                    self._taking(name, row, now)
                    period = claimed if claimed is not None and claimed > now and row.sync_started_at is None \
                        else None
                    return _Lease(name, now, now + hold), period
            # another process claimed it between the read and the update: read again, it is running now
        raise MdmError(f"the claim of MDM source {name!r} kept changing; try again")

    async def periodic_sync(self, name: str) -> SyncReport | None:
        """The source's periodic sync, when it is due and no sync (periodic or an administrator's, of any process)
        holds its claim (None: not run here).

        The claim lasts the sync interval plus ``sync_timeout_seconds``: no other process (of any instance) reads
        the source while this sync may still be reading it. Once the sync has ended, the claim is cut back to one
        interval from when it was made, so the period stays the interval."""
        interval = timedelta(seconds=self.settings.sync_interval_seconds)
        lease = await self._claim_periodic(name, hold=interval + timedelta(seconds=self.settings.sync_timeout_seconds))
        if lease is None:
            return None
        return await self._holding(lease, actor=f"mdm:{name}", confirm_takedowns=None,
                                   release_to=lease.started + interval)

    async def _holding(self, lease: _Lease, *, actor: str, confirm_takedowns: int | None,
                       release_to: datetime | None) -> SyncReport:
        """Run the sync of a claim this process has just made, renewing the claim while it runs, then give it back
        (its end cut back to `release_to`)."""
        self._leases[lease.name] = lease
        renewer = asyncio.create_task(self._renewing(lease))
        try:
            return await self._sync(lease.name, dry_run=False, actor=actor, confirm_takedowns=confirm_takedowns,
                                    lease=lease)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            if self._leases.get(lease.name) is lease:
                del self._leases[lease.name]
            await self._release(lease.name, claimed=lease.until, until=release_to)

    async def _renewing(self, lease: _Lease) -> None:
        """Renew the claim every third of the lease until it is lost (or this task cancelled)."""
        while not lease.lost:
            await asyncio.sleep(self.lease_seconds() / 3)
            try:
                await self._renew_one(lease)
            except Exception as exc:  # noqa: BLE001 - the database unreachable a while: the next renewal tries again
                log.warning("mdm.sync_claim_renew_failed", source=lease.name,
                            error=f"{exc.__class__.__name__}: {str(exc)[:200]}")

    async def renew_claims(self) -> None:
        """Renew now the claims of the syncs this process runs (their renewers do it every third of the lease)."""
        for lease in list(self._leases.values()):
            await self._renew_one(lease)

    async def _renew_one(self, lease: _Lease) -> bool:
        if lease.lost:
            return False
        async with writer(self.engine).begin() as conn:
            return await self._renew(conn, lease)

    async def _renew(self, conn: AsyncConnection, lease: _Lease) -> bool:
        """Renew the claim in `conn`'s transaction, if this sync still holds it (False, and it is lost, if another
        sync took it). In the transaction that applies a change, the source's row stays locked until the commit
        (PostgreSQL; SQLite's write lock): a sync taking the claim meanwhile finds it renewed and is refused."""
        now, renewed = self.clock(), mdm_sources.c.sync_renewed_at
        # never moved back: a renewal that waited on the row's lock while a long write of this sync renewed it
        # later (at its end) keeps the later time
        res = await conn.execute(mdm_sources.update().where(
            mdm_sources.c.name == lease.name, mdm_sources.c.sync_started_at == lease.started,
            mdm_sources.c.sync_claimed_until == lease.until).values(
                sync_renewed_at=sa.case((sa.or_(renewed.is_(None), renewed < now), now), else_=renewed)))
        if res.rowcount == 1:
            return True
        if not lease.lost:
            lease.lost = True
            log.warning("mdm.sync_claim_lost", source=lease.name, running_since=lease.started.isoformat())
        return False

    def _lease_guard(self, lease: _Lease) -> Callable[[AsyncConnection], Awaitable[None]]:
        """What each write of a sync runs first in its transaction: SyncClaimLost unless the sync still holds its
        claim (renewed there)."""
        async def guard(conn: AsyncConnection) -> None:
            if lease.lost or not await self._renew(conn, lease):
                raise SyncClaimLost(lease.name)
        return guard

    async def _release(self, name: str, *, claimed: datetime, until: datetime | None) -> None:
        """End this process's sync: its claim (the one ending at `claimed`) no longer marks a sync running, and
        ends at `until` when it lasts longer (None: no claim left); a claim another process made since (this sync
        outlasted its own) is left as it is."""
        async with writer(self.engine).begin() as conn:
            row = (await conn.execute(sa.select(mdm_sources.c.sync_claimed_until)
                                      .where(mdm_sources.c.name == name))).first()
            if row is None or row.sync_claimed_until is None or aware(row.sync_claimed_until) != claimed:
                return
            values: dict[str, Any] = {"sync_started_at": None, "sync_renewed_at": None}
            if until is None or claimed > until:
                values["sync_claimed_until"] = until
            await conn.execute(mdm_sources.update().where(
                mdm_sources.c.name == name, mdm_sources.c.sync_claimed_until == row.sync_claimed_until)
                .values(**values))

    # ------------------------------------------------------------------ webhooks

    async def webhook_source(self, name: str, presented: str | None) -> dict:
        """The source a webhook post names, if `presented` is its secret (MdmSourceNotFound otherwise, whichever
        part is wrong: a caller learns nothing of which sources exist)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(mdm_sources).where(mdm_sources.c.name == name))).first()
        expected = row.webhook_secret_sha256 if row is not None else None
        given = secret_sha256(presented or "")
        ok = hmac.compare_digest(given, expected or "0" * 64) and expected is not None and presented is not None
        if not ok:
            raise MdmSourceNotFound("unknown source or wrong secret")
        return {"kind": row.kind, **json.loads(row.config)}

    async def event(self, name: str, record: Record, *, at: datetime | None = None) -> Change | None:
        """One device event of the MDM (a webhook): the change it asks for, applied, and remembered (with the
        time the MDM gave it, `at`, when it gave one).

        An event changes and remembers a device of ours that this source tracks, or that no source tracks yet (a
        device enrolled since the last sync: its unenrolment or deletion must not be missed). One that another
        source follows and this one's inventory has not listed is left alone (DeviceNotListed): remembered, the
        source's next sync would find it "gone" and take it down.

        A dated event is recorded as the device's newest (EventSuperseded if a later one is) before the device is
        read, and its change is refused if a later event is recorded before it is applied: of two events about
        one device handled at once, the later one decides, whichever finishes first.

        The brake holds webhooks too: an event that takes a device down when the source's take-downs of the last
        sync interval (webhooks and syncs) already reach the sync's limit is not applied (EventHeld); the next
        sync reads the device's state, under its own brake."""
        if not await self._followed(name, record.device_id):
            raise DeviceNotListed(f"{record.device_id!r} is unknown, or another source's and not {name!r}'s")
        if at is not None and not await self._claim(name, record, at):
            raise EventSuperseded(f"an event of {name!r} about {record.device_id!r} dated after {at} was recorded")
        ours = (await self._ours([record.device_id])).get(record.device_id)
        if ours is None:
            return None
        change = decide(record, ours, actor=f"mdm:{name}", rules=self.rules)
        report = SyncReport(name, False)
        if change is not None:
            guard = self._brake_guard(name) if change.action in TAKE_DOWNS else None
            try:
                await self._apply(name, [change], report, {record.device_id: ours}, event_at=at, guard=guard)
            except EventHeld as held:
                metrics.mdm_brake_held("event")
                log.warning("mdm.event_held", source=name, device=record.device_id, takedowns=held.recent,
                            limit=held.limit)
                raise
        before = await self._tracked_one(name, record.device_id)
        await self._track(name, {record.device_id: (Tracked(record.state), record.mdm_id)}, before, [], self.clock(),
                          event_at=at, from_event=True)
        return report.changes[0] if report.changes else None

    def _brake_guard(self, name: str) -> Callable[[AsyncConnection], Awaitable[None]]:
        """What a webhook's take-down runs in its own transaction: EventHeld when the source's take-downs of the
        last sync interval (webhooks and syncs, whichever process or instance applied them) reach what the brake
        allows one sync. The count and the take-down are one transaction under a lock of the source (its row,
        FOR UPDATE, on PostgreSQL; SQLite's write lock, taken at BEGIN), so events taken at once by several
        processes are counted one after another."""
        async def guard(conn: AsyncConnection) -> None:
            source = sa.select(mdm_sources.c.name).where(mdm_sources.c.name == name)
            if conn.dialect.name == "postgresql":
                source = source.with_for_update()
            await conn.execute(source)
            since = self.clock() - timedelta(seconds=self.settings.sync_interval_seconds)
            recent = (await conn.execute(sa.select(sa.func.count()).select_from(events).where(
                events.c.kind.in_([f"device.{a}" for a in sorted(TAKE_DOWNS)]), events.c.at >= since,
                events.c.actor == f"mdm:{name}"))).scalar_one()
            known = (await conn.execute(sa.select(sa.func.count()).select_from(mdm_devices).join(
                devices, devices.c.id == mdm_devices.c.device_id).where(
                mdm_devices.c.source == name, devices.c.status != "deleted"))).scalar_one()
            limit = self._brake_limit(known)
            if recent >= limit:
                raise EventHeld(f"{recent} devices taken down by {name!r} in the last sync interval",
                                recent=recent, limit=limit)
        return guard

    async def _followed(self, name: str, device_id: str) -> bool:
        """Whether the device is ours and tracked by this source or by none (not another source's alone)."""
        async with self.engine.connect() as conn:
            if (await conn.execute(sa.select(devices.c.id).where(devices.c.id == device_id))).first() is None:
                return False
            sources = set((await conn.execute(sa.select(mdm_devices.c.source).where(
                mdm_devices.c.device_id == device_id))).scalars())
        return not sources or name in sources

    async def _claim(self, name: str, record: Record, at: datetime) -> bool:
        """Record `at` as the time of the newest event about the device, unless a later one is recorded (False)."""
        last = mdm_devices.c.last_event_at
        row = dict(source=name, device_id=record.device_id, state=record.state.value, updated_at=self.clock(),
                   last_event_at=at)
        async with writer(self.engine).begin() as conn:
            stmt = _upsert(conn.dialect.name, row, {"last_event_at": at}, where=sa.or_(last.is_(None), last <= at))
            return (await conn.execute(stmt)).rowcount == 1

    async def _tracked_one(self, name: str, device_id: str) -> dict[str, Tracked]:
        async with self.engine.connect() as conn:
            r = (await conn.execute(sa.select(mdm_devices).where(mdm_devices.c.source == name,
                                                                 mdm_devices.c.device_id == device_id))).first()
        if r is None:
            return {}
        return {device_id: Tracked(MdmState(r.state), aware(r.missing_since) if r.missing_since else None)}
