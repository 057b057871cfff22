"""The enrolment repository on SQLAlchemy: PostgreSQL (asyncpg statements compiled once, one round trip per
lookup and per issued certificate) and SQLite (raw sqlite3 connections used from the service's worker threads,
writers queued on a lock and BEGIN IMMEDIATE)."""
from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import sqlite3
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustkit import batching
from trustkit.clock import aware
from trustkit.db import is_sqlite, sqlite_pragmas, writer

from ..binding.tables import device_certs, devices
from ..ca import inventory
from ..ca.inventory import CertRecord, Reason
from ..ca.revocation import change_status, lock_status
from ..ca.status import CertStatus
from ..profilemodel import StaticSecrets
from ..profiles import STATIC_SECRETS
from ..scep.message import without_challenge_password
from ..store.events import record_event
from ..store.tables import certificates, events, profiles, renewal_refusals, scep_transactions
from .model import NOT_LOOKED_UP
from .repository import (RENEWAL_REFUSALS_PER_SIGNER, Binding, DeviceTakenDown, Duplicate, NotPending,
                         SignerStanding, signer_changed, signer_renewed)

_FIND_TRANSACTION = sa.select(scep_transactions).where(
    scep_transactions.c.profile == sa.bindparam("profile"),
    scep_transactions.c.transaction_id == sa.bindparam("transaction_id"))


_REFUSED_BEFORE = sa.select(sa.literal(1)).where(renewal_refusals.c.signer_serial == sa.bindparam("serial"),
                                                 renewal_refusals.c.request_sha256 == sa.bindparam("sha"))


async def in_executor(executor: ThreadPoolExecutor | None, fn, /, *args, **kwargs):
    """``asyncio.to_thread`` on a given executor: the call runs in a copy of the caller's context."""
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(ctx.run, fn, *args, **kwargs))


def _event_row(*, at: datetime, kind: str, subject: str, actor: str, data: dict) -> dict:
    """An audit event row, as store.events.record_event writes it."""
    return {"at": at, "kind": kind, "subject": subject, "actor": actor,
            "data": json.dumps(data, sort_keys=True, default=str)}


def _record_statements(cert_row: dict, tx_row: dict, event_row: dict, *, one_statement: bool) -> list:
    """The inserts of an issued certificate: certificate, transaction, audit event.

    ``one_statement`` (PostgreSQL): WITH c AS (INSERT certificate), t AS (INSERT transaction) INSERT event,
    atomic by itself and one round trip.
    """
    def values(table: sa.Table, row: dict, prefix: str) -> dict:
        return {k: sa.bindparam(prefix + k, type_=table.c[k].type) for k in row}

    inserts = [(certificates, cert_row, "c_"), (scep_transactions, tx_row, "t_"), (events, event_row, "e_")]
    if not one_statement:
        return [table.insert().values(values(table, row, prefix)) for table, row, prefix in inserts]
    c, t = (table.insert().values(values(table, row, prefix)).cte(prefix[0]) for table, row, prefix in inserts[:2])
    return [events.insert().values(values(events, event_row, "e_")).add_cte(c).add_cte(t)]


def _guarded_record_statement(cert_row: dict, tx_row: dict, event_row: dict):
    """PostgreSQL, for a certificate issued for a device: the three inserts of _record_statements in one statement
    that first holds the device's row (FOR SHARE, as _guard_device does) and inserts nothing unless the device is
    active or not registered. RETURNING says whether it wrote (one row) or not (none)."""
    d = _DEVICE_STATUS.with_for_update(read=True).cte("d")
    ok = sa.select(sa.literal_column("1").label("one")).where(~sa.exists(
        sa.select(sa.literal_column("1")).select_from(d).where(d.c.status != sa.literal_column("'active'")))).cte("ok")

    def insert(table: sa.Table, row: dict, prefix: str):
        names = list(row)
        chosen = sa.select(*[sa.bindparam(prefix + k, type_=table.c[k].type) for k in names]).select_from(ok)
        return table.insert().from_select(names, chosen)

    c = insert(certificates, cert_row, "c_").cte("c")
    t = insert(scep_transactions, tx_row, "t_").cte("t")
    return insert(events, event_row, "e_").add_cte(d).add_cte(ok).add_cte(c).add_cte(t).returning(events.c.id)


