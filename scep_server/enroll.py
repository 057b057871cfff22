"""The SCEP service (RFC 8894): GetCACaps, GetCACert, GetNextCACert and PKIOperation.

Checks are chained in front of the issuer: message check, challenge (or renewal by an issued
certificate), CSR policy, approval, then issue. Every failure after the outer SignedData parsed
becomes a signed CertRep FAILURE with its failInfo and a failInfoText.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import dataclasses
import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Awaitable, Callable, Protocol

import sqlalchemy as sa
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AttributeOID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .binding.tables import device_certs, devices
from .ca import inventory
from .ca.authority import CertificateAuthority, random_serial
from .ca.inventory import CertRecord, Reason
from .ca.policy import MESSAGE_DIGEST_CAPS, PolicyViolation, check_message_digest
from trustkit.clock import Clock, utcnow
from .profiles import Profile, ProfileStore, UnknownProfile
from .scep import message as codec
from .scep.types import ContentCipher, FailInfo, MalformedMessage, MessageType, PKIStatus, SCEPFailure
from trustkit.db import is_sqlite, sqlite_pragmas, writer
from trustkit.problems import Conflict
from .store.events import record_event
from .store.tables import certificates, events, scep_transactions

log = structlog.get_logger("scep")

DER = serialization.Encoding.DER


class ChallengeRejected(Exception):
    """The challenge (static, one-time or delegated) did not authorise this enrolment."""


class ApprovalRefused(Exception):
    """An administrator approved a pending enrolment that the profile's template now refuses: it is rejected."""


class NoNextCA(Exception):
    """GetNextCACert without a configured rollover."""


@dataclass(frozen=True)
class EnrollmentRequest:
    """What challenge verifiers and hooks see of a PKCSReq/RenewalReq."""

    profile: Profile
    message: codec.PKIMessage
    csr: x509.CertificateSigningRequest
    csr_der: bytes
    challenge: str | None
    renewal_of: CertRecord | None
    # the device a trusted source named for this enrolment (challenge expectations, Intune, pre-registration)
    device_id: str | None = None


class ChallengeVerifier(Protocol):
    """One per challenge kind (static, dynamic, delegated)."""

    async def verify(self, req: EnrollmentRequest) -> str | None:
        """Raise ChallengeRejected when the enrolment is not authorised; may return the device id the
        authorising source names for this enrolment (written as the certificate's enrolled_device_id)."""

    async def after_issue(self, req: EnrollmentRequest, cert: x509.Certificate) -> None:
        """Called after issuance, before the CertRep goes out; raising withdraws the certificate."""

    async def after_failure(self, req: EnrollmentRequest, text: str) -> None:
        """Called when an authorised enrolment failed later (e.g. policy)."""


class StaticChallenge:
    """One secret per profile, compared in constant time."""

    async def verify(self, req: EnrollmentRequest) -> None:
        if not req.challenge:
            raise ChallengeRejected("the CSR carries no challengePassword")
        if not req.profile.check_static_secret(req.challenge):
            raise ChallengeRejected("invalid challenge password")

    async def after_issue(self, req: EnrollmentRequest, cert: x509.Certificate) -> None:
        return None

    async def after_failure(self, req: EnrollmentRequest, text: str) -> None:
        return None


def challenge_password(csr: x509.CertificateSigningRequest) -> str | None:
    """The PKCS#9 challengePassword attribute of a CSR, if any."""
    try:
        value = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class _Outcome:
    status: PKIStatus
    content: bytes | None = None
    fail_info: FailInfo | None = None
    fail_text: str | None = None
    serial: str | None = None
    reply: bytes | None = None  # the signed CertRep, when built together with the certificate


_NOT_LOOKED_UP = object()

# RFC 8894 transactionIDs are PrintableStrings (clients send a hash of the key in hex or base64)
MAX_TRANSACTION_ID = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# an ``awaiting_ack`` certificate untouched for this long is reconciled (longer than any notification may take)
ACK_STALE_AFTER = timedelta(minutes=15)


def _bounded(text: str, limit: int = 64) -> str:
    """A transactionID as logs and failure texts show it: at most ``limit`` characters, control characters escaped."""
    short = text[:limit].encode("unicode_escape").decode("ascii")
    return short + f"...({len(text)} characters)" if len(text) > limit else short


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f}".removesuffix(".0")


def _unused_since(predecessor: CertRecord, now: datetime) -> datetime:
    """The day-91 clock of a renewal: it continues from an unused predecessor's, else starts at the new issue."""
    if predecessor.first_used_at is None:
        return predecessor.unused_since or predecessor.issued_at
    return now


class _NotAwaiting(Exception):
    """The transaction left ``awaiting_ack`` meanwhile."""


class _SignerChanged(Exception):
    """The renewal's signing certificate left ``valid`` (a hold, a revocation) while the renewal was in flight."""


async def _guard_signer(conn, serial: str, now: datetime, *, supersede: bool) -> None:
    """Within the caller's transaction: the signer must still be ``valid`` (and is revoked as superseded when
    ``supersede``); the update locks its row, so a concurrent hold either waits for us or wins."""
    values: dict = {"updated_at": now}
    if supersede:
        values.update(status="revoked", revocation_reason=int(Reason.SUPERSEDED), revoked_at=now)
    res = await conn.execute(certificates.update().where(
        certificates.c.serial == serial, certificates.c.status == "valid").values(**values))
    if res.rowcount != 1:
        current = (await conn.execute(sa.select(certificates.c.status).where(certificates.c.serial == serial))).first()
        status = current.status if current is not None else "unknown"
        raise _SignerChanged(f"the signing certificate is {'on hold' if status == 'hold' else status}: "
                             "the renewal was not issued")


@dataclass(frozen=True)
class _StoredTransaction:
    """What the verifiers read of a request's message, for a transaction taken up again from the database."""

    transaction_id: str

# ---------------------------------------------------------------------------------------------
# The enrolment path's storage: find a transaction, record an issued certificate (one transaction).

_FIND_TRANSACTION = sa.select(scep_transactions).where(
    scep_transactions.c.profile == sa.bindparam("profile"),
    scep_transactions.c.transaction_id == sa.bindparam("transaction_id"))


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


