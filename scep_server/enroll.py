"""The SCEP service (RFC 8894): GetCACaps, GetCACert, GetNextCACert and PKIOperation.

Checks are chained in front of the issuer: message check, challenge (or renewal by an issued
certificate), CSR policy, approval, then issue. Every failure after the outer SignedData parsed
becomes a signed CertRep FAILURE with its failInfo and a failInfoText.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import secrets
import sqlite3
import time
import threading
import weakref
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

from .ca import inventory
from .ca.authority import CertificateAuthority, random_serial
from .ca.inventory import CertRecord, Reason
from .ca.policy import PolicyViolation
from .clock import Clock, utcnow
from .profiles import Profile, ProfileStore
from .scep import message as codec
from .scep.types import ContentCipher, FailInfo, MalformedMessage, MessageType, PKIStatus, SCEPFailure
from .store.db import is_sqlite, writer
from .store.events import record_event
from .store.tables import certificates, events, scep_transactions

log = structlog.get_logger("scep")

DER = serialization.Encoding.DER


class ChallengeRejected(Exception):
    """The challenge (static, one-time or delegated) did not authorise this enrolment."""


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
                db.execute("BEGIN IMMEDIATE")  # take the write lock now (see store.db.writer)
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
        return await asyncio.to_thread(self.find_sync, profile, transaction_id)

    async def record(self, cert_row: dict, tx_row: dict, event_row: dict) -> None:
        await self.prepare()
        await asyncio.to_thread(self.record_sync, cert_row, tx_row, event_row)


def _sync_sqlite_engine(engine: AsyncEngine, synchronous: str) -> sa.Engine:
    """A pysqlite engine on the async engine's database file, with the same pragmas (see store.db)."""
    sync = sa.create_engine(engine.url.set(drivername="sqlite+pysqlite"), pool_size=8, max_overflow=8,
                            connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(sync, "connect")
    def _pragmas(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # BEGIN and COMMIT are ours
        for pragma in ("journal_mode=WAL", f"synchronous={synchronous}", "foreign_keys=ON", "busy_timeout=30000"):
            dbapi_conn.execute("PRAGMA " + pragma)

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
                 on_status_change: Callable[[str], None] | None = None):
        self.engine = engine
        self.cas = cas
        self.profiles = profiles
        self.verifiers: dict[str, ChallengeVerifier] = {"static": StaticChallenge(), **(verifiers or {})}
        self.clock = clock
        self.crl_source = crl_source
        self.on_status_change = on_status_change or (lambda ca: None)
        self._cacert_cache: dict[str, bytes] = {}
        self._store = _enrolment_store(engine)
        # (profile, transactionID) -> the device id an administrator pre-registered for it (binding feature)
        self.device_identity: Callable[[str, str], Awaitable[str | None]] | None = None

    # ------------------------------------------------------------------ GetCACaps / GetCACert

    async def get_ca_caps(self, profile_name: str) -> str:
        """RFC 8894 §3.5.2: capabilities generated from what this server enforces."""
        profile = await self.profiles.get(profile_name)
        caps = ["AES", "DES3", "SHA-1", "SHA-256", "SHA-512", "POSTPKIOperation", "SCEPStandard"]
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
        return await asyncio.to_thread(codec.build_next_ca_cert, ca.next_ca_ders, ra_cert_der=ca.ra_cert_der,
                                       sign=self._signer(ca), digest=codec.Digest.SHA256, signing_time=self.clock())

    # ------------------------------------------------------------------ PKIOperation

    async def pki_operation(self, profile_name: str, body: bytes) -> bytes:
        """Handle one pkiMessage; MalformedMessage (HTTP 400) only when no signer can be answered."""
        started = time.perf_counter()
        profile = await self.profiles.get(profile_name)
        ca = self.cas[profile.ca]
        msg: codec.PKIMessage | None = None
        await self._store.prepare()
        try:
            msg, inner, known = await asyncio.to_thread(self._open, body, ca, profile)
            outcome = await self._dispatch(profile, ca, msg, inner, known)
        except SCEPFailure as exc:
            if exc.message is None:
                raise MalformedMessage(exc.text) from None
            msg = exc.message
            outcome = _Outcome(PKIStatus.FAILURE, fail_info=exc.fail_info, fail_text=exc.text)
        reply = outcome.reply or await asyncio.to_thread(self._reply, ca, msg, outcome)
        log.info("scep.transaction", profile=profile.name, transaction_id=msg.transaction_id,
                 message_type=_type_name(msg.message_type), outcome=outcome.status.name,
                 fail_info=outcome.fail_info.name if outcome.fail_info is not None else None,
                 fail_text=outcome.fail_text, serial=outcome.serial,
                 duration_ms=round((time.perf_counter() - started) * 1000, 2))
        return reply

    def _open(self, body: bytes, ca: CertificateAuthority, profile: Profile):
        """Parse, verify and decrypt (CPU work, run in a thread); on SQLite, also find an enrolment's transaction."""
        msg = codec.parse_pki_message(body)
        if msg.message_type not in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ, MessageType.CERT_POLL,
                                    MessageType.GET_CERT, MessageType.GET_CRL):
            raise SCEPFailure(FailInfo.BAD_REQUEST, f"unsupported messageType {int(msg.message_type)}", msg)
        try:
            inner, cipher = codec.decrypt_envelope(msg, ca.ra_key.decrypt, recipient_cert_der=ca.ra_cert_der)
        except SCEPFailure as exc:
            raise exc.with_message(msg) from None
        if cipher is ContentCipher.DES_CBC and not profile.settings.allow_single_des:
            raise SCEPFailure(FailInfo.BAD_ALG, "single DES is not accepted by this profile; use AES or DES3", msg)
        known = _NOT_LOOKED_UP
        if self._store.inline and msg.message_type in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
            known = self._store.find_sync(profile.name, self._key(ca, msg))
        return msg, inner, known

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
                        inner: bytes, known=_NOT_LOOKED_UP) -> _Outcome:
        t = msg.message_type
        if t in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
            return await self._enrol(profile, ca, msg, inner, known)
        if t is MessageType.CERT_POLL:
            return await self._poll(profile, ca, msg, inner)
        if t is MessageType.GET_CERT:
            return await self._get_cert(ca, msg, inner)
        return await self._get_crl(ca, msg, inner)

    # ------------------------------------------------------------------ enrolment

    async def _enrol(self, profile: Profile, ca: CertificateAuthority, msg: codec.PKIMessage,
                     csr_der: bytes, known=_NOT_LOOKED_UP) -> _Outcome:
        try:
            csr = x509.load_der_x509_csr(csr_der)
            pub_sha = inventory.public_key_sha256(csr.public_key())
        except ValueError as exc:
            raise SCEPFailure(FailInfo.BAD_REQUEST, f"the envelope does not hold a PKCS#10 request: {exc}", msg) from None

        existing = known if known is not _NOT_LOOKED_UP else await self._transaction(profile.name, self._key(ca, msg))
        if existing is not None:
            return await self._replay(profile, msg, existing, pub_sha)

        renewal_of = await self._renewal_certificate(profile, ca, msg, csr)
        req = EnrollmentRequest(profile=profile, message=msg, csr=csr, csr_der=csr_der,
                                challenge=challenge_password(csr), renewal_of=renewal_of)
        verifier = self.verifiers.get(profile.challenge_kind)
        device_id = renewal_of.enrolled_device_id if renewal_of is not None else None
        if renewal_of is None:
            if verifier is None:
                raise SCEPFailure(FailInfo.BAD_REQUEST,
                                  f"challenge kind {profile.challenge_kind!r} is not available on this server", msg)
            try:
                device_id = await verifier.verify(req)
            except ChallengeRejected as exc:
                raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
            if device_id is None and self.device_identity is not None and profile.settings.device_trust:
                device_id = await self.device_identity(profile.name, msg.transaction_id)
        req = dataclasses.replace(req, device_id=device_id)
        try:
            profile.policy.check(csr)
        except PolicyViolation as exc:
            if verifier is not None and renewal_of is None:
                await verifier.after_failure(req, str(exc))
            raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None

        now = self.clock()
        if profile.settings.require_approval and renewal_of is None:
            state = await self._insert_transaction(profile.name, self._key(ca, msg), msg, csr_der, pub_sha, "pending",
                                                    now)
            if state is not None:  # a parallel retry won the insert
                return await self._replay(profile, msg, state, pub_sha)
            return _Outcome(PKIStatus.PENDING)
        return await self._issue(profile, ca, req, pub_sha, now, verifier if renewal_of is None else None)

    async def _issue(self, profile: Profile, ca: CertificateAuthority, req: EnrollmentRequest, pub_sha: str,
                     now: datetime, verifier: ChallengeVerifier | None) -> _Outcome:
        msg = req.message
        key = self._key(ca, msg)
        supersede = req.renewal_of is not None and profile.settings.supersede_on_renewal
        inline = self._store.inline and not supersede
        for _attempt in range(3):
            # One thread hop signs the certificate and its CertRep (and on SQLite commits the rows in between);
            # the reply leaves only once the rows are committed.
            cert, rows, outcome = await asyncio.to_thread(self._sign, profile, ca, req, key, pub_sha, now, inline)
            try:
                if outcome is None:
                    raise rows  # the inline write's IntegrityError
                if supersede:
                    await self._record_renewal(req.renewal_of, *rows, now)
                elif not inline:
                    await self._store.record(*rows[:2], _event_row(**rows[2]))
            except IntegrityError:
                # A concurrent retry of the same transaction inserted first: answer with its result.
                existing = await self._transaction(profile.name, key)
                if existing is not None:
                    return await self._replay(profile, msg, existing, pub_sha)
                continue  # the random serial (127 bits) was taken: sign again with a fresh one
            break
        else:
            raise RuntimeError(f"could not record a certificate for transaction {key!r}")
        if supersede:
            self.on_status_change(ca.name)
        if verifier is not None:
            try:
                await verifier.after_issue(req, cert)
            except ChallengeRejected as exc:
                await self._withdraw(ca, outcome.serial, profile.name, key, str(exc))
                raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
        return outcome

    def _sign(self, profile: Profile, ca: CertificateAuthority, req: EnrollmentRequest, key: str, pub_sha: str,
              now: datetime, inline: bool):
        """Issue the certificate, write its rows when ``inline``, and build the CertRep SUCCESS (in a thread).

        Returns (certificate, (certificate row, transaction row, event), outcome), or (certificate, the
        IntegrityError, None) when the inline write lost to a concurrent insert.
        """
        msg = req.message
        cert = ca.issue(req.csr, profile.policy, serial=random_serial(), now=now)
        der = cert.public_bytes(DER)
        cert_row = inventory.certificate_row(cert, der, ca.name, profile.name, msg.transaction_id, pub_sha, now)
        cert_row.update(renewal_of=req.renewal_of.serial if req.renewal_of else None, enrolled_device_id=req.device_id)
        serial = cert_row["serial"]
        tx_row = dict(profile=profile.name, transaction_id=key, state="issued", message_type=int(msg.message_type),
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

    async def _record_renewal(self, renewal_of: CertRecord, cert_row: dict, tx_row: dict, event: dict,
                              now: datetime) -> None:
        """Record a renewal and revoke the certificate it supersedes, in one transaction."""
        async with writer(self.engine).begin() as conn:
            await conn.execute(certificates.insert(), cert_row)
            await conn.execute(scep_transactions.insert(), tx_row)
            await inventory.set_status(conn, renewal_of.serial, "revoked", at=now, reason=int(Reason.SUPERSEDED))
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

    async def _renewal_certificate(self, profile: Profile, ca: CertificateAuthority, msg: codec.PKIMessage,
                                   csr: x509.CertificateSigningRequest) -> CertRecord | None:
        """RFC 8894 §2.3: a request signed by a certificate we issued is a renewal authenticated by it."""
        signer = msg.signer_cert
        if signer.issuer != ca.cert.subject or not ca.issued_by_us(signer):
            if msg.message_type is MessageType.RENEWAL_REQ and not req_has_challenge(csr):
                raise SCEPFailure(FailInfo.BAD_REQUEST,
                                  "RenewalReq must be signed by a valid certificate issued by this CA", msg)
            return None
        if not profile.settings.allow_renewal:
            raise SCEPFailure(FailInfo.BAD_REQUEST, "renewal is not enabled on this profile", msg)
        async with self.engine.connect() as conn:
            record = await inventory.get_by_fingerprint(conn, hashlib.sha256(msg.signer_cert_der).hexdigest())
        now = self.clock()
        if record is None:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "the signing certificate is not in this CA's inventory", msg)
        if record.status != "valid":
            raise SCEPFailure(FailInfo.BAD_REQUEST, f"the signing certificate is {record.status}", msg)
        if not record.not_before <= now < record.not_after:
            raise SCEPFailure(FailInfo.BAD_TIME, "the signing certificate is not within its validity period", msg)
        window = profile.settings.renewal_window_days
        if window is not None and record.not_after - now > timedelta(days=window):
            raise SCEPFailure(FailInfo.BAD_REQUEST,
                              f"renewal is accepted only within {window} days of expiry", msg)
        if csr.subject != signer.subject:
            raise SCEPFailure(FailInfo.BAD_REQUEST,
                              "the renewal request's subject differs from the signing certificate's", msg)
        return record

    # ------------------------------------------------------------------ transactions

    @staticmethod
    def _key(ca: CertificateAuthority, msg: codec.PKIMessage) -> str:
        """The idempotency key of an enrolment.

        Clients derive the transactionID from the public key (RFC 8894 §3.2.1.1), so a renewal that keeps its
        key repeats the original enrolment's transactionID: a request signed by one of our certificates is
        therefore its own transaction, keyed by the signing certificate's serial as well.
        """
        txid = msg.transaction_id
        signer = msg.signer_cert
        if signer.issuer == ca.cert.subject and ca.issued_by_us(signer):
            txid = f"{txid}/renewal/{signer.serial_number:x}"
        return txid if len(txid) <= 255 else "sha256:" + hashlib.sha256(txid.encode()).hexdigest()

    async def _transaction(self, profile: str, txid: str) -> dict | None:
        return await self._store.find(profile, txid)

    async def _insert_transaction(self, profile: str, key: str, msg: codec.PKIMessage, csr_der: bytes,
                                  pub_sha: str, state: str, now: datetime):
        """Insert a transaction row; on a concurrent duplicate return the existing row instead."""
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(scep_transactions.insert().values(
                    profile=profile, transaction_id=key, state=state,
                    message_type=int(msg.message_type), csr_der=csr_der, public_key_sha256=pub_sha,
                    created_at=now, updated_at=now))
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
        if state == "pending":
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
                    inner: bytes) -> _Outcome:
        """CertPoll (GetCertInitial, RFC 8894 §3.3.3): the state of a pending transaction."""
        try:
            issuer, _subject = codec.parse_issuer_and_subject(inner)
        except (ValueError, SCEPFailure) as exc:
            raise SCEPFailure(FailInfo.BAD_REQUEST, f"CertPoll content is not an IssuerAndSubject: {exc}", msg) from None
        if issuer != ca.cert.subject:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "CertPoll names an issuer that is not this CA", msg)
        row = await self._transaction(profile.name, self._key(ca, msg))
        if row is None:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "no enrolment with this transactionID", msg)
        return await self._state_outcome(profile, msg, row)

    async def _get_cert(self, ca: CertificateAuthority, msg: codec.PKIMessage, inner: bytes) -> _Outcome:
        """GetCert (RFC 8894 §3.3.4): a certificate by issuer and serial number."""
        issuer, serial = self._issuer_and_serial(ca, msg, inner)
        async with self.engine.connect() as conn:
            record = await inventory.get(conn, inventory.serial_hex(serial))
        if record is None or record.ca != ca.name:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, f"no certificate with serial {serial:x}", msg)
        return _Outcome(PKIStatus.SUCCESS, content=codec.build_degenerate([record.der]), serial=record.serial)

    async def _get_crl(self, ca: CertificateAuthority, msg: codec.PKIMessage, inner: bytes) -> _Outcome:
        """GetCRL (RFC 8894 §3.3.4): the current CRL of the CA that issued the named certificate."""
        self._issuer_and_serial(ca, msg, inner)
        if self.crl_source is None:
            raise SCEPFailure(FailInfo.BAD_REQUEST, "no CRL is published by this server", msg)
        crl_der = await self.crl_source(ca.name)
        return _Outcome(PKIStatus.SUCCESS, content=codec.build_degenerate([], [crl_der]))

    def _issuer_and_serial(self, ca: CertificateAuthority, msg: codec.PKIMessage, inner: bytes):
        try:
            issuer, serial = codec.parse_issuer_and_serial(inner)
        except (ValueError, SCEPFailure) as exc:
            raise SCEPFailure(FailInfo.BAD_REQUEST, f"content is not an IssuerAndSerialNumber: {exc}", msg) from None
        if issuer != ca.cert.subject:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "the issuer named is not this CA", msg)
        return issuer, serial

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
            async with writer(self.engine).begin() as conn:
                res = await conn.execute(scep_transactions.update().where(
                    scep_transactions.c.profile == profile_name, scep_transactions.c.transaction_id == transaction_id,
                    scep_transactions.c.state == "pending",
                ).values(state="rejected", fail_text=reason or "rejected by an administrator", decided_by=actor,
                         updated_at=now))
                if res.rowcount != 1:
                    raise LookupError(f"enrolment {transaction_id!r} was decided concurrently")
                await record_event(conn, at=now, kind="scep.enrolment.reject", subject=transaction_id, actor=actor,
                                   data={"profile": profile_name, "reason": reason})
            return "rejected"
        csr = x509.load_der_x509_csr(m["csr_der"])
        cert = await asyncio.to_thread(ca.issue, csr, profile.policy, serial=random_serial(), now=now)
        der = cert.public_bytes(DER)
        serial = inventory.serial_hex(cert.serial_number)
        device_id = (await self.device_identity(profile_name, transaction_id)
                     if self.device_identity and profile.settings.device_trust else None)
        async with writer(self.engine).begin() as conn:
            await conn.execute(certificates.insert().values({
                **inventory.certificate_row(cert, der, ca.name, profile_name, transaction_id, m["public_key_sha256"],
                                            now), "enrolled_device_id": device_id}))
            res = await conn.execute(scep_transactions.update().where(
                scep_transactions.c.profile == profile_name, scep_transactions.c.transaction_id == transaction_id,
                scep_transactions.c.state == "pending",
            ).values(state="issued", serial=serial, decided_by=actor, updated_at=now))
            if res.rowcount != 1:  # rolls the certificate back too
                raise LookupError(f"enrolment {transaction_id!r} was decided concurrently")
            await record_event(conn, at=now, kind="pki.cert.issue", subject=serial, actor=actor,
                               data={"transaction_id": transaction_id, "approved": True})
        return serial


def req_has_challenge(csr: x509.CertificateSigningRequest) -> bool:
    return bool(challenge_password(csr))


def _type_name(t) -> str:
    try:
        return MessageType(t).name
    except ValueError:
        return str(t)