def _record_params(cert_row: dict, tx_row: dict, event_row: dict) -> dict:
    return {**{"c_" + k: v for k, v in cert_row.items()}, **{"t_" + k: v for k, v in tx_row.items()},
            **{"e_" + k: v for k, v in event_row.items()}}


class _Compiled:
    """A Core statement compiled once for a dialect, executed on the driver connection.

    The enrolment path runs the same three or four statements for every request; SQLAlchemy's per-execution
    work (cache key, execution context, result wrapping) costs more CPU than the database itself does here.
    """

    def __init__(self, stmt, dialect, columns: list[sa.Column] | None = None):
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        names = compiled.positiontup or []
        self._binds = [(name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                       for name in names]
        self._columns = [(c.name, c.type.dialect_impl(dialect).result_processor(dialect, None)) for c in columns or ()]

    def params(self, values: dict) -> tuple:
        return tuple(proc(values[name]) if proc else values[name] for name, proc in self._binds)

    def row(self, raw) -> dict | None:
        if raw is None:
            return None
        return {name: proc(v) if proc else v for (name, proc), v in zip(self._columns, raw)}


def _tx_where(profile: str, key: str, *states: str):
    c = scep_transactions.c
    where = [c.profile == profile, c.transaction_id == key]
    if states:
        where.append(c.state == states[0])
    return where


_DEVICE_STATUS = sa.select(devices.c.status).where(devices.c.id == sa.bindparam("device_id"))
# a certificate for the key revoked as compromised, or NULL (ix_certificates_public_key: one index probe); every
# parameter named, as _Compiled binds them by name
_COMPROMISED = sa.select(sa.func.min(certificates.c.serial)).where(
    certificates.c.public_key_sha256 == sa.bindparam("public_key_sha256"),
    certificates.c.status == sa.bindparam("revoked"), certificates.c.revocation_reason == sa.bindparam("reason"))


_TX_ID_INDEX = list(scep_transactions.columns).index(scep_transactions.c.transaction_id)


def _compromised_params(public_key_sha256: str) -> dict:
    return {"public_key_sha256": public_key_sha256, "revoked": "revoked", "reason": int(Reason.KEY_COMPROMISE)}


async def _guard_device(conn: AsyncConnection, device_id: str | None) -> None:
    """Within the caller's write transaction, before anything is written: the device a certificate is issued for
    is still active (or not registered). On PostgreSQL its row is held (FOR SHARE) until the commit, so a device
    change waits for the certificate and then holds or revokes it; SQLite's writers run one at a time."""
    if device_id is None:
        return
    query = _DEVICE_STATUS.with_for_update(read=True) if conn.dialect.name == "postgresql" else _DEVICE_STATUS
    status = (await conn.execute(query, {"device_id": device_id})).scalar()
    if status is not None and status != "active":
        raise DeviceTakenDown(device_id, status)


async def _forget_challenge(conn: AsyncConnection, profile: str, key: str) -> None:
    """A decided transaction keeps its CSR without the challengePassword (it waited with it: an approval checks
    the CSR's signature again, a delegated acknowledgement tells the MDM the CSR it validated)."""
    c = scep_transactions.c
    kept = (await conn.execute(sa.select(c.csr_der).where(*_tx_where(profile, key)))).scalar()
    if kept is not None and (masked := without_challenge_password(kept)) != kept:
        await conn.execute(scep_transactions.update().where(*_tx_where(profile, key)).values(csr_der=masked))


class SqlRepository:
    """Every operation through SQLAlchemy on the async engine (any database); the subclasses speed up the
    lookup and the record of a plain issue, which every enrolment runs."""

    inline = False

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def prepare(self) -> None:
        return None

    async def find(self, profile: str, key: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_FIND_TRANSACTION, {"profile": profile, "transaction_id": key})).first()
        return dict(row._mapping) if row is not None else None

    async def record(self, cert_row: dict, tx_row: dict, event: dict) -> None:
        await self.record_guarded(cert_row, tx_row, event, renewal_of=None, now=cert_row["issued_at"],
                                  supersede=False)

    async def record_guarded(self, cert_row: dict, tx_row: dict, event: dict, *, renewal_of: str | None,
                             now: datetime, supersede: bool) -> None:
        try:
            async with writer(self.engine).begin() as conn:
                await _guard_device(conn, cert_row.get("enrolled_device_id"))
                if renewal_of is not None:
                    await self._guard_signer(conn, renewal_of, now, supersede=supersede)
                await conn.execute(certificates.insert(), cert_row)
                await conn.execute(scep_transactions.insert(), tx_row)
                await record_event(conn, **event)
        except IntegrityError as exc:
            raise Duplicate(str(exc.orig)) from exc

    @staticmethod
    async def _guard_signer(conn: AsyncConnection, serial: str, now: datetime, *, supersede: bool,
                            renewing: bool = True) -> None:
        """Within the caller's transaction: the signer must still be ``valid`` (and is revoked as superseded when
        ``supersede``, with no event of its own: the renewal's event covers it); the update locks its row, so a
        concurrent hold either waits for us or wins. A signer that stays valid (``renewing``: a renewal about to
        be recorded) must be renewed by no certificate that is not revoked: concurrent renewals of one
        certificate wait for each other on its row, and the later one sees the earlier's."""
        if supersede:
            ok = await change_status(conn, serial, CertStatus.REVOKED, at=now, actor="scep:renewal",
                                     reason=Reason.SUPERSEDED, expect=CertStatus.VALID, record=False) is not None
        else:
            ok = await lock_status(conn, serial, expect=CertStatus.VALID, at=now)
        if not ok:
            current = (await conn.execute(sa.select(certificates.c.status).where(
                certificates.c.serial == serial))).first()
            raise signer_changed(current.status if current is not None else None)
        if renewing and not supersede:
            successor = (await conn.execute(sa.select(certificates.c.serial).where(
                certificates.c.renewal_of == serial, certificates.c.status != "revoked").limit(1))).first()
            if successor is not None:
                raise signer_renewed(successor.serial)

    async def insert_transaction(self, tx_row: dict) -> dict | None:
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(scep_transactions.insert().values(tx_row))
        except IntegrityError:
            return await self.find(tx_row["profile"], tx_row["transaction_id"])
        return None

    async def certificate(self, serial: str) -> CertRecord | None:
        async with self.engine.connect() as conn:
            return await inventory.get(conn, serial)

    async def signer_standing(self, fingerprint_sha256: str) -> SignerStanding | None:
        async with self.engine.connect() as conn:
            record = await inventory.get_by_fingerprint(conn, fingerprint_sha256)
            if record is None:
                return None
            successor = (await conn.execute(sa.select(certificates.c.serial).where(
                certificates.c.renewal_of == record.serial, certificates.c.status != "revoked").limit(1))).first()
            binding = (await conn.execute(
                sa.select(device_certs.c.state, device_certs.c.device_id, devices.c.status)
                .join(devices, devices.c.id == device_certs.c.device_id)
                .where(device_certs.c.ca == record.ca, device_certs.c.serial == record.serial,
                       device_certs.c.external.is_(False)))).first()  # ours: never a customer CA's of that name
            if binding is None and record.enrolled_device_id:
                named = (await conn.execute(sa.select(devices.c.status).where(
                    devices.c.id == record.enrolled_device_id))).first()
                if named is not None:
                    binding = ("active", record.enrolled_device_id, named.status)
        return SignerStanding(record=record, successor=successor.serial if successor is not None else None,
                              binding=Binding(*binding) if binding is not None else None)

    async def valid_serials_for_key(self, profile: str, public_key_sha256: str, now: datetime) -> list[str]:
        c = certificates.c
        async with self.engine.connect() as conn:
            return list((await conn.execute(sa.select(c.serial).where(
                c.profile == profile, c.public_key_sha256 == public_key_sha256, c.status == "valid",
                c.not_after > now).limit(10))).scalars().all())

    async def key_enrolled(self, profile: str, public_key_sha256: str) -> bool:
        t, c = scep_transactions.c, certificates.c
        async with self.engine.connect() as conn:  # index lookups: ix_scep_transactions_key, ix_certificates_public_key
            for stmt in (sa.select(sa.literal(1)).where(t.public_key_sha256 == public_key_sha256, t.profile == profile),
                         sa.select(sa.literal(1)).where(c.public_key_sha256 == public_key_sha256, c.profile == profile)):
                if (await conn.execute(stmt.limit(1))).first() is not None:
                    return True
        return False

    async def compromised_key(self, public_key_sha256: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(_COMPROMISED, _compromised_params(public_key_sha256))).scalar()

    async def find_with_compromised(self, profile: str, key: str,
                                    public_key_sha256: str) -> tuple[dict | None, str | None]:
        return await self.find(profile, key), await self.compromised_key(public_key_sha256)

    async def renewal_refused_before(self, signer_serial: str, request_sha256: str) -> bool:
        async with self.engine.connect() as conn:  # one lookup by the primary key
            return (await conn.execute(_REFUSED_BEFORE, {"serial": signer_serial, "sha": request_sha256})).first() \
                is not None

    async def remember_refused_renewal(self, signer_serial: str, request_sha256: str, *, signer_not_after: datetime,
                                       now: datetime) -> None:
        r = renewal_refusals.c
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(renewal_refusals.insert().values(
                    signer_serial=signer_serial, request_sha256=request_sha256, refused_at=now,
                    signer_not_after=signer_not_after))
                await conn.execute(renewal_refusals.delete().where(r.signer_not_after <= now))
                newest = (sa.select(r.request_sha256)
                          .where(r.signer_serial == signer_serial, r.request_sha256 != request_sha256)
                          .order_by(r.refused_at.desc(), r.request_sha256.desc())
                          .limit(RENEWAL_REFUSALS_PER_SIGNER - 1))
                await conn.execute(renewal_refusals.delete().where(
                    r.signer_serial == signer_serial, r.request_sha256 != request_sha256,
                    r.request_sha256.not_in(newest)))
        except IntegrityError:  # remembered already (the same request refused twice at once)
            pass

    async def record_event(self, event: dict) -> None:
        async with writer(self.engine).begin() as conn:
            await record_event(conn, **event)

    async def approve(self, profile: str, key: str, cert_row: dict, event: dict, *, renewal_of: str | None,
                      now: datetime, supersede: bool, actor: str) -> None:
        async with writer(self.engine).begin() as conn:
            await _guard_device(conn, cert_row.get("enrolled_device_id"))
            if renewal_of is not None:
                await self._guard_signer(conn, renewal_of, now, supersede=supersede)
            await conn.execute(certificates.insert().values(cert_row))
            res = await conn.execute(scep_transactions.update().where(*_tx_where(profile, key, "pending")).values(
                state="issued", serial=cert_row["serial"], decided_by=actor, updated_at=now))
            if res.rowcount != 1:  # rolls the certificate back too
                raise NotPending(key)
            await _forget_challenge(conn, profile, key)
            await record_event(conn, **event)

    async def reject_pending(self, profile: str, key: str, fail_text: str, event: dict, *, actor: str,
                             now: datetime) -> None:
        async with writer(self.engine).begin() as conn:
            res = await conn.execute(scep_transactions.update().where(*_tx_where(profile, key, "pending")).values(
                state="rejected", fail_text=fail_text, decided_by=actor, updated_at=now))
            if res.rowcount != 1:
                raise NotPending(key)
            await _forget_challenge(conn, profile, key)
            await record_event(conn, **event)

    async def pending_profiles(self) -> list[str]:
        c = scep_transactions.c  # an index range of ix_scep_transactions_state_created
        async with self.engine.connect() as conn:
            return list((await conn.execute(sa.select(c.profile).where(c.state == "pending").distinct())).scalars())

    async def pending_before(self, profile: str, created_before: datetime, *, limit: int) -> list[dict]:
        c = scep_transactions.c
        q = (sa.select(c.transaction_id, c.created_at)
             .where(c.state == "pending", c.profile == profile, c.created_at <= created_before)
             .order_by(c.created_at, c.transaction_id).limit(limit))
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(q)).all()]

    async def withdraw(self, serial: str, profile: str, key: str, why: str, event: dict, *, now: datetime) -> None:
        async with writer(self.engine).begin() as conn:
            await change_status(conn, serial, CertStatus.REVOKED, at=now, actor=event["actor"],
                                reason=Reason.CESSATION_OF_OPERATION, data=event["data"])
            await conn.execute(scep_transactions.update().where(*_tx_where(profile, key)).values(
                state="rejected", fail_text=why, updated_at=now))
            await _forget_challenge(conn, profile, key)

    async def confirm_ack(self, profile: str, key: str, *, renewal_of: str | None, now: datetime,
                          supersede: bool) -> None:
        async with writer(self.engine).begin() as conn:
            if renewal_of is not None:  # its own certificate renews the signer: no other must
                await self._guard_signer(conn, renewal_of, now, supersede=supersede, renewing=False)
            res = await conn.execute(scep_transactions.update().where(
                *_tx_where(profile, key, "awaiting_ack")).values(state="issued", updated_at=now))
            if res.rowcount != 1:
                raise NotPending(key)  # rolls the supersede back too
            await _forget_challenge(conn, profile, key)

    async def awaiting_ack(self, updated_before: datetime) -> list[dict]:
        q = (sa.select(scep_transactions.c.profile, scep_transactions.c.transaction_id, scep_transactions.c.serial,
                       scep_transactions.c.csr_der, scep_transactions.c.updated_at, certificates.c.der,
                       certificates.c.ca, certificates.c.transaction_id.label("raw_txid"), certificates.c.renewal_of)
             .join(certificates, certificates.c.serial == scep_transactions.c.serial)
             .where(scep_transactions.c.state == "awaiting_ack", scep_transactions.c.updated_at <= updated_before)
             .limit(1000))
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(q)).all()]

    async def claim(self, row: dict, now: datetime) -> bool:
        async with writer(self.engine).begin() as conn:
            claimed = await conn.execute(scep_transactions.update().where(
                *_tx_where(row["profile"], row["transaction_id"], "awaiting_ack"),
                scep_transactions.c.updated_at == row["updated_at"]).values(updated_at=now))
        return claimed.rowcount == 1