class _AsyncStore:
    """Lookup and record on the async engine; on PostgreSQL through asyncpg directly, one round trip each."""

    inline = False

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"
        self._find: _Compiled | None = None
        self._record: _Compiled | None = None

    async def prepare(self) -> None:
        return None

    async def find(self, profile: str, transaction_id: str) -> dict | None:
        params = {"profile": profile, "transaction_id": transaction_id}
        async with self.engine.connect() as conn:
            if not self._postgres:
                row = (await conn.execute(_FIND_TRANSACTION, params)).first()
                return dict(row._mapping) if row is not None else None
            if self._find is None:
                self._find = _Compiled(_FIND_TRANSACTION, self.engine.dialect, list(scep_transactions.columns))
            driver = (await conn.get_raw_connection()).driver_connection
            return self._find.row(await driver.fetchrow(self._find.sql, *self._find.params(params)))

    async def record(self, cert_row: dict, tx_row: dict, event_row: dict) -> None:
        """Insert the certificate, its transaction and the audit event, all or nothing."""
        if not self._postgres:
            async with writer(self.engine).begin() as conn:
                await conn.execute(certificates.insert(), cert_row)
                await conn.execute(scep_transactions.insert(), tx_row)
                await conn.execute(events.insert(), event_row)
            return
        import asyncpg

        if self._record is None:
            stmt, = _record_statements(cert_row, tx_row, event_row, one_statement=True)
            self._record = _Compiled(stmt, self.engine.dialect)
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            try:  # no transaction is open on the connection: the statement commits by itself
                await driver.execute(self._record.sql, *self._record.params(
                    _record_params(cert_row, tx_row, event_row)))
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise IntegrityError(self._record.sql, None, exc) from exc


class _SqliteStore:
    """The same two operations on synchronous SQLite connections, called from the enrolment's worker threads.

    aiosqlite hands every driver call (cursor, execute, fetch, close, BEGIN, COMMIT) to its connection thread
    and back, a dozen handoffs per enrolment. Here the lookup runs inside the thread that parses and decrypts
    the request, and the write inside the thread that signs the certificate: no handoff of its own. Writers
    of one process queue on a lock rather than in SQLite's busy handler, which polls with sleeps.
    """

    inline = True

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.executor: ThreadPoolExecutor | None = None  # the SCEP service's (None: the loop's default)
        self._sync: sa.Engine | None = None
        self._write_lock = threading.Lock()
        self._find: _Compiled | None = None
        self._record: list[_Compiled] = []

    async def prepare(self) -> None:
        if self._sync is not None:
            return
        # the durability the async engine was configured with (PRAGMA synchronous: 0 OFF .. 3 EXTRA)
        async with self.engine.connect() as conn:
            level = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
        if self._sync is None:
            sync = _sync_sqlite_engine(self.engine, {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, "FULL"))
            self._find = _Compiled(_FIND_TRANSACTION, sync.dialect, list(scep_transactions.columns))
            self._sync = sync
            weakref.finalize(self, sync.dispose)

    def find_sync(self, profile: str, transaction_id: str) -> dict | None:
        assert self._sync is not None and self._find is not None
        raw = self._sync.raw_connection()
        try:
            cursor = raw.driver_connection.execute(
                self._find.sql, self._find.params({"profile": profile, "transaction_id": transaction_id}))
            return self._find.row(cursor.fetchone())
        finally:
            raw.close()

    def record_sync(self, cert_row: dict, tx_row: dict, event_row: dict) -> None:
        assert self._sync is not None
        if not self._record:
            self._record = [_Compiled(stmt, self._sync.dialect)
                            for stmt in _record_statements(cert_row, tx_row, event_row, one_statement=False)]
        params = _record_params(cert_row, tx_row, event_row)
        with self._write_lock:
            raw = self._sync.raw_connection()
            try:
                db = raw.driver_connection
                db.execute("BEGIN IMMEDIATE")  # take the write lock now (see trustkit.db.writer)
                try:
                    for stmt in self._record:
                        db.execute(stmt.sql, stmt.params(params))
                    db.execute("COMMIT")
                except BaseException as exc:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.IntegrityError):
                        raise IntegrityError(None, None, exc) from exc
                    raise
            finally:
                raw.close()

    async def find(self, profile: str, transaction_id: str) -> dict | None:
        await self.prepare()
        return await _in_executor(self.executor, self.find_sync, profile, transaction_id)

    async def record(self, cert_row: dict, tx_row: dict, event_row: dict) -> None:
        await self.prepare()
        await _in_executor(self.executor, self.record_sync, cert_row, tx_row, event_row)


async def _in_executor(executor: ThreadPoolExecutor | None, fn, /, *args, **kwargs):
    """``asyncio.to_thread`` on a given executor: the call runs in a copy of the caller's context."""
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(ctx.run, fn, *args, **kwargs))


def scep_threads(configured: int | None = None) -> int:
    """The size of the SCEP service's executor: configured, else the number of CPUs (at least two)."""
    return configured or max(2, os.cpu_count() or 1)


