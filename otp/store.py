"""SQL of the OTP factor (SQLAlchemy Core, async; SQLite and PostgreSQL).

Every transaction that writes starts with BEGIN IMMEDIATE on SQLite (`trustkit.db.writer`, which sets the
`sqlite_begin` option engines from `trustkit.db.create_engine` honour). The replay check is one compare-and-set
UPDATE per key: the stored (usage_ctr, session_use) must be strictly lower than the OTP's.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustkit import paging
from trustkit.batching import GroupCommit
from trustkit.clock import aware
from trustkit.progress import Progress, report
from trustkit.db import writer
from trustkit.paging import Page, PageRequest

from .config import ThrottleSettings
from .tables import (ACTIVE, REVOKED, UNASSIGNED, otp_clients, otp_events, otp_imports, otp_kek, otp_throttle,
                     otp_verify_counts, otp_yubikeys)

k = otp_yubikeys

INSERT_CHUNK = 10_000  # keys per bulk insert of an import (all in one transaction)

# Failures of the store (not of the request): the database is down, a connection broke, a timeout.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, asyncpg.PostgresError,
                                                   asyncpg.InterfaceError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """What verification needs of a live key: identity, sealed secrets, status hint."""

    id: int
    serial: int
    public_id: str
    status: str
    user_name: str | None
    secret_sealed: bytes
    kek_id: str
    import_id: int  # the import that wrote these secrets: a row id reused by a later import is another key


@dataclass(frozen=True, slots=True)
class KeyState:
    """The replay and lifecycle state of one key row, read fresh."""

    id: int
    serial: int
    public_id: str
    status: str
    user_name: str | None
    deleted: bool
    usage_ctr: int
    session_use: int
    last_nonce: str | None
    failures: int
    failures_since: datetime | None
    blocked_until: datetime | None
    import_id: int | None = None


@dataclass(frozen=True, slots=True)
class CounterUpdate:
    """One compare-and-set: accept (usage_ctr, session_use) for key `key_id` if strictly newer."""

    key_id: int
    usage_ctr: int
    session_use: int
    otp_timestamp: int
    nonce: str | None
    # the import the verifying process read the key's secrets from (None: not checked): a process that still
    # holds a deleted key's secrets never moves the counters of a key imported later under the same row id
    import_id: int | None = None


@dataclass(frozen=True, slots=True)
class NewKey:
    serial: int
    public_id: str
    secret_sealed: bytes
    kek_id: str
    source_line: int
    secret_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class ClientRow:
    id: int
    name: str
    secret_sealed: bytes
    kek_id: str
    created_at: datetime
    disabled_at: datetime | None
    allow_unsigned: bool = False


# Security events: aggregated per (kind, source, minute) and pruned after the retention period.
SECURITY_KINDS = ("security.otp.unknown_key", "security.otp.revoked_key", "security.otp.wrong_user",
                  "security.otp.key_throttled", "security.otp.source_throttled", "security.otp.client_throttled",
                  "security.otp.user_throttled")


_STATE_COLS = (k.c.id, k.c.serial, k.c.public_id, k.c.status, k.c.user_name, k.c.deleted_at, k.c.usage_ctr,
               k.c.session_use, k.c.last_nonce, k.c.failures, k.c.failures_since, k.c.blocked_until, k.c.import_id)
_MATERIAL_COLS = (k.c.id, k.c.serial, k.c.public_id, k.c.status, k.c.user_name, k.c.secret_sealed, k.c.kek_id,
                  k.c.import_id)

# PostgreSQL: one statement, run in autocommit (durable when it returns), does every compare-and-set
# of a batch and returns the accepted ids. The `locked` CTE, evaluated first as an InitPlan, takes the
# row locks in id order, so two processes whose batches share keys never deadlock. The two statements
# of the verification hot path go straight to asyncpg on a pooled connection: SQLAlchemy's execution
# layer cost more CPU per batch than the rest of a verification (profiled with bench/otp.py --profile).
_PG_CAS_BATCH = (
    "WITH v AS (SELECT * FROM unnest($1::int[], $2::int[], $3::int[], $4::int[], $5::varchar[], $8::int[]) "
    "AS t(id, c, u, ts, n, imp)), "
    "locked AS (SELECT id FROM otp_yubikeys WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE) "
    "UPDATE otp_yubikeys AS k SET usage_ctr = v.c, session_use = v.u, otp_timestamp = v.ts, last_nonce = v.n, "
    "last_used_at = $7, failures = 0, failures_since = NULL "
    "FROM v WHERE k.id = ANY($1::int[]) AND k.id = ANY(ARRAY(SELECT id FROM locked)) AND k.id = v.id "
    "AND k.deleted_at IS NULL AND k.status = ANY($6::varchar[]) AND (v.imp IS NULL OR k.import_id = v.imp) "
    "AND (k.blocked_until IS NULL OR k.blocked_until <= $7) "
    "AND (k.usage_ctr < v.c OR (k.usage_ctr = v.c AND k.session_use < v.u)) "
    "RETURNING k.id"
)
_PG_MATERIALS = (
    "SELECT id, serial, public_id, status, user_name, secret_sealed, kek_id, import_id FROM otp_yubikeys "
    "WHERE public_id = ANY($1::varchar[]) AND deleted_at IS NULL"
)
# SQLite: the same single statement over a JSON array, inside BEGIN IMMEDIATE. The unary `+` keeps the
# planner from driving the join by the status index (a scan of every key per batch row without ANALYZE
# statistics): the batch is the outer loop and each key is found by its primary key.
_SQLITE_CAS_BATCH = sa.text(
    "UPDATE otp_yubikeys SET usage_ctr = v.c, session_use = v.u, otp_timestamp = v.ts, last_nonce = v.n, "
    "last_used_at = :now, failures = 0, failures_since = NULL "
    "FROM (SELECT value ->> 0 AS id, value ->> 1 AS c, value ->> 2 AS u, value ->> 3 AS ts, value ->> 4 AS n, "
    "value ->> 5 AS imp FROM json_each(:batch)) AS v "
    "WHERE otp_yubikeys.id = v.id AND +otp_yubikeys.deleted_at IS NULL AND +otp_yubikeys.status IN :statuses "
    "AND (v.imp IS NULL OR otp_yubikeys.import_id = v.imp) "
    "AND (otp_yubikeys.blocked_until IS NULL OR otp_yubikeys.blocked_until <= :now) "
    "AND (otp_yubikeys.usage_ctr < v.c OR (otp_yubikeys.usage_ctr = v.c AND otp_yubikeys.session_use < v.u)) "
    "RETURNING otp_yubikeys.id"
).bindparams(
    sa.bindparam("statuses", expanding=True),
    sa.bindparam("now", type_=sa.DateTime(timezone=True)),
)


def _newer(ctr, use):
    """SQL: the stored pair is strictly lower than (ctr, use) (docs/otp.md "Counters")."""
    return sa.or_(k.c.usage_ctr < ctr, sa.and_(k.c.usage_ctr == ctr, k.c.session_use < use))


def _same_import(update: CounterUpdate) -> list:
    return [] if update.import_id is None else [k.c.import_id == update.import_id]


def _not_blocked(now):
    return sa.or_(k.c.blocked_until.is_(None), k.c.blocked_until <= now)


class OtpStore:
    """Storage of keys, events, clients and throttling state."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.is_postgresql = engine.dialect.name == "postgresql"
        self._writer = writer(engine)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def begin_write(self):
        """A write transaction (BEGIN IMMEDIATE on SQLite)."""
        return self._writer.begin()

    def counter_committer(self, clock, *, max_batch: int = 256,
                          max_inflight: int = 2) -> GroupCommit[tuple[CounterUpdate, tuple[str, ...]], bool]:
        """Group commit of compare-and-sets (docs/otp.md "Counters": one atomic CAS per OTP).

        An item is (update, accepted statuses); its result is True once the update is durably committed,
        False if the stored counters were not lower. A batch holds one update per key (a key is never in two
        batches in flight) and one set of statuses, so each compare-and-set is judged as if it ran alone."""
        async def flush(jobs: list[tuple[CounterUpdate, tuple[str, ...]]]) -> list[bool]:
            accepted = await self.compare_and_set_batch([u for u, _ in jobs], jobs[0][1], clock())
            return [u.key_id in accepted for u, _ in jobs]

        return GroupCommit(flush, key=lambda job: job[0].key_id, group=lambda job: job[1], max_batch=max_batch,
                           max_inflight=max_inflight, name="otp.counters")

    def material_loader(self, *, max_batch: int = 500,
                        max_inflight: int = 2) -> GroupCommit[str, "KeyMaterial | None"]:
        """Look-ups of live keys by public ID, many per query; identical queued look-ups share one answer,
        read by a query issued after each of them was asked."""
        async def flush(public_ids: list[str]) -> list[KeyMaterial | None]:
            found = await self.key_materials(public_ids)
            return [found.get(public_id) for public_id in public_ids]

        return GroupCommit(flush, key=lambda public_id: public_id, coalesce=True, max_batch=max_batch,
                           max_inflight=max_inflight, name="otp.keys")

    # ---- keys: verification -------------------------------------------------------------------

    async def key_state(self, key_id: int, conn: AsyncConnection | None = None, *,
                        for_update: bool = False) -> KeyState | None:
        """The current state of a key row (any row, deleted ones included)."""
        stmt = sa.select(*_STATE_COLS).where(k.c.id == key_id)
        if for_update and self.is_postgresql:
            stmt = stmt.with_for_update()
        if conn is None:
            async with self.engine.connect() as c:
                row = (await c.execute(stmt)).first()
        else:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        return KeyState(id=row.id, serial=row.serial, public_id=row.public_id, status=row.status,
                        user_name=row.user_name, deleted=row.deleted_at is not None, usage_ctr=row.usage_ctr,
                        session_use=row.session_use, last_nonce=row.last_nonce, failures=row.failures,
                        failures_since=aware(row.failures_since), blocked_until=aware(row.blocked_until),
                        import_id=row.import_id)

    async def key_materials(self, public_ids: Sequence[str]) -> dict[str, KeyMaterial]:
        """The live keys with these public IDs, by public ID."""
        if self.is_postgresql:
            async with self.engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                rows = await driver.fetch(_PG_MATERIALS, list(public_ids))
            return {r[2]: KeyMaterial(*r) for r in rows}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(*_MATERIAL_COLS).where(k.c.public_id.in_(list(public_ids)), k.c.deleted_at.is_(None)))
            return {r.public_id: KeyMaterial(*r) for r in rows}

    async def compare_and_set_batch(self, updates: Sequence[CounterUpdate], statuses: Sequence[str],
                                    now: datetime) -> set[int]:
        """Independent compare-and-sets (distinct keys) in one statement, durable on return; the accepted ids."""
        if not updates:
            return set()
        updates = sorted(updates, key=lambda u: u.key_id)
        if self.is_postgresql:
            async with self.engine.connect() as conn:
                # No statement goes through SQLAlchemy here, so it never opens a transaction: the
                # statement runs in asyncpg's autocommit and is committed when fetch() returns.
                driver = (await conn.get_raw_connection()).driver_connection
                rows = await driver.fetch(
                    _PG_CAS_BATCH, [u.key_id for u in updates], [u.usage_ctr for u in updates],
                    [u.session_use for u in updates], [u.otp_timestamp for u in updates],
                    [u.nonce for u in updates], list(statuses), now, [u.import_id for u in updates])
            return {r[0] for r in rows}
        batch = json.dumps([[u.key_id, u.usage_ctr, u.session_use, u.otp_timestamp, u.nonce, u.import_id]
                            for u in updates])
        async with self.begin_write() as conn:
            rows = await conn.execute(_SQLITE_CAS_BATCH, {"batch": batch, "statuses": list(statuses), "now": now})
            return {r[0] for r in rows}

    async def compare_and_set(self, conn: AsyncConnection, update: CounterUpdate, now: datetime, *,
                              user: str | None = None, enrol: bool = False) -> bool:
        """One compare-and-set inside the caller's transaction; with `enrol` it also assigns the key."""
        values: dict[str, Any] = dict(usage_ctr=update.usage_ctr, session_use=update.session_use,
                                      otp_timestamp=update.otp_timestamp, last_nonce=update.nonce,
                                      last_used_at=now, failures=0, failures_since=None)
        cond = [k.c.id == update.key_id, k.c.deleted_at.is_(None), _not_blocked(now),
                _newer(update.usage_ctr, update.session_use), *_same_import(update)]
        if enrol:
            cond.append(k.c.status == UNASSIGNED)
            values.update(status=ACTIVE, user_name=user, last_user=user, enrolled_at=now)
        elif user is not None:
            cond += [k.c.status == ACTIVE, k.c.user_name == user]
        res = await conn.execute(sa.update(k).where(*cond).values(**values))
        return res.rowcount == 1

    async def use_up(self, conn: AsyncConnection, update: CounterUpdate) -> None:
        """Move a key's counters past an OTP without accepting it (nor resetting its failures, nor counting a
        use), inside the caller's transaction: the OTP is a replay from now on. The last request's nonce is
        forgotten with the counters it went with: a request never made (this OTP with that nonce) must not be
        reported a replayed request."""
        await conn.execute(sa.update(k).where(k.c.id == update.key_id, _newer(update.usage_ctr, update.session_use),
                                              *_same_import(update))
                           .values(usage_ctr=update.usage_ctr, session_use=update.session_use,
                                   otp_timestamp=update.otp_timestamp, last_nonce=None))

    async def note_key_failure(self, conn: AsyncConnection, state: KeyState, now: datetime,
                               limits: ThrottleSettings) -> bool:
        """Count one failure against a key; True when this failure starts a block."""
        window_start = state.failures_since
        failures = state.failures
        if window_start is None or now - window_start > timedelta(seconds=limits.window_seconds):
            failures, window_start = 0, now
        failures += 1
        blocked = failures >= limits.max_failures
        await conn.execute(sa.update(k).where(k.c.id == state.id).values(
            failures=0 if blocked else failures, failures_since=None if blocked else window_start,
            blocked_until=now + timedelta(seconds=limits.lockout_seconds) if blocked else k.c.blocked_until))
        return blocked

    # ---- sources and clients: throttling -------------------------------------------------------

    async def note_throttle_failure(self, conn: AsyncConnection, subject: str, now: datetime,
                                    limits: ThrottleSettings) -> tuple[datetime | None, bool]:
        """Count one failure of `subject` in one statement, unless it is blocked already.

        Returns (blocked until, whether this failure started the block)."""
        t = otp_throttle
        ts = t.c.window_start.type
        now_p = sa.literal(now, ts)
        until = now + timedelta(seconds=limits.lockout_seconds)
        blocked = t.c.blocked_until > now_p
        # (evaluated when not blocked) the window is over, or a block ended: counting starts again
        fresh = sa.or_(t.c.window_start <= sa.literal(now - timedelta(seconds=limits.window_seconds), ts),
                       t.c.blocked_until.is_not(None))
        counted = sa.case((fresh, 1), else_=t.c.failures + 1)
        starts = counted >= limits.max_failures
        first_blocks = 1 >= limits.max_failures
        ins = (postgresql.insert(t) if self.is_postgresql else sqlite.insert(t)).values(
            subject=subject, failures=0 if first_blocks else 1, window_start=now,
            blocked_until=until if first_blocks else None)
        # a block starts with failures = 0; while it lasts, failures counts what came in meanwhile
        stmt = ins.on_conflict_do_update(index_elements=[t.c.subject], set_={
            "failures": sa.case((blocked, t.c.failures + 1), (starts, 0), else_=counted),
            "window_start": sa.case((blocked, t.c.window_start), (sa.or_(fresh, starts), now_p),
                                    else_=t.c.window_start),
            "blocked_until": sa.case((blocked, t.c.blocked_until), (starts, sa.literal(until, ts)),
                                     else_=sa.null()),
        }).returning(t.c.failures, t.c.blocked_until)
        failures, blocked_until = (await conn.execute(stmt)).one()
        blocked_until = aware(blocked_until)
        if blocked_until is None or blocked_until <= now:
            return None, False
        return blocked_until, failures == 0

    async def throttle_state(self, subject: str) -> tuple[int, datetime, datetime | None] | None:
        """(failures, window start, blocked until) of a source or client, None without recent failures."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(otp_throttle.c.failures, otp_throttle.c.window_start,
                                                otp_throttle.c.blocked_until)
                                      .where(otp_throttle.c.subject == subject))).first()
        return (row[0], aware(row[1]), aware(row[2])) if row else None

    async def prune(self, now: datetime, *, events_before: datetime, throttle_window: timedelta,
                    chunk: int = 5000) -> tuple[int, int]:
        """Delete security events older than `events_before` (in chunks, each its own transaction) and
        throttle rows whose window and block are over. Returns (events, throttle rows) deleted."""
        e = otp_events
        events = 0
        while True:
            ids = (sa.select(e.c.id).where(e.c.kind.in_(SECURITY_KINDS), e.c.at < events_before)
                   .limit(chunk).scalar_subquery())
            async with self.begin_write() as conn:
                n = (await conn.execute(sa.delete(e).where(e.c.id.in_(ids)))).rowcount
            events += n
            if n < chunk:
                break
        t = otp_throttle
        async with self.begin_write() as conn:
            rows = (await conn.execute(sa.delete(t).where(
                t.c.window_start < now - throttle_window,
                sa.or_(t.c.blocked_until.is_(None), t.c.blocked_until <= now)))).rowcount
        async with self.begin_write() as conn:
            await conn.execute(sa.delete(otp_verify_counts).where(otp_verify_counts.c.hour < events_before))
        return events, rows

    # ---- verification counts ------------------------------------------------------------------

    async def add_verify_counts(self, counts: dict[tuple[datetime, str, str], int]) -> None:
        """Add counts of verifications, keyed by (hour start, api, status), in one transaction."""
        if not counts:
            return
        t = otp_verify_counts
        insert = postgresql.insert if self.is_postgresql else sqlite.insert
        async with self.begin_write() as conn:
            for (hour, api, status), n in sorted(counts.items()):
                ins = insert(t).values(hour=hour, api=api, status=status, count=n)
                await conn.execute(ins.on_conflict_do_update(index_elements=[t.c.hour, t.c.api, t.c.status],
                                                             set_={"count": t.c.count + n}))

    async def verify_counts(self, since: datetime, until: datetime) -> list[tuple[datetime, str, str, int]]:
        """(hour start, api, status, count) of the hours from `since` (included) to `until` (excluded)."""
        t = otp_verify_counts
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(t.c.hour, t.c.api, t.c.status, t.c.count)
                                       .where(t.c.hour >= since, t.c.hour < until)
                                       .order_by(t.c.hour, t.c.api, t.c.status))).all()
        return [(aware(r.hour), r.api, r.status, int(r.count)) for r in rows]

    # ---- events -------------------------------------------------------------------------------

    @staticmethod
    async def add_event(conn: AsyncConnection, *, at: datetime, kind: str, key_id: int | None = None,
                        serial: int | None = None, public_id: str | None = None, user: str | None = None,
                        client_id: int | None = None, source: str | None = None, actor: str | None = None,
                        detail: dict[str, Any] | None = None) -> None:
        """Append one history or security event inside the caller's transaction.

        A security event of the same kind, from the same source, about the same key (or none) in the same minute
        only counts one more occurrence on the first one's row: hostile traffic cannot grow the table faster than
        that (the keys are the inventory's), and each key's history keeps the attempts against it."""
        values = dict(at=at, kind=kind, key_id=key_id, serial=serial, public_id=public_id, user_name=user,
                      client_id=client_id, source=source, actor=actor,
                      detail=json.dumps(detail or {}, sort_keys=True, default=str))
        if kind not in SECURITY_KINDS:
            await conn.execute(otp_events.insert().values(**values))
            return
        minute = at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M")
        values["dedup_key"] = f"{kind}|{key_id if key_id is not None else ''}|{minute}|{source or ''}"[:160]
        ins = (postgresql.insert(otp_events) if conn.dialect.name == "postgresql" else sqlite.insert(otp_events))
        await conn.execute(ins.values(**values).on_conflict_do_update(
            index_elements=[otp_events.c.dedup_key], set_={"occurrences": otp_events.c.occurrences + 1}))

    async def record_event(self, **fields: Any) -> None:
        """Append one event in its own transaction."""
        async with self.begin_write() as conn:
            await self.add_event(conn, **fields)

    async def events(self, *, kind_prefix: str | None = None, key_ids: Iterable[int] | None = None,
                     limit: int = 1000) -> list[dict[str, Any]]:
        """Events, oldest first, optionally by kind prefix or key."""
        e = otp_events
        stmt = sa.select(e).order_by(e.c.id)
        if kind_prefix:
            stmt = stmt.where(e.c.kind.startswith(kind_prefix))
        if key_ids is not None:
            stmt = stmt.where(e.c.key_id.in_(list(key_ids)))
        stmt = stmt.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        out = []
        for r in rows:
            d = dict(r)
            d["at"] = aware(d["at"])
            d["detail"] = json.loads(d["detail"] or "{}")
            out.append(d)
        return out

    # ---- import -------------------------------------------------------------------------------

    async def live_duplicates(self, serials: Sequence[int], public_ids: Sequence[str]) -> tuple[set[int], set[str]]:
        """Which of these serials and public IDs a live key already has."""
        found_serials: set[int] = set()
        found_ids: set[str] = set()
        chunk = 5000
        async with self.engine.connect() as conn:
            live = (await conn.execute(sa.select(sa.func.count()).select_from(k).where(
                k.c.deleted_at.is_(None)))).scalar_one()
            if live <= 4 * max(len(serials), len(public_ids)):
                # a large file against a comparable inventory: one scan beats thousands of IN lists
                rows = await conn.execute(sa.select(k.c.serial, k.c.public_id).where(k.c.deleted_at.is_(None)))
                wanted_serials, wanted_ids = set(serials), set(public_ids)
                for serial, public_id in rows:
                    if serial in wanted_serials:
                        found_serials.add(serial)
                    if public_id in wanted_ids:
                        found_ids.add(public_id)
                return found_serials, found_ids
            for i in range(0, len(serials), chunk):
                part = list(serials[i:i + chunk])
                rows = await conn.execute(sa.select(k.c.serial).where(k.c.deleted_at.is_(None), k.c.serial.in_(part)))
                found_serials.update(r[0] for r in rows)
            for i in range(0, len(public_ids), chunk):
                part = list(public_ids[i:i + chunk])
                rows = await conn.execute(
                    sa.select(k.c.public_id).where(k.c.deleted_at.is_(None), k.c.public_id.in_(part)))
                found_ids.update(r[0] for r in rows)
        return found_serials, found_ids

    _IMPORT_COLUMNS = ("serial", "public_id", "status", "secret_sealed", "kek_id", "import_id", "source_line",
                       "imported_at", "secret_sha256")

    async def insert_import(self, conn: AsyncConnection, *, at: datetime, actor: str | None, fmt: str,
                            file_sha256: str, keys: Sequence[NewKey], progress: "Progress | None" = None) -> int:
        """One import batch and its keys, inside the caller's transaction; the import id.

        The keys go in through the driver's bulk path (COPY on PostgreSQL, executemany on SQLite) in
        the same transaction: per-row parameter processing would dominate a 100,000-key import.
        A uniqueness violation is raised as SQLAlchemy's IntegrityError either way. The keys are written
        in chunks of INSERT_CHUNK, ``progress("write", keys written, keys)`` after each."""
        import_id = (await conn.execute(otp_imports.insert().values(
            at=at, actor=actor, format=fmt, key_count=len(keys), file_sha256=file_sha256
        ).returning(otp_imports.c.id))).scalar_one()
        dialect = conn.dialect
        if self.is_postgresql or self.is_sqlite:
            processor = k.c.imported_at.type.dialect_impl(dialect).bind_processor(dialect)
            at_db = processor(at) if processor else at
            records = [(n.serial, n.public_id, UNASSIGNED, n.secret_sealed, n.kek_id, import_id, n.source_line, at_db,
                        n.secret_sha256) for n in keys]
            driver = (await conn.get_raw_connection()).driver_connection
            marks = ", ".join("?" * len(self._IMPORT_COLUMNS))
            insert = f"INSERT INTO {k.name} ({', '.join(self._IMPORT_COLUMNS)}) VALUES ({marks})"
            for i in range(0, len(records), INSERT_CHUNK):
                part = records[i:i + INSERT_CHUNK]
                try:
                    if self.is_postgresql:
                        await driver.copy_records_to_table(k.name, records=part, columns=self._IMPORT_COLUMNS)
                    else:
                        await driver.executemany(insert, part)
                except (asyncpg.IntegrityConstraintViolationError, sqlite3.IntegrityError) as exc:
                    raise IntegrityError(f"bulk insert into {k.name}", None, exc) from exc
                report(progress, "write", i + len(part), len(records))
            return import_id
        rows = [dict(serial=n.serial, public_id=n.public_id, status=UNASSIGNED, secret_sealed=n.secret_sealed,
                     kek_id=n.kek_id, import_id=import_id, source_line=n.source_line, imported_at=at,
                     secret_sha256=n.secret_sha256) for n in keys]
        chunk = 2000
        for i in range(0, len(rows), chunk):
            await conn.execute(k.insert(), rows[i:i + chunk])
            report(progress, "write", i + len(rows[i:i + chunk]), len(rows))
        return import_id

    @staticmethod
    async def recorded_kek_id(conn: AsyncConnection) -> str | None:
        """The KEK id the last rotation recorded (otp/rekey.py), inside the caller's transaction; None before any.

        Read after a transaction's own writes to the keys or clients: on PostgreSQL a rotation either waited for
        them (its table lock) and re-seals them, or committed first and this read sees its record."""
        return (await conn.execute(sa.select(otp_kek.c.kek_id).where(otp_kek.c.id == 1))).scalar_one_or_none()

    @staticmethod
    async def carry_counters(conn: AsyncConnection, import_id: int) -> int:
        """Keys of import `import_id` whose secrets an earlier row of the same serial and public ID had (deleted,
        revoked, or wiped) start at the highest counters those rows reached: an OTP answered before the key was
        deleted is a replay after it is imported again. Inside the import's transaction; the keys carried."""
        old = k.alias("old")
        # a live row of the same serial cannot exist beside the new one: only deleted rows count
        used = (sa.select(old.c.id).where(old.c.deleted_at.is_not(None), old.c.secret_sha256.is_not(None),
                                          old.c.usage_ctr >= 0).limit(1))
        if (await conn.execute(used)).first() is None:  # the usual case: one read, nothing to carry
            return 0
        same = sa.and_(old.c.serial == k.c.serial, old.c.public_id == k.c.public_id, old.c.deleted_at.is_not(None),
                       old.c.secret_sha256 == k.c.secret_sha256, old.c.usage_ctr >= 0)
        packed = sa.select(sa.func.max(old.c.usage_ctr * 256 + old.c.session_use)).where(same).scalar_subquery()
        res = await conn.execute(sa.update(k).where(k.c.import_id == import_id, sa.exists().where(same))
                                 .values(usage_ctr=packed // 256, session_use=packed % 256))
        return res.rowcount or 0

    async def analyze(self) -> None:
        """Refresh the planner's statistics after a bulk import (PostgreSQL), so look-ups use the primary key."""
        if self.is_postgresql:
            async with self._autocommit.connect() as conn:
                await conn.execute(sa.text("ANALYZE otp_yubikeys"))

    # ---- lifecycle ----------------------------------------------------------------------------

    async def live_key_by_serial(self, conn: AsyncConnection, serial: int) -> KeyState | None:
        row = (await conn.execute(sa.select(k.c.id).where(k.c.serial == serial, k.c.deleted_at.is_(None)))).first()
        return await self.key_state(row[0], conn, for_update=True) if row else None

    async def revoke(self, conn: AsyncConnection, key_id: int, now: datetime) -> None:
        """REVOKED, user association removed, secrets wiped: the key never verifies again."""
        await conn.execute(sa.update(k).where(k.c.id == key_id).values(
            status=REVOKED, user_name=None, revoked_at=now, secret_sealed=b""))

    async def soft_delete(self, conn: AsyncConnection, key_id: int, now: datetime) -> None:
        """Take an ever-assigned key out of the inventory; the row stays for the report."""
        await conn.execute(sa.update(k).where(k.c.id == key_id).values(deleted_at=now, secret_sealed=b""))

    async def hard_delete(self, conn: AsyncConnection, key_id: int) -> None:
        await conn.execute(sa.delete(k).where(k.c.id == key_id))

    async def delete_factor(self, conn: AsyncConnection, now: datetime, actor: str | None) -> tuple[int, int]:
        """Every live key out: never-used unassigned ones removed, the others revoked (if active) and marked deleted,
        their counters kept.

        The live rows are locked as they are read (FOR UPDATE on PostgreSQL; SQLite's write transaction already
        excludes every other writer) and the writes name those rows by id, classified by that read: a first use
        running meanwhile waits for the commit and then finds its key gone, rather than enrolling a key that a
        later statement no longer matches."""
        stmt = (sa.select(k.c.id, k.c.serial, k.c.public_id, k.c.status, k.c.user_name, k.c.usage_ctr)
                .where(k.c.deleted_at.is_(None)).order_by(k.c.id))
        if self.is_postgresql:
            stmt = stmt.with_for_update()
        live = (await conn.execute(stmt)).all()
        unassigned = [r for r in live if r.status == UNASSIGNED and r.usage_ctr < 0]
        kept = [r for r in live if not (r.status == UNASSIGNED and r.usage_ctr < 0)]
        if kept:
            events = [dict(at=now, kind="otp.key.deleted", key_id=r.id, serial=r.serial, public_id=r.public_id,
                           user_name=r.user_name, actor=actor,
                           detail=json.dumps({"by": "delete-factor", "status_before": r.status}, sort_keys=True))
                      for r in kept]
            for i in range(0, len(events), 2000):
                await conn.execute(otp_events.insert(), events[i:i + 2000])
            for part in _chunks([r.id for r in kept if r.status == ACTIVE]):
                await conn.execute(sa.update(k).where(k.c.id.in_(part)).values(
                    status=REVOKED, user_name=None, revoked_at=now))
            for part in _chunks([r.id for r in kept]):
                await conn.execute(sa.update(k).where(k.c.id.in_(part)).values(deleted_at=now, secret_sealed=b""))
        for part in _chunks([r.id for r in unassigned]):
            await conn.execute(sa.delete(k).where(k.c.id.in_(part)))
        return len(unassigned), len(kept)

    # ---- report -------------------------------------------------------------------------------

    async def report_rows(self, where: Sequence[Any], limit: int | None = None,
                          after: tuple | None = None) -> list[dict[str, Any]]:
        """Report rows by serial, then row id (REPORT_KEY): the first `limit` after the key `after`
        (an index range of ix_otp_yubikeys_serial_id)."""
        cols = [k.c.id, k.c.serial, k.c.public_id, k.c.status, k.c.user_name, k.c.last_user, k.c.imported_at,
                k.c.enrolled_at, k.c.revoked_at, k.c.deleted_at, k.c.last_used_at, k.c.usage_ctr, k.c.session_use,
                k.c.blocked_until, k.c.import_id, otp_imports.c.format, otp_imports.c.actor]
        key = [k.c.serial, k.c.id]
        stmt = (sa.select(*cols).select_from(k.join(otp_imports, otp_imports.c.id == k.c.import_id))
                .where(*where, paging.after(key, after)).order_by(*paging.order(key)))
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        out = []
        for r in rows:
            d = dict(r)
            for name in ("imported_at", "enrolled_at", "revoked_at", "deleted_at", "last_used_at", "blocked_until"):
                d[name] = aware(d[name])
            out.append(d)
        return out

    async def status_counts(self, where: Sequence[Any]) -> dict[str, int]:
        """How many keys matching `where` each status has (every status named, zeros included)."""
        stmt = sa.select(k.c.status, sa.func.count()).where(*where).group_by(k.c.status)
        async with self.engine.connect() as conn:
            found = {status: n for status, n in (await conn.execute(stmt)).all()}
        return {status: int(found.get(status, 0)) for status in (UNASSIGNED, ACTIVE, REVOKED)}

    async def history(self, key_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {i: [] for i in key_ids}
        e = otp_events
        async with self.engine.connect() as conn:
            for i in range(0, len(key_ids), 5000):
                part = list(key_ids[i:i + 5000])
                rows = await conn.execute(sa.select(e.c.key_id, e.c.at, e.c.kind, e.c.user_name, e.c.actor,
                                                    e.c.client_id, e.c.source, e.c.detail, e.c.occurrences)
                                          .where(e.c.key_id.in_(part)).order_by(e.c.id))
                for r in rows:
                    out[r.key_id].append({"at": aware(r.at), "event": r.kind, "user": r.user_name, "actor": r.actor,
                                          "client_id": r.client_id, "source": r.source,
                                          "detail": json.loads(r.detail or "{}"), "occurrences": r.occurrences})
        return out

    # ---- API clients --------------------------------------------------------------------------

    async def add_client(self, conn: AsyncConnection, name: str, now: datetime, *, allow_unsigned: bool = False) -> int:
        return (await conn.execute(otp_clients.insert().values(
            name=name, secret_sealed=b"", kek_id="", created_at=now, allow_unsigned=allow_unsigned
        ).returning(otp_clients.c.id))).scalar_one()

    async def set_client_unsigned(self, conn: AsyncConnection, client_id: int, allow: bool) -> bool:
        res = await conn.execute(sa.update(otp_clients).where(otp_clients.c.id == client_id).values(
            allow_unsigned=allow))
        return res.rowcount == 1

    async def set_client_secret(self, conn: AsyncConnection, client_id: int, sealed: bytes, kek_id: str) -> None:
        await conn.execute(sa.update(otp_clients).where(otp_clients.c.id == client_id).values(
            secret_sealed=sealed, kek_id=kek_id))

    async def client(self, client_id: int) -> ClientRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(otp_clients).where(otp_clients.c.id == client_id))).first()
        return _client_row(row) if row else None

    async def clients(self, page: PageRequest) -> Page[ClientRow]:
        """One page of the API clients by id (CLIENT_LIST_KEY; docs/api.md "Pagination")."""
        key = [otp_clients.c.id]
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(otp_clients).where(paging.after(key, page.after))
                                       .order_by(*paging.order(key)).limit(page.limit + 1))).all()
        return paging.take([_client_row(r) for r in rows], page.limit, key=lambda r: (r.id,))

    async def disable_client(self, client_id: int, now: datetime) -> bool:
        async with self.begin_write() as conn:
            res = await conn.execute(sa.update(otp_clients).where(
                otp_clients.c.id == client_id, otp_clients.c.disabled_at.is_(None)).values(disabled_at=now))
            return res.rowcount == 1


def _chunks(ids: list[int], size: int = 5000) -> list[list[int]]:
    """`ids` in slices small enough for one statement's parameters."""
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _client_row(row) -> ClientRow:
    return ClientRow(id=row.id, name=row.name, secret_sealed=row.secret_sealed, kek_id=row.kek_id,
                     created_at=aware(row.created_at), disabled_at=aware(row.disabled_at),
                     allow_unsigned=bool(row.allow_unsigned))