class PostgresRepository(SqlRepository):
    """Lookup and record through asyncpg directly, one round trip each."""

    def __init__(self, engine: AsyncEngine):
        super().__init__(engine)
        self._find: _Compiled | None = None
        self._record: _Compiled | None = None
        self._device: _Compiled | None = None
        self._find_both: _Compiled | None = None
        self._guarded: _Compiled | None = None

    async def find_with_compromised(self, profile: str, key: str,
                                    public_key_sha256: str) -> tuple[dict | None, str | None]:
        """find() and compromised_key() in one statement, one round trip (checks.Replay asks both)."""
        if self._find_both is None:
            t = scep_transactions
            one = sa.select(sa.literal_column("1").label("one")).subquery()
            stmt = sa.select(_COMPROMISED.scalar_subquery().label("compromised"), *t.columns).select_from(
                one.outerjoin(t, sa.and_(t.c.profile == sa.bindparam("profile"),
                                         t.c.transaction_id == sa.bindparam("transaction_id"))))
            self._find_both = _Compiled(stmt, self.engine.dialect, list(t.columns))
        params = {"profile": profile, "transaction_id": key, **_compromised_params(public_key_sha256)}
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            raw = await driver.fetchrow(self._find_both.sql, *self._find_both.params(params))
        values = tuple(raw)
        found = self._find_both.row(values[1:]) if values[1 + _TX_ID_INDEX] is not None else None
        return found, values[0]

    async def find(self, profile: str, key: str) -> dict | None:
        params = {"profile": profile, "transaction_id": key}
        if self._find is None:
            self._find = _Compiled(_FIND_TRANSACTION, self.engine.dialect, list(scep_transactions.columns))
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            return self._find.row(await driver.fetchrow(self._find.sql, *self._find.params(params)))

    async def record(self, cert_row: dict, tx_row: dict, event: dict) -> None:
        """Insert the certificate, its transaction and the audit event in one statement; for a certificate issued
        for a device, one that first holds the device's row and writes nothing unless it is active
        (_guarded_record_statement)."""
        import asyncpg

        event_row = _event_row(**event)
        if self._record is None:
            stmt, = _record_statements(cert_row, tx_row, event_row, one_statement=True)
            self._record = _Compiled(stmt, self.engine.dialect)
            self._guarded = _Compiled(_guarded_record_statement(cert_row, tx_row, event_row), self.engine.dialect)
            self._device = _Compiled(_DEVICE_STATUS, self.engine.dialect)
        device_id = cert_row.get("enrolled_device_id")
        values = _record_params(cert_row, tx_row, event_row)
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            try:  # no transaction is open on the connection: the statement commits by itself, one round trip
                if device_id is None:
                    await driver.execute(self._record.sql, *self._record.params(values))
                    return
                assert self._guarded is not None and self._device is not None
                if not await driver.fetch(self._guarded.sql, *self._guarded.params({**values, "device_id": device_id})):
                    status = await driver.fetchval(self._device.sql, *self._device.params({"device_id": device_id}))
                    raise DeviceTakenDown(device_id, status if status not in (None, "active") else "no longer active")
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise Duplicate(str(exc)) from exc