def _sync_sqlite_engine(engine: AsyncEngine, synchronous: str) -> sa.Engine:
    """A pysqlite engine on the async engine's database file, with the same pragmas (trustkit.db)."""
    sync = sa.create_engine(engine.url.set(drivername="sqlite+pysqlite"), pool_size=8, max_overflow=8,
                            connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(sync, "connect")
    def _pragmas(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # BEGIN and COMMIT are ours
        sqlite_pragmas(dbapi_conn, synchronous)

    return sync


def _enrolment_store(engine: AsyncEngine):
    database = engine.url.database if is_sqlite(engine) else None
    if database and database != ":memory:" and not database.startswith("file:"):
        return _SqliteStore(engine)
    return _AsyncStore(engine)


class ScepService:
    """RFC 8894 operations for every profile."""

    def __init__(self, *, engine: AsyncEngine, cas: dict[str, CertificateAuthority], profiles: ProfileStore,
                 verifiers: dict[str, ChallengeVerifier] | None = None, clock: Clock = utcnow,
                 crl_source: Callable[[str], Awaitable[bytes]] | None = None,
                 on_status_change: Callable[[str], None] | None = None, threads: int | None = None,
                 device_identity: Callable[[str, str], Awaitable[str | None]] | None = None):
        self.engine = engine
        self.cas = cas
        self.profiles = profiles
        self.verifiers: dict[str, ChallengeVerifier] = {"static": StaticChallenge(), **(verifiers or {})}
        self.clock = clock
        self.crl_source = crl_source
        self.on_status_change = on_status_change or (lambda ca: None)
        self._cacert_cache: dict[str, bytes] = {}
        self._store = _enrolment_store(engine)
        # SCEP's CPU work (parse, decrypt, sign) runs here, not on the loop's default executor: hostile requests
        # queue behind each other instead of starving everything else that uses threads
        self._executor = ThreadPoolExecutor(max_workers=scep_threads(threads), thread_name_prefix="scep")
        if isinstance(self._store, _SqliteStore):
            self._store.executor = self._executor
        # (profile, transactionID) -> the device id an administrator pre-registered for it (binding feature)
        self.device_identity = device_identity

    async def _run(self, fn, /, *args, **kwargs):
        return await _in_executor(self._executor, fn, *args, **kwargs)

    async def close(self) -> None:
        """Stop the executor once the requests in it have finished (queued work that never started is dropped)."""
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._executor.shutdown, wait=True, cancel_futures=True))

    # ------------------------------------------------------------------ GetCACaps / GetCACert

    async def get_ca_caps(self, profile_name: str) -> str:
        """RFC 8894 §3.5.2: capabilities generated from what this server enforces."""
        profile = await self.profiles.get(profile_name)
        caps = ["AES", "DES3", *MESSAGE_DIGEST_CAPS, "POSTPKIOperation", "SCEPStandard"]
        if profile.settings.allow_renewal:
            caps.append("Renewal")
        if self.cas[profile.ca].next_ca_certs:
            caps.append("GetNextCACert")
        return "\n".join(caps) + "\n"

    async def get_ca_cert(self, profile_name: str) -> bytes:
        """RFC 8894 §4.2.1.2: RA certificate first, then the issuing CA, as a degenerate PKCS#7."""
        profile = await self.profiles.get(profile_name)
        cached = self._cacert_cache.get(profile.ca)
        if cached is None:
            ca = self.cas[profile.ca]
            cached = self._cacert_cache[profile.ca] = codec.build_degenerate([ca.ra_cert_der, ca.cert_der])
        return cached

    async def get_next_ca_cert(self, profile_name: str) -> bytes:
        """RFC 8894 §4.7.1: the next CA, signed by the current RA."""
        profile = await self.profiles.get(profile_name)
        ca = self.cas[profile.ca]
        if not ca.next_ca_certs:
            raise NoNextCA(f"no CA rollover is configured for CA {ca.name!r}")
        return await self._run(codec.build_next_ca_cert, ca.next_ca_ders, ra_cert_der=ca.ra_cert_der,
                               sign=self._signer(ca), digest=codec.Digest.SHA256, signing_time=self.clock())

    # ------------------------------------------------------------------ PKIOperation

    async def pki_operation(self, profile_name: str, body: bytes) -> bytes:
        """Handle one pkiMessage; MalformedMessage (HTTP 400) only when no signer can be answered."""
        started = time.perf_counter()
        profile = await self.profiles.get(profile_name)
        ca = self.cas[profile.ca]
        cached = ca.failure_replies.get(profile.fingerprint, body)  # a replayed bad message: no second RA signature
        if cached is not None:
            return cached
        msg: codec.PKIMessage | None = None
        opened = False
        await self._store.prepare()
        try:
            msg, inner, known, policy_error = await self._run(self._open, body, ca, profile)
            opened = True
            outcome = await self._dispatch(profile, ca, msg, inner, known, policy_error)
        except SCEPFailure as exc:
            if exc.message is None:
                raise MalformedMessage(exc.text) from None
            msg = exc.message
            outcome = _Outcome(PKIStatus.FAILURE, fail_info=exc.fail_info, fail_text=exc.text)
        reply = outcome.reply or await self._run(self._reply, ca, msg, outcome)
        if not opened:  # failed on its bytes alone (signature, structure, envelope): same bytes, same answer
            ca.failure_replies.put(profile.fingerprint, body, reply)
        log.info("scep.transaction", profile=profile.name, transaction_id=_bounded(msg.transaction_id),
                 message_type=_type_name(msg.message_type), outcome=outcome.status.name,
                 fail_info=outcome.fail_info.name if outcome.fail_info is not None else None,
                 fail_text=outcome.fail_text, serial=outcome.serial,
                 duration_ms=round((time.perf_counter() - started) * 1000, 2))
        return reply

    def _open(self, body: bytes, ca: CertificateAuthority, profile: Profile):
        """Parse, verify, decrypt and parse the content (CPU work, run in a thread); on SQLite, also find an
        enrolment's transaction.

        Nothing is looked up before the content parsed: every decryption-stage fault is one answer after the
        same work (see codec.open_request). Single DES is refused from the envelope's algorithm, before any
        decryption, unless the profile allows it.
        """
        msg = codec.parse_pki_message(body)
        check_message_digest(msg)  # badAlg for a digest GetCACaps does not offer (MD5)
        try:
            content = codec.open_request(msg, ca.ra_key.decrypt, recipient_cert_der=ca.ra_cert_der,
                                         allow_single_des=profile.settings.allow_single_des, issuer=ca.cert.subject)
        except SCEPFailure as exc:
            raise exc.with_message(msg) from None
        if content.cipher is ContentCipher.DES_CBC:
            log.warning("scep.single_des", profile=profile.name, transaction_id=msg.transaction_id,
                        message_type=_type_name(msg.message_type))
        known = _NOT_LOOKED_UP
        policy_error = None
        if content.csr is not None:
            self._check_signer_key(profile, ca, msg, content)
            # the template's rules, judged here in the same thread; applied after a retry is recognised
            try:
                profile.policy.check(content.csr, reserved_names=ca.reserved_names,
                                    proof_checked=content.proof_checked)
            except PolicyViolation as exc:
                policy_error = str(exc)
            if self._store.inline:
                known = self._store.find_sync(profile.name, self._key(ca, msg))
        return msg, content, known, policy_error

    @staticmethod
    def _foreign_signer(ca: CertificateAuthority, msg: codec.PKIMessage, content: codec.RequestContent) -> bool:
        """A self-signed request (not a renewal by one of our certificates) whose signer key is not the CSR's."""
        signer = msg.signer_cert
        if signer.issuer == ca.cert.subject and ca.issued_by_us(signer):
            return False
        return inventory.public_key_sha256(signer.public_key()) != inventory.public_key_sha256(content.public_key)

    def _check_signer_key(self, profile: Profile, ca: CertificateAuthority, msg: codec.PKIMessage,
                          content: codec.RequestContent) -> None:
        """Profile setting ``require_signer_csr_key``: the self-signed signer must hold the CSR's key (RFC 8894 §2.3)."""
        if profile.settings.require_signer_csr_key and self._foreign_signer(ca, msg, content):
            raise SCEPFailure(FailInfo.BAD_REQUEST,
                              "the request is signed by a key other than the CSR's (this profile requires the CSR's "
                              "key)", msg)

    def _signer(self, ca: CertificateAuthority):
        def sign(data: bytes, digest) -> bytes:
            return ca.ra_key.sign(data, digest.hash_algorithm())
        return sign

    def _reply(self, ca: CertificateAuthority, msg: codec.PKIMessage, outcome: _Outcome) -> bytes:
        kwargs = {}
        if outcome.status is PKIStatus.SUCCESS:
            # the codec mirrors the request's cipher (single DES answered with AES) and uses the leading bytes
            kwargs = {"content": outcome.content, "cek": secrets.token_bytes(32), "iv": secrets.token_bytes(16)}
        return codec.build_cert_rep(request=msg, status=outcome.status, ra_cert_der=ca.ra_cert_der,
                                    sign=self._signer(ca), sender_nonce=secrets.token_bytes(16),
                                    signing_time=self.clock(), fail_info=outcome.fail_info,
                                    fail_text=outcome.fail_text, **kwargs)

    async def _dispatch(self, profile: Profile, ca: CertificateAuthority, msg: codec.PKIMessage,
                        inner: codec.RequestContent, known=_NOT_LOOKED_UP, policy_error: str | None = None) -> _Outcome:
        t = msg.message_type
        if t in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
            return await self._enrol(profile, ca, msg, inner, known, policy_error)
        if t is MessageType.CERT_POLL:
            return await self._poll(profile, ca, msg, inner)
        if t is MessageType.GET_CERT:
            return await self._get_cert(ca, msg, inner)
        return await self._get_crl(ca, msg, inner)

    # ------------------------------------------------------------------ enrolment

    async def _enrol(self, profile: Profile, ca: CertificateAuthority, msg: codec.PKIMessage,
                     content: codec.RequestContent, known=_NOT_LOOKED_UP, policy_error: str | None = None) -> _Outcome:
        # parsed, key loaded and proof of possession checked in the decryption stage (codec.open_request)
        csr, csr_der = content.csr, content.der
        pub_sha = inventory.public_key_sha256(content.public_key)

        existing = known if known is not _NOT_LOOKED_UP else await self._transaction(profile.name, self._key(ca, msg))
        if existing is not None:
            return await self._replay(profile, msg, existing, pub_sha)

        by_us = self._signed_by_us(ca, msg)
        if not by_us and msg.message_type is MessageType.RENEWAL_REQ and not req_has_challenge(csr):
            raise SCEPFailure(FailInfo.BAD_REQUEST,
                              "RenewalReq must be signed by a valid certificate issued by this CA", msg)
        # cheap local checks (key, algorithms, subject, SANs, weak keys; judged in _open) before anything is
        # spent or asked
        if policy_error is not None:
            raise SCEPFailure(FailInfo.BAD_REQUEST, policy_error, msg)
        renewal_of = await self._renewal_certificate(profile, ca, msg, csr) if by_us else None
        req = EnrollmentRequest(profile=profile, message=msg, csr=csr, csr_der=csr_der,
                                challenge=challenge_password(csr), renewal_of=renewal_of)
        verifier = self.verifiers.get(profile.challenge_kind)
        device_id = renewal_of.enrolled_device_id if renewal_of is not None else None
        validate = renewal_of is None or (profile.challenge_kind == "delegated"
                                          and profile.settings.renewal_revalidate)
        if validate:
            if verifier is None:
                raise SCEPFailure(FailInfo.BAD_REQUEST,
                                  f"challenge kind {profile.challenge_kind!r} is not available on this server", msg)
            try:
                device_id = device_id or await verifier.verify(req)  # a renewal keeps its signer's device
            except ChallengeRejected as exc:
                raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
            if device_id is None and self.device_identity is not None and profile.settings.device_trust:
                device_id = await self.device_identity(profile.name, msg.transaction_id)
        req = dataclasses.replace(req, device_id=device_id)

        now = self.clock()
        if renewal_of is None and self._foreign_signer(ca, msg, content):
            await self._note_foreign_signer(profile, msg, pub_sha, now)
        if profile.settings.require_approval and (renewal_of is None or profile.settings.renewal_requires_approval):
            state = await self._insert_transaction(profile.name, self._key(ca, msg), msg, csr_der, pub_sha, "pending",
                                                    now, renewal_of=renewal_of.serial if renewal_of else None)
            if state is not None:  # a parallel retry won the insert
                return await self._replay(profile, msg, state, pub_sha)
            return _Outcome(PKIStatus.PENDING)
        return await self._issue(profile, ca, req, pub_sha, now, verifier if validate else None)

    async def _note_foreign_signer(self, profile: Profile, msg: codec.PKIMessage, pub_sha: str, now: datetime) -> None:
        """A key that holds a valid certificate of the profile, enrolled again under a signer that is not that key:
        a captured request re-wrapped by someone else looks like this. Recorded as a security event."""
        c = certificates.c
        async with self.engine.connect() as conn:
            serials = (await conn.execute(sa.select(c.serial).where(
                c.profile == profile.name, c.public_key_sha256 == pub_sha, c.status == "valid",
                c.not_after > now).limit(10))).scalars().all()
        if not serials:
            return
        signer = hashlib.sha256(msg.signer_cert_der).hexdigest()
        async with writer(self.engine).begin() as conn:
            await record_event(conn, at=now, kind="security.scep.foreign_signer", subject=msg.transaction_id,
                               actor=f"scep:{profile.name}",
                               data={"profile": profile.name, "public_key_sha256": pub_sha,
                                     "signer_fingerprint_sha256": signer, "valid_certificates": list(serials)})
        log.warning("security.scep.foreign_signer", profile=profile.name, transaction_id=msg.transaction_id,
                    public_key_sha256=pub_sha, signer_fingerprint_sha256=signer, valid_certificates=list(serials))

    async def _issue(self, profile: Profile, ca: CertificateAuthority, req: EnrollmentRequest, pub_sha: str,
                     now: datetime, verifier: ChallengeVerifier | None) -> _Outcome:
        """Sign, record and answer. A delegated enrolment is recorded ``awaiting_ack`` and delivered only once the
        MDM accepted the success notification; a renewal is recorded only while its signer is still valid."""
        msg = req.message
        key = self._key(ca, msg)
        renewal = req.renewal_of is not None
        ack = verifier is not None and profile.challenge_kind == "delegated"
        supersede = renewal and profile.settings.supersede_on_renewal
        inline = self._store.inline and not renewal and not ack
        state = "awaiting_ack" if ack else "issued"
        for _attempt in range(3):
            # One thread hop signs the certificate and its CertRep (and on SQLite commits the rows in between);
            # the reply leaves only once the rows are committed.
            cert, rows, outcome = await self._run(self._sign, profile, ca, req, key, pub_sha, now, inline, state)
            try:
                if outcome is None:
                    raise rows  # the inline write's IntegrityError
                if renewal or ack:
                    await self._record_guarded(req.renewal_of, *rows, now, supersede=supersede and not ack)
                elif not inline:
                    await self._store.record(*rows[:2], _event_row(**rows[2]))
            except IntegrityError:
                # A concurrent retry of the same transaction inserted first: answer with its result.
                existing = await self._transaction(profile.name, key)
                if existing is not None:
                    return await self._replay(profile, msg, existing, pub_sha)
                continue  # the random serial (127 bits) was taken: sign again with a fresh one
            except _SignerChanged as exc:
                if verifier is not None:
                    await verifier.after_failure(req, str(exc))
                raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
            break
        else:
            raise RuntimeError(f"could not record a certificate for transaction {_bounded(key)!r}")
        if supersede and not ack:
            self.on_status_change(ca.name)
        if ack:
            return await self._acknowledge(profile, ca, req, verifier, cert, outcome, key)
        if verifier is not None:
            try:
                await verifier.after_issue(req, cert)
            except ChallengeRejected as exc:
                await self._withdraw(ca, outcome.serial, profile.name, key, str(exc))
                raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
        return outcome

    async def _acknowledge(self, profile: Profile, ca: CertificateAuthority, req: EnrollmentRequest,
                           verifier: ChallengeVerifier, cert: x509.Certificate, outcome: _Outcome, key: str) -> _Outcome:
        """Tell the MDM about an ``awaiting_ack`` certificate; deliver it only once that succeeded."""
        msg = req.message
        try:
            await verifier.after_issue(req, cert)
        except ChallengeRejected as exc:
            await self._withdraw(ca, outcome.serial, profile.name, key, str(exc))
            raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
        except Exception:  # noqa: BLE001 - left awaiting_ack: the reconciliation job retries or revokes it
            log.exception("scep.ack.unresolved", profile=profile.name, transaction_id=_bounded(msg.transaction_id),
                          serial=outcome.serial)
            return _Outcome(PKIStatus.PENDING)
        try:
            confirmed = await self._confirm_ack(profile, ca, key, req.renewal_of.serial if req.renewal_of else None)
        except _SignerChanged as exc:
            await self._withdraw(ca, outcome.serial, profile.name, key, str(exc))
            raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
        if not confirmed:  # decided meanwhile (reconciled): answer what the transaction says now
            row = await self._transaction(profile.name, key)
            return await self._state_outcome(profile, msg, row)
        return outcome

    async def _confirm_ack(self, profile: Profile, ca: CertificateAuthority, key: str,
                           renewal_of: str | None) -> bool:
        """``awaiting_ack`` -> ``issued``, superseding a renewal's signer in the same transaction.

        False when the transaction is no longer awaiting its acknowledgement; _SignerChanged when the signer left
        ``valid`` meanwhile (nothing is changed then).
        """
        now = self.clock()
        supersede = renewal_of is not None and profile.settings.supersede_on_renewal
        try:
            async with writer(self.engine).begin() as conn:
                if supersede:
                    await _guard_signer(conn, renewal_of, now, supersede=True)
                res = await conn.execute(scep_transactions.update().where(
                    scep_transactions.c.profile == profile.name, scep_transactions.c.transaction_id == key,
                    scep_transactions.c.state == "awaiting_ack").values(state="issued", updated_at=now))
                if res.rowcount != 1:
                    raise _NotAwaiting  # rolls the supersede back too
        except _NotAwaiting:
            return False
        if supersede:
            self.on_status_change(ca.name)
        return True

    def _sign(self, profile: Profile, ca: CertificateAuthority, req: EnrollmentRequest, key: str, pub_sha: str,
              now: datetime, inline: bool, state: str = "issued"):
        """Issue the certificate, write its rows when ``inline``, and build the CertRep SUCCESS (in a thread).

        Returns (certificate, (certificate row, transaction row, event), outcome), or (certificate, the
        IntegrityError, None) when the inline write lost to a concurrent insert.
        """
        msg = req.message
        cert = ca.issue(req.csr, profile.policy, serial=random_serial(), now=now)
        der = cert.public_bytes(DER)
        cert_row = inventory.certificate_row(cert, der, ca.name, profile.name, msg.transaction_id, pub_sha, now)
        cert_row.update(renewal_of=req.renewal_of.serial if req.renewal_of else None,
                        unused_since=_unused_since(req.renewal_of, now) if req.renewal_of else None,
                        enrolled_device_id=req.device_id)
        serial = cert_row["serial"]
        tx_row = dict(profile=profile.name, transaction_id=key, state=state, message_type=int(msg.message_type),
                      csr_der=req.csr_der, public_key_sha256=pub_sha, serial=serial, created_at=now, updated_at=now)
        event = dict(at=now, kind="pki.cert.renew" if req.renewal_of else "pki.cert.issue", subject=serial,
                     actor=f"scep:{profile.name}",
                     data={"transaction_id": msg.transaction_id, "subject": cert_row["subject"],
                           "renewal_of": req.renewal_of.serial if req.renewal_of else None})
        if inline:
            try:
                self._store.record_sync(cert_row, tx_row, _event_row(**event))
            except IntegrityError as exc:
                return cert, exc, None
        outcome = _Outcome(PKIStatus.SUCCESS, content=codec.build_degenerate([der, ca.cert_der]), serial=serial)
        outcome.reply = self._reply(ca, msg, outcome)
        return cert, (cert_row, tx_row, event), outcome

    async def _record_guarded(self, renewal_of: CertRecord | None, cert_row: dict, tx_row: dict, event: dict,
                              now: datetime, *, supersede: bool) -> None:
        """Record a certificate in one transaction; a renewal only while its signer is still ``valid`` (revoked as
        superseded when ``supersede``): a hold placed meanwhile wins and the renewal fails (_SignerChanged)."""
        async with writer(self.engine).begin() as conn:
            if renewal_of is not None:
                await _guard_signer(conn, renewal_of.serial, now, supersede=supersede)
            await conn.execute(certificates.insert(), cert_row)
            await conn.execute(scep_transactions.insert(), tx_row)
            await record_event(conn, **event)

    async def _withdraw(self, ca: CertificateAuthority, serial: str, profile: str, txid: str, why: str) -> None:
        """Revoke a certificate that must not be handed out, and mark its transaction rejected."""
        now = self.clock()
        async with writer(self.engine).begin() as conn:
            await inventory.set_status(conn, serial, "revoked", at=now, reason=int(Reason.CESSATION_OF_OPERATION))
            await conn.execute(scep_transactions.update().where(
                scep_transactions.c.profile == profile, scep_transactions.c.transaction_id == txid
            ).values(state="rejected", fail_text=why, updated_at=now))
            await record_event(conn, at=now, kind="pki.cert.revoke", subject=serial, actor=f"scep:{profile}",
                               data={"reason": "withdrawn after issue", "detail": why})
        self.on_status_change(ca.name)

    # ------------------------------------------------------------------ unacknowledged delegated issuance

    async def reconcile_unacknowledged(self, *, older_than: timedelta = ACK_STALE_AFTER) -> dict[str, str]:
        """Certificates left ``awaiting_ack`` (a crash, a lost connection): notify the MDM again and deliver, or
        revoke (cessationOfOperation). Only rows untouched for ``older_than`` are taken (another instance may be
        notifying right now); each is claimed by a compare-and-set first. Returns {serial: outcome}."""
        now = self.clock()
        q = (sa.select(scep_transactions.c.profile, scep_transactions.c.transaction_id, scep_transactions.c.serial,
                       scep_transactions.c.csr_der, scep_transactions.c.updated_at, certificates.c.der,
                       certificates.c.ca, certificates.c.transaction_id.label("raw_txid"), certificates.c.renewal_of)
             .join(certificates, certificates.c.serial == scep_transactions.c.serial)
             .where(scep_transactions.c.state == "awaiting_ack", scep_transactions.c.updated_at <= now - older_than)
             .limit(1000))
        async with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in (await conn.execute(q)).all()]
        done: dict[str, str] = {}
        for row in rows:
            async with writer(self.engine).begin() as conn:
                claimed = await conn.execute(scep_transactions.update().where(
                    scep_transactions.c.profile == row["profile"],
                    scep_transactions.c.transaction_id == row["transaction_id"],
                    scep_transactions.c.state == "awaiting_ack",
                    scep_transactions.c.updated_at == row["updated_at"]).values(updated_at=now))
            if claimed.rowcount != 1:
                continue
            done[row["serial"]] = await self._reconcile_one(row)
        return done

    async def _reconcile_one(self, row: dict) -> str:
        serial, key, profile_name = row["serial"], row["transaction_id"], row["profile"]
        why = None
        try:
            profile = await self.profiles.get(profile_name)
        except UnknownProfile:
            profile, why = None, f"profile {profile_name!r} no longer exists"
        ca = self.cas[row["ca"]]
        verifier = self.verifiers.get(profile.challenge_kind) if profile is not None else None
        if why is None and verifier is None:
            why = f"challenge kind {profile.challenge_kind!r} is not available on this server"
        if why is None:
            renewal_of = None
            if row["renewal_of"]:
                async with self.engine.connect() as conn:
                    renewal_of = await inventory.get(conn, row["renewal_of"])
            csr = x509.load_der_x509_csr(row["csr_der"])
            req = EnrollmentRequest(profile=profile, message=_StoredTransaction(row["raw_txid"] or key),
                                    csr=csr, csr_der=row["csr_der"], challenge=challenge_password(csr),
                                    renewal_of=renewal_of)
            try:
                await verifier.after_issue(req, x509.load_der_x509_certificate(row["der"]))
            except Exception as exc:  # noqa: BLE001 - any failure to get the acknowledgement revokes
                why = str(exc) or type(exc).__name__
        outcome = "delivered"
        if why is None:
            try:
                if not await self._confirm_ack(profile, ca, key, row["renewal_of"]):
                    return "decided elsewhere"
            except _SignerChanged as exc:
                why = str(exc)
        if why is not None:
            outcome = "revoked"
            await self._withdraw(ca, serial, profile_name, key, f"not acknowledged by the MDM: {why}")
        async with writer(self.engine).begin() as conn:
            await record_event(conn, at=self.clock(), kind="scep.enrolment.reconcile", subject=serial,
                               actor="system:start-up", data={"profile": profile_name, "outcome": outcome,
                                                              "detail": why})
        log.info("scep.enrolment.reconcile", profile=profile_name, serial=serial, outcome=outcome, detail=why)
        return outcome

    async def ack_reconciler(self, every_seconds: float = 60.0) -> None:
        """A background job: reconcile leftovers at start-up, then periodically."""
        while True:
            await self.reconcile_unacknowledged()
            await asyncio.sleep(every_seconds)

    # ------------------------------------------------------------------ renewal

    @staticmethod
    def _signed_by_us(ca: CertificateAuthority, msg: codec.PKIMessage) -> bool:
        signer = msg.signer_cert
        return signer.issuer == ca.cert.subject and ca.issued_by_us(signer)

    async def _renewal_certificate(self, profile: Profile, ca: CertificateAuthority, msg: codec.PKIMessage,
                                   csr: x509.CertificateSigningRequest) -> CertRecord:
        """RFC 8894 §2.3: a request signed by a certificate we issued is a renewal authenticated by it.

        The renewal may not widen what the certificate is: same profile (or one the issuing profile lists in
        ``renewal_to``), same subject, no new SANs, a signer that is still valid and in use, within the window.
        """
        def refuse(text: str, info: FailInfo = FailInfo.BAD_REQUEST):
            return SCEPFailure(info, text, msg)

        if not profile.settings.allow_renewal:
            raise refuse("renewal is not enabled on this profile")
        signer = msg.signer_cert
        async with self.engine.connect() as conn:
            record = await inventory.get_by_fingerprint(conn, hashlib.sha256(msg.signer_cert_der).hexdigest())
            if record is None:
                raise refuse("the signing certificate is not in this CA's inventory", FailInfo.BAD_CERT_ID)
            successor = (await conn.execute(sa.select(certificates.c.serial).where(
                certificates.c.renewal_of == record.serial, certificates.c.status != "revoked").limit(1))).first()
            binding = (await conn.execute(
                sa.select(device_certs.c.state, device_certs.c.device_id, devices.c.status)
                .join(devices, devices.c.id == device_certs.c.device_id)
                .where(device_certs.c.ca == record.ca, device_certs.c.serial == record.serial))).first()
            if binding is None and record.enrolled_device_id:
                named = (await conn.execute(sa.select(devices.c.status).where(
                    devices.c.id == record.enrolled_device_id))).first()
                if named is not None:
                    binding = ("active", record.enrolled_device_id, named.status)
        now = self.clock()
        if record.status == "hold":
            raise refuse("the signing certificate is on hold")
        if record.status != "valid":
            raise refuse(f"the signing certificate is {record.status}"
                         + (" (superseded)" if record.revocation_reason == int(Reason.SUPERSEDED) else ""))
        if successor is not None:
            raise refuse(f"the signing certificate is superseded (already renewed as {successor.serial})")
        if not record.not_before <= now < record.not_after:
            raise refuse("the signing certificate has expired or is not yet valid")
        if binding is not None:
            state, device_id, device_status = binding
            if state != "active":
                raise refuse(f"the signing certificate is retired from its binding to device {device_id}")
            if device_status != "active":
                raise refuse(f"the signing certificate is bound to device {device_id}, which is {device_status}")
        if record.profile != profile.name:
            try:
                issuing = await self.profiles.get(record.profile or "")
            except UnknownProfile:
                issuing = None
            if issuing is None or profile.name not in issuing.settings.renewal_to:
                raise refuse(f"a certificate issued at profile {record.profile!r} is renewed only there")
        window = profile.settings.renewal_window_days
        window_td = timedelta(days=window) if window is not None else (record.not_after - record.not_before) / 3
        if record.not_after - now > window_td:
            raise refuse(f"renewal is accepted only within {_days(window_td)} days of expiry "
                         f"(from {(record.not_after - window_td).isoformat()})")
        try:
            subject, sans = profile.policy.subject_and_sans(csr)
        except PolicyViolation as exc:
            raise refuse(str(exc)) from None
        if subject != signer.subject:
            raise refuse("the renewal request's subject differs from the signing certificate's")
        try:
            signer_sans = set(signer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            signer_sans = set()
        if not set(sans) <= signer_sans:
            raise refuse("the renewal request names subject alternative names the signing certificate does not have")
        if profile.settings.renewal_sans == "equal" and set(sans) != signer_sans:
            raise refuse("the renewal request's subject alternative names differ from the signing certificate's")
        return record

    # ------------------------------------------------------------------ transactions

    @staticmethod
    def _key(ca: CertificateAuthority, msg: codec.PKIMessage) -> str:
        """The idempotency key of an enrolment.

        Clients derive the transactionID from the public key (RFC 8894 §3.2.1.1), so a renewal that keeps its
        key repeats the original enrolment's transactionID: a request signed by one of our certificates is
        therefore its own transaction, keyed by the signing certificate's serial as well. A key longer than the
        column is stored hashed. A transactionID that no client sends (control characters such as NUL, more than
        255 characters) is refused before anything is looked up or spent.
        """
        txid = msg.transaction_id
        if len(txid) > MAX_TRANSACTION_ID or _CONTROL.search(txid):
            raise SCEPFailure(FailInfo.BAD_REQUEST, f"invalid transactionID {_bounded(txid)!r}: at most "
                              f"{MAX_TRANSACTION_ID} printable characters", msg)
        signer = msg.signer_cert
        if signer.issuer == ca.cert.subject and ca.issued_by_us(signer):
            txid = f"{txid}/renewal/{signer.serial_number:x}"
        return txid if len(txid) <= 255 else "sha256:" + hashlib.sha256(txid.encode()).hexdigest()

    async def _transaction(self, profile: str, txid: str) -> dict | None:
        return await self._store.find(profile, txid)

    async def _insert_transaction(self, profile: str, key: str, msg: codec.PKIMessage, csr_der: bytes,
                                  pub_sha: str, state: str, now: datetime, *, renewal_of: str | None = None):
        """Insert a transaction row; on a concurrent duplicate return the existing row instead."""
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(scep_transactions.insert().values(
                    profile=profile, transaction_id=key, state=state,
                    message_type=int(msg.message_type), csr_der=csr_der, public_key_sha256=pub_sha,
                    renewal_of=renewal_of, created_at=now, updated_at=now))
        except IntegrityError:
            return await self._transaction(profile, key)
        return None

    async def _replay(self, profile: Profile, msg: codec.PKIMessage, row, pub_sha: str) -> _Outcome:
        """A retry of a known transaction: same answer, never a second certificate (RFC 8894 §3.3.1)."""
        m = row
        if m["public_key_sha256"] != pub_sha:
            raise SCEPFailure(FailInfo.BAD_REQUEST,
                              "this transactionID was already used with a different key", msg)
        return await self._state_outcome(profile, msg, m)

    async def _state_outcome(self, profile: Profile, msg: codec.PKIMessage, m) -> _Outcome:
        state = m["state"]
        if state in ("pending", "awaiting_ack"):  # awaiting_ack: delivered once the MDM acknowledged it
            return _Outcome(PKIStatus.PENDING)
        if state == "rejected":
            return _Outcome(PKIStatus.FAILURE, fail_info=FailInfo.BAD_REQUEST,
                            fail_text=m["fail_text"] or "the enrolment was rejected")
        async with self.engine.connect() as conn:
            record = await inventory.get(conn, m["serial"])
        if record is None or record.status == "revoked":
            return _Outcome(PKIStatus.FAILURE, fail_info=FailInfo.BAD_REQUEST,
                            fail_text="the certificate of this transaction has been revoked")
        ca = self.cas[record.ca]
        return _Outcome(PKIStatus.SUCCESS, content=codec.build_degenerate([record.der, ca.cert_der]),
                        serial=record.serial)

    async def _poll(self, profile: Profile, ca: CertificateAuthority, msg: codec.PKIMessage,
                    inner: codec.RequestContent) -> _Outcome:
        """CertPoll (GetCertInitial, RFC 8894 §3.3.3): the state of a pending transaction."""
        if inner.issuer != ca.cert.subject:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "CertPoll names an issuer that is not this CA", msg)
        row = await self._transaction(profile.name, self._key(ca, msg))
        if row is None:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "no enrolment with this transactionID", msg)
        return await self._state_outcome(profile, msg, row)

    async def _get_cert(self, ca: CertificateAuthority, msg: codec.PKIMessage,
                        inner: codec.RequestContent) -> _Outcome:
        """GetCert (RFC 8894 §3.3.4): a certificate by issuer and serial number."""
        issuer, serial = self._issuer_and_serial(ca, msg, inner)
        async with self.engine.connect() as conn:
            record = await inventory.get(conn, inventory.serial_hex(serial))
        if record is None or record.ca != ca.name:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "no certificate with this issuer and serial number", msg)
        return _Outcome(PKIStatus.SUCCESS, content=codec.build_degenerate([record.der]), serial=record.serial)

    async def _get_crl(self, ca: CertificateAuthority, msg: codec.PKIMessage,
                       inner: codec.RequestContent) -> _Outcome:
        """GetCRL (RFC 8894 §3.3.4): the current CRL of the CA that issued the named certificate."""
        self._issuer_and_serial(ca, msg, inner)
        if self.crl_source is None:
            raise SCEPFailure(FailInfo.BAD_REQUEST, "no CRL is published by this server", msg)
        crl_der = await self.crl_source(ca.name)
        return _Outcome(PKIStatus.SUCCESS, content=codec.build_degenerate([], [crl_der]))

    def _issuer_and_serial(self, ca: CertificateAuthority, msg: codec.PKIMessage, inner: codec.RequestContent):
        if inner.issuer != ca.cert.subject:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "the issuer named is not this CA", msg)
        return inner.issuer, inner.serial

    # ------------------------------------------------------------------ pending enrolments

    async def decide(self, profile_name: str, transaction_id: str, *, approve: bool, actor: str,
                     reason: str | None = None) -> str:
        """Approve (issue now) or reject a pending enrolment; the device learns it at its next CertPoll."""
        profile = await self.profiles.get(profile_name)
        ca = self.cas[profile.ca]
        now = self.clock()
        row = await self._transaction(profile_name, transaction_id)
        if row is None or row["state"] != "pending":
            raise LookupError(f"no pending enrolment {transaction_id!r} on profile {profile_name!r}")
        m = row
        if not approve:
            await self._reject_pending(profile_name, transaction_id, reason or "rejected by an administrator",
                                       actor=actor, now=now, reason=reason)
            return "rejected"
        csr = x509.load_der_x509_csr(m["csr_der"])
        renewal_of = None
        if m.get("renewal_of"):
            async with self.engine.connect() as conn:
                renewal_of = await inventory.get(conn, m["renewal_of"])
            if renewal_of is None:
                raise LookupError(f"the certificate renewed by enrolment {transaction_id!r} no longer exists")
        supersede = renewal_of is not None and profile.settings.supersede_on_renewal
        try:
            cert = await self._run(ca.issue, csr, profile.policy, serial=random_serial(), now=now)
        except PolicyViolation as exc:  # the template changed while the enrolment waited
            text = f"the profile's certificate template refuses this request: {exc}"
            await self._reject_pending(profile_name, transaction_id, text, actor=actor, now=now, reason=text)
            raise ApprovalRefused(text) from None
        der = cert.public_bytes(DER)
        serial = inventory.serial_hex(cert.serial_number)
        if renewal_of is not None:
            device_id = renewal_of.enrolled_device_id
        else:
            device_id = (await self.device_identity(profile_name, transaction_id)
                         if self.device_identity and profile.settings.device_trust else None)
        cert_row = inventory.certificate_row(cert, der, ca.name, profile_name, transaction_id, m["public_key_sha256"],
                                             now)
        cert_row["enrolled_device_id"] = device_id
        if renewal_of is not None:
            cert_row.update(renewal_of=renewal_of.serial, unused_since=_unused_since(renewal_of, now))
        async with writer(self.engine).begin() as conn:
            if renewal_of is not None:
                try:
                    await _guard_signer(conn, renewal_of.serial, now, supersede=supersede)
                except _SignerChanged as exc:
                    raise LookupError(f"enrolment {transaction_id!r} cannot be approved: {exc}") from None
            await conn.execute(certificates.insert().values(cert_row))
            res = await conn.execute(scep_transactions.update().where(
                scep_transactions.c.profile == profile_name, scep_transactions.c.transaction_id == transaction_id,
                scep_transactions.c.state == "pending",
            ).values(state="issued", serial=serial, decided_by=actor, updated_at=now))
            if res.rowcount != 1:  # rolls the certificate back too
                raise Conflict(f"enrolment {transaction_id!r} was decided concurrently")
            await record_event(conn, at=now, kind="pki.cert.renew" if renewal_of else "pki.cert.issue", subject=serial,
                               actor=actor, data={"transaction_id": transaction_id, "approved": True,
                                                  "renewal_of": renewal_of.serial if renewal_of else None})
        if supersede:
            self.on_status_change(ca.name)
        return serial


    async def _reject_pending(self, profile_name: str, transaction_id: str, fail_text: str, *, actor: str,
                              now: datetime, reason: str | None) -> None:
        """Mark a pending enrolment rejected (the device learns it at its next CertPoll), with its audit event."""
        async with writer(self.engine).begin() as conn:
            res = await conn.execute(scep_transactions.update().where(
                scep_transactions.c.profile == profile_name, scep_transactions.c.transaction_id == transaction_id,
                scep_transactions.c.state == "pending",
            ).values(state="rejected", fail_text=fail_text, decided_by=actor, updated_at=now))
            if res.rowcount != 1:
                raise Conflict(f"enrolment {transaction_id!r} was decided concurrently")
            await record_event(conn, at=now, kind="scep.enrolment.reject", subject=transaction_id, actor=actor,
                               data={"profile": profile_name, "reason": reason})


def req_has_challenge(csr: x509.CertificateSigningRequest) -> bool:
    return bool(challenge_password(csr))


def _type_name(t) -> str:
    try:
        return MessageType(t).name
    except ValueError:
        return str(t)