_MAX_GROUP = 64  # writes carried by one commit at most


class _QueuedWrite:
    __slots__ = ("params", "done", "error")

    def __init__(self, params: dict) -> None:
        self.params = params
        self.done = False
        self.error: BaseException | None = None


class SqliteRepository(SqlRepository):
    """Lookup and record of a plain issue on synchronous SQLite connections, called from the enrolment's worker
    threads (the rest as SqlRepository).

    aiosqlite hands every driver call (cursor, execute, fetch, close, BEGIN, COMMIT) to its connection thread
    and back, a dozen handoffs per enrolment. Here the lookup runs inside the thread that parses and decrypts
    the request, and the write inside the thread that signs the certificate: no handoff of its own. Writers
    of one process queue on a lock rather than in SQLite's busy handler, which polls with sleeps, and the
    writes queued meanwhile share one durable commit (record_sync).
    """

    inline = True

    def __init__(self, engine: AsyncEngine):
        super().__init__(engine)
        self.executor: ThreadPoolExecutor | None = None  # the SCEP service's (None: the loop's default)
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_QueuedWrite] = []
        self._find: _Compiled | None = None
        self._secrets: _Compiled | None = None
        self._record: list[_Compiled] = []
        self._device: _Compiled | None = None
        self._compromised: _Compiled | None = None
        # one connection per worker thread, kept: a pool's checkout and reset on return cost more than the lookup
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._synchronous = "FULL"

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (made on first use, with the engines' pragmas; closed with the repository)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.engine.url.database, timeout=30, isolation_level=None, check_same_thread=False)
            sqlite_pragmas(db, self._synchronous)
            # a write's savepoint journal (see _commit_group) holds the original of every page the write changes,
            # a leaf of each table and index: more than the 64 KiB SQLite keeps in memory, so with temporary
            # storage on disk each commit created, wrote and deleted a file. These connections run only lookups
            # by key and single-row inserts: nothing else of theirs is temporary.
            db.execute("PRAGMA temp_store=MEMORY")
            self._local.db = db
            self._connections.append(db)
        elif db.in_transaction:  # never left open by the code below; a connection is never handed on half-done
            db.execute("ROLLBACK")
        return db

    async def prepare(self) -> None:
        if self._find is not None:
            return
        # the durability the async engine was configured with (PRAGMA synchronous: 0 OFF .. 3 EXTRA)
        async with self.engine.connect() as conn:
            level = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
        if self._find is None:
            self._synchronous = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, "FULL")
            # the statements are compiled for the engine's dialect (SQLite's, qmark) and run on the threads' own
            # sqlite3 connections (_db)
            self._secrets = _Compiled(STATIC_SECRETS, self.engine.dialect, [
                profiles.c.static_secret_sha256, profiles.c.previous_secret_sha256, profiles.c.previous_secret_until])
            self._find = _Compiled(_FIND_TRANSACTION, self.engine.dialect, list(scep_transactions.columns))
            self._device = _Compiled(_DEVICE_STATUS, self.engine.dialect)
            self._compromised = _Compiled(_COMPROMISED, self.engine.dialect)
            weakref.finalize(self, _close_all, self._connections)

    def find_sync(self, profile: str, key: str) -> dict | None:
        return self.lookup_sync(profile, key)[0]

    def compromised_sync(self, public_key_sha256: str) -> str | None:
        """compromised_key on the calling thread's connection (the decryption stage's, beside lookup_sync): no
        round trip through the async engine per enrolment."""
        assert self._compromised is not None, "prepare() first"
        row = self._db().execute(self._compromised.sql,
                                 self._compromised.params(_compromised_params(public_key_sha256))).fetchone()
        return None if row is None else row[0]

    def lookup_sync(self, profile: str, key: str, *, static_secrets: bool = False) -> tuple[dict | None, object]:
        """(the transaction row or None, and with ``static_secrets`` the static profile's secrets as stored now:
        StaticSecrets, or None for no such static profile; NOT_LOOKED_UP without), on one connection."""
        assert self._find is not None and self._secrets is not None, "prepare() first"
        secrets: object = NOT_LOOKED_UP
        db = self._db()
        found = self._find.row(db.execute(
            self._find.sql, self._find.params({"profile": profile, "transaction_id": key})).fetchone())
        if static_secrets:
            row = self._secrets.row(db.execute(self._secrets.sql, self._secrets.params({"name": profile})).fetchone())
            secrets = None if row is None else StaticSecrets(
                row["static_secret_sha256"], row["previous_secret_sha256"], aware(row["previous_secret_until"]))
        return found, secrets

    def record_sync(self, cert_row: dict, tx_row: dict, event: dict) -> None:
        """Record one issue durably; returns once the commit carrying it is on disk.

        Group commit among the process's signing threads: each write queues, then waits for the write lock.
        The holder commits the writes queued at that moment in one transaction (one durable commit for all),
        each in a savepoint of its own so that one write losing to a concurrent insert (Duplicate) fails
        alone (as does one whose device is no longer active: DeviceTakenDown, see _guard_device). A thread whose
        write an earlier holder carried finds it done and returns."""
        assert self._find is not None, "prepare() first"
        event_row = _event_row(**event)
        if not self._record:
            self._record = [_Compiled(stmt, self.engine.dialect)
                            for stmt in _record_statements(cert_row, tx_row, event_row, one_statement=False)]
        item = _QueuedWrite(_record_params(cert_row, tx_row, event_row))
        with self._queue_lock:
            self._queue.append(item)
        with self._write_lock:
            while not item.done:
                with self._queue_lock:
                    batch, self._queue = self._queue[:_MAX_GROUP], self._queue[_MAX_GROUP:]
                self._commit_group(batch)
        if item.error is not None:
            raise item.error

    def _commit_group(self, batch: list["_QueuedWrite"]) -> None:
        """One transaction for the batch; every item ends done, with its error if it was not written."""
        assert self._record and self._device is not None, "prepare() and record_sync compile the statements"
        started = time.perf_counter()
        try:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")  # take the write lock now (see trustkit.db.writer)
                for item in batch:
                    device_id = item.params.get("c_enrolled_device_id")
                    if device_id is not None:
                        status = db.execute(self._device.sql, self._device.params({"device_id": device_id})).fetchone()
                        if status is not None and status[0] != "active":
                            item.error = DeviceTakenDown(device_id, status[0])
                            continue
                    db.execute("SAVEPOINT one_write")
                    try:
                        for stmt in self._record:
                            db.execute(stmt.sql, stmt.params(item.params))
                    except sqlite3.IntegrityError as exc:
                        db.execute("ROLLBACK TO one_write")
                        item.error = Duplicate(str(exc))
                    db.execute("RELEASE one_write")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except BaseException as exc:  # nothing of the batch was written: each caller gets the failure
            for item in batch:
                item.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for item in batch:
                item.done = True
        batching.observed("enrolment_record", len(batch), time.perf_counter() - started)

    async def find(self, profile: str, key: str) -> dict | None:
        await self.prepare()
        return await in_executor(self.executor, self.find_sync, profile, key)

    async def record(self, cert_row: dict, tx_row: dict, event: dict) -> None:
        await self.prepare()
        await in_executor(self.executor, self.record_sync, cert_row, tx_row, event)


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for db in connections:
        db.close()


def repository_for(engine: AsyncEngine) -> SqlRepository:
    """The fastest repository for the engine's database."""
    if is_sqlite(engine):
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            return SqliteRepository(engine)
    elif engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg":
        return PostgresRepository(engine)
    return SqlRepository(engine)
