"""The YubiKey OTP factor: import, enrol, verify (sign-in API and protocol 2.0), report, revoke, delete."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustkit import paging
from trustkit.clock import utcnow
from trustkit.lookupcache import LookupCache
from trustkit.paging import Page, PageRequest, RowId
from trustkit.progress import Progress, report

from . import yubico
from .config import OtpSettings, ThrottleSettings
from .errors import REASON_TEXT, BackendError, Conflict, InvalidInput, NotFound, Reason
from .kek import KekError, SecretBox
from .report import KeyReport, ReportFilter, key_reports
from .secrets_csv import Issues, LineIssue, SecretRecord, parse_secrets
from .store import BACKEND_ERRORS, ClientRow, CounterUpdate, KeyMaterial, KeyState, NewKey, OtpStore
from .tables import ACTIVE, REVOKED, UNASSIGNED, otp_yubikeys
from .token import Token, TokenError, split_otp, verify_token

log = logging.getLogger(__name__)

CLIENT_KEY_BYTES = 20  # as ykval-gen-clients: 20 random bytes, 28 base64 characters
USER_MAX_LEN = 255
MAX_CLIENT_ID = 2**31 - 1  # client ids are 32-bit integer keys
CLIENT_LIST_KEY = (RowId,)  # the kinds of a client list's cursor: the id
# sl in replies: the percentage of validation servers that agreed. Counters live in one shared
# database that every process commits to before answering, so the whole "pool" agrees.
SYNC_LEVEL = 100
SEAL_CHUNK = 5000  # keys encrypted per hand-off to a thread during an import
KEK_REREAD_SECONDS = 1.0  # a key sealed under an unknown KEK makes the source be read again at most this often
KEK_SWITCH_SECONDS = 5.0  # how long a write that met a rotation waits for the rotated KEK to be in its source


@dataclass(frozen=True)
class VerifyOutcome:
    """The result of one verification: a stable reason, and the key it concerned when known."""

    reason: Reason
    serial: int | None = None
    public_id: str | None = None
    token: Token | None = field(default=None, repr=False)
    user: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason.ok

    @property
    def enrolled(self) -> bool:
        return self.reason is Reason.ENROLLED

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "OK" if self.ok else "REJECTED", "reason": self.reason.value,
                               "detail": REASON_TEXT[self.reason], "enrolled": self.enrolled}
        if self.serial is not None:
            out["serial"] = str(self.serial)
        if self.public_id:
            out["public_id"] = self.public_id
        if self.user is not None:
            out["user"] = self.user
        return out


@dataclass(frozen=True)
class ImportResult:
    """Outcome of an import or dry run: either every record imported, or none and every bad line named."""

    format: str
    dry_run: bool
    records: int
    imported: int
    errors: tuple[LineIssue, ...]
    warnings: tuple[LineIssue, ...]
    skipped: tuple[LineIssue, ...]
    import_id: int | None = None
    errors_total: int = 0  # every issue counted; the tuples above hold the first MAX_ISSUES of each, by line
    warnings_total: int = 0
    skipped_total: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def unlisted(self) -> dict[str, int]:
        """How many issues of each kind are counted but not listed (kinds with none left out)."""
        counts = {"errors": self.errors_total - len(self.errors), "warnings": self.warnings_total - len(self.warnings),
                  "skipped": self.skipped_total - len(self.skipped)}
        return {kind: n for kind, n in counts.items() if n > 0}

    def to_json(self) -> dict[str, Any]:
        def issues(items):
            return [{"line": i.line, "reason": i.reason} for i in items]
        return {"format": self.format, "dry_run": self.dry_run, "valid": self.ok, "records": self.records,
                "imported": self.imported, "import_id": self.import_id, "errors": issues(self.errors),
                "warnings": issues(self.warnings), "skipped": issues(self.skipped),
                "errors_total": self.errors_total, "warnings_total": self.warnings_total,
                "skipped_total": self.skipped_total}


class _KekRotated(Exception):
    """A write transaction found another KEK recorded by a rotation than the one it sealed under."""

    def __init__(self, kek_id: str) -> None:
        super().__init__(kek_id)
        self.kek_id = kek_id


@dataclass(frozen=True)
class ClientInfo:
    """A protocol 2.0 API client (its key is shown once, at creation)."""

    id: int
    name: str
    created_at: datetime
    disabled_at: datetime | None
    allow_unsigned: bool = False

    @property
    def active(self) -> bool:
        return self.disabled_at is None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "active": self.active, "created_at": self.created_at.isoformat(),
                "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None,
                "allow_unsigned": self.allow_unsigned}


@dataclass(frozen=True, slots=True)
class _Client:
    id: int
    key: bytes = field(repr=False)
    allow_unsigned: bool = False


def _key_aad(public_id: str) -> bytes:
    return b"otp-yubikey:" + public_id.encode("ascii")


def secret_fingerprint(aes_key: bytes, private_id: bytes) -> str:
    """What identifies a key's secrets after they are wiped (SHA-256 of 176 random bits and a label: no way back to
    them): a key imported again with the same secrets is known as the key it was."""
    return hashlib.sha256(b"yubikey-otp-secrets\0" + aes_key + private_id).hexdigest()


def _gone(state: KeyState | None, material: KeyMaterial) -> bool:
    """The key this process read its secrets from is no longer there: deleted, or deleted and its row id taken by
    a key imported since (SQLite reuses the highest row id): the secrets are read again."""
    return state is None or state.deleted or state.import_id != material.import_id


def _client_aad(client_id: int) -> bytes:
    return b"otp-client:" + str(client_id).encode("ascii")


def source_subject(source: str) -> str:
    """The throttling key of a client address: an IPv6 address counts as its /64 (one host has them all)."""
    try:
        addr = ipaddress.ip_address(source)
    except ValueError:
        return source[:120]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def check_user(user: Any) -> str:
    """A user name from the sign-in API: a non-empty string without control characters."""
    if not isinstance(user, str) or not user.strip():
        raise InvalidInput("user must be a non-empty string")
    if len(user) > USER_MAX_LEN or any(ord(ch) < 32 or ord(ch) == 127 for ch in user):
        raise InvalidInput(f"user must be at most {USER_MAX_LEN} printable characters")
    return user


class OtpService:
    """Operations of the YubiKey OTP factor over one database; use as an async context manager."""

    def __init__(self, engine: AsyncEngine, settings: OtpSettings, kek: bytes, *,
                 clock: Callable[[], datetime] | None = None,
                 on_verified: Callable[[str, str], None] | None = None,
                 reload_kek: Callable[[], bytes] | None = None) -> None:
        """``on_verified(client, status)`` hears of every verification: client "signin" (the sign-in API), a
        protocol 2.0 client's id, or "unknown" (no such client); status the sign-in reason code or the protocol
        status. Both come from closed sets (client ids that exist), never from what a request wrote.

        ``reload_kek()`` reads the KEK from its source again: a key sealed under a KEK this process does not
        hold (the KEK was rotated since it started: ``otp kek rotate``) makes it read the new one and seal
        with it from then on, without a restart. Keys cached under the previous KEK still open."""
        self.settings = settings
        self._on_verified = on_verified
        self.store = OtpStore(engine)
        self._box = SecretBox(kek)
        self._boxes: dict[str, SecretBox] = {self._box.kek_id: self._box}  # every KEK this process read
        self._reload_kek = reload_kek
        self._kek_read_at = float("-inf")  # when the source was last read again
        self._clock = clock or utcnow
        # SQLite has one writer at a time: a second in-process writer would only sleep in the busy handler.
        inflight = 1 if self.store.is_sqlite else settings.commit_inflight
        self._committer = self.store.counter_committer(self._clock, max_batch=settings.commit_batch_max,
                                                       max_inflight=inflight)
        self._loader = self.store.material_loader(max_inflight=settings.commit_inflight)
        self._materials: dict[str, KeyMaterial] = {}
        # protocol 2.0 clients by id, emptied at each change of a client here (a lookup in flight then caches
        # nothing); other processes see a change when their entry expires
        self._clients: LookupCache[int, _Client | None] = LookupCache(lambda: self.settings.client_cache_seconds)
        self._blocked: dict[str, datetime] = {}  # throttled sources and clients, until when
        self._wsapi_statuses = (UNASSIGNED, ACTIVE) if settings.wsapi_accept_unassigned else (ACTIVE,)
        # verifications per (hour, api, protocol 2.0 status) not yet added to the store (flush_verify_counts)
        self._verify_counts: dict[tuple[datetime, str, str], int] = {}

    async def __aenter__(self) -> "OtpService":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit the counter updates still queued, and the verification counts."""
        await self._committer.aclose()
        await self._loader.aclose()
        try:
            await self.flush_verify_counts()
        except BACKEND_ERRORS as exc:
            log.error("otp.verify_counts.failed", exc_info=exc)

    def _count_verification(self, api: str, status: str) -> None:
        hour = self._clock().astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        key = (hour, api, status)
        self._verify_counts[key] = self._verify_counts.get(key, 0) + 1

    async def flush_verify_counts(self) -> int:
        """Add the verifications counted since the last flush to the store's hourly counts (the dashboard's
        chart); the number of verifications added. Counts that fail to be written are kept for the next flush."""
        counts, self._verify_counts = self._verify_counts, {}
        try:
            await self.store.add_verify_counts(counts)
        except BaseException:
            for key, n in counts.items():
                self._verify_counts[key] = self._verify_counts.get(key, 0) + n
            raise
        return sum(counts.values())

    async def verify_counts(self, since: datetime, until: datetime) -> list[tuple[datetime, str, str, int]]:
        """(hour start, api, status, count) of the verifications recorded in [since, until), oldest first."""
        return await self.store.verify_counts(since.astimezone(timezone.utc), until.astimezone(timezone.utc))

    @property
    def kek_id(self) -> str:
        return self._box.kek_id

    # ---- verification -------------------------------------------------------------------------

    async def verify_signin(self, user: str, otp: str, *, source: str | None = None,
                            caller: str | None = None) -> VerifyOutcome:
        """Sign-in API: an UNASSIGNED key's first valid OTP enrols it to `user`; an ACTIVE key verifies
        only for its user. `source` is the caller's address and `caller` who it is (a token's name), for
        throttling. Raises InvalidInput for a malformed request, BackendError when the store fails."""
        user = check_user(user)
        if not isinstance(otp, str):
            raise InvalidInput("otp must be a string")
        try:
            outcome = await self._verify(otp, user=user, nonce=None, client_id=None, source=source, caller=caller)
        except BACKEND_ERRORS as exc:
            log.error("otp.verify.backend_error", exc_info=exc)
            if self._on_verified is not None:
                self._on_verified("signin", Reason.BACKEND_ERROR.value)
            self._count_verification("signin", Reason.BACKEND_ERROR.wire_status.value)
            raise BackendError("the key store is unavailable") from None
        if self._on_verified is not None:
            self._on_verified("signin", outcome.reason.value)
        self._count_verification("signin", outcome.reason.wire_status.value)
        log.info("otp.verify", extra={"api": "signin", "user": user, "public_id": outcome.public_id,
                                      "reason": outcome.reason.value})
        return outcome

    async def verify_protocol(self, params: Mapping[str, str], *, source: str | None = None) -> str:
        """Validation protocol 2.0 `verify`: the signed reply body for these request parameters."""
        key = b""  # unknown client: the reply is still signed, with an empty key, as YK-VAL does
        resp: yubico.VerifyResponse
        label = "unknown"
        try:
            client_id = yubico.parse_client_id(params)
            client = await self._client(client_id)
            if client is None:
                raise yubico.ProtocolError(yubico.Status.NO_SUCH_CLIENT, "unknown or disabled client")
            key = client.key
            label = str(client_id)
            if "h" in params:
                if not yubico.signature_matches(params, key):
                    raise yubico.ProtocolError(yubico.Status.BAD_SIGNATURE, "request signature does not match")
            elif self.settings.require_signed_requests and not client.allow_unsigned:
                raise yubico.ProtocolError(yubico.Status.MISSING_PARAMETER, "h is required")
            else:
                log.info("otp.verify.unsigned", extra={"client_id": client_id, "source": source})
            req = yubico.parse_verify_request(params, client_id)
            outcome = await self._verify(req.otp, user=None, nonce=req.nonce, client_id=client_id, source=source)
            status = outcome.reason.wire_status
            if status in yubico.ECHO_STATUSES:
                tok = outcome.token if status is yubico.Status.OK and req.want_timestamp else None
                resp = yubico.VerifyResponse(
                    status, otp=req.otp, nonce=req.nonce, sl=SYNC_LEVEL,
                    timestamp=tok.timestamp if tok else None, sessioncounter=tok.usage_ctr if tok else None,
                    sessionuse=tok.session_use if tok else None)
            else:
                resp = yubico.VerifyResponse(status)
            if log.isEnabledFor(logging.INFO) and not outcome.ok:
                log.info("otp.verify", extra={"api": "wsapi", "client_id": client_id, "public_id": outcome.public_id,
                                              "reason": outcome.reason.value})
        except yubico.ProtocolError as exc:
            log.info("otp.verify.protocol_error", extra={"status": exc.status.value, "detail": str(exc)})
            resp = yubico.VerifyResponse(exc.status)
        except (*BACKEND_ERRORS, BackendError) as exc:
            log.error("otp.verify.backend_error", exc_info=exc)
            resp = yubico.VerifyResponse(yubico.Status.BACKEND_ERROR)
        if self._on_verified is not None:
            self._on_verified(label, resp.status.value)
        self._count_verification("wsapi", resp.status.value)
        return yubico.encode_response(resp, key, self._clock())

    async def _verify(self, otp: str, *, user: str | None, nonce: str | None, client_id: int | None,
                      source: str | None, caller: str | None = None) -> VerifyOutcome:
        try:
            parts = split_otp(otp)
        except TokenError:
            return await self._fail(Reason.MALFORMED_OTP, None, user=user, client_id=client_id, source=source,
                                    caller=caller)
        # Cached key material is only a hint: every decision against it is re-checked in the store,
        # and a failure that a stale entry could explain is retried once on fresh data.
        for attempt in range(3):
            fresh = attempt > 0
            material = await self._material(parts.public_id, fresh)
            if material is None:
                return await self._fail(Reason.UNKNOWN_KEY, None, public_id=parts.public_id, user=user,
                                        client_id=client_id, source=source, caller=caller)
            if material.status == REVOKED:
                if not fresh:
                    continue
                return await self._fail(Reason.REVOKED_KEY, material, user=user, client_id=client_id, source=source,
                                        caller=caller)
            try:
                aes_key, private_id = self._open_key(material)
            except KekError as exc:
                if not fresh:
                    continue
                log.error("otp.kek.mismatch", extra={"public_id": material.public_id, "detail": str(exc)})
                return VerifyOutcome(Reason.BACKEND_ERROR, material.serial, material.public_id, user=user)
            try:
                tok = verify_token(parts.block, aes_key, private_id)
            except TokenError as exc:
                if not fresh:
                    continue  # the key may have been deleted and re-imported with new secrets
                reason = Reason.PRIVATE_ID_MISMATCH if exc.reason == "bad_private_id" else Reason.INVALID_OTP
                return await self._fail(reason, material, user=user, client_id=client_id, source=source,
                                        caller=caller)
            update = CounterUpdate(material.id, tok.usage_ctr, tok.session_use, tok.timestamp, nonce,
                                   material.import_id)
            if user is None:
                outcome = await self._commit_protocol(material, update, tok, client_id, source)
            else:
                outcome = await self._commit_signin(material, update, tok, user, source, caller)
            if outcome is not None:
                return outcome
        return await self._fail(Reason.UNKNOWN_KEY, None, public_id=parts.public_id, user=user, client_id=client_id,
                                source=source, caller=caller)

    def _classify(self, state: KeyState, tok: Token, nonce: str | None, user: str | None,
                  statuses: tuple[str, ...], now: datetime) -> Reason | None:
        """Why a compare-and-set for this token fails against `state`, or None if it would succeed."""
        if state.status == REVOKED:
            return Reason.REVOKED_KEY
        if user is None and state.status not in statuses:
            return Reason.UNASSIGNED_KEY
        stored = (state.usage_ctr, state.session_use)
        if tok.counters == stored and nonce is not None and state.last_nonce == nonce:
            return Reason.REPLAYED_REQUEST
        if tok.counters <= stored:
            return Reason.REPLAYED_OTP  # before WRONG_USER: an old OTP of a key is no evidence against it
        if user is not None and state.status == ACTIVE and state.user_name != user:
            return Reason.WRONG_USER
        if state.blocked_until is not None and state.blocked_until > now:
            return Reason.THROTTLED
        return None

    async def _commit_protocol(self, material: KeyMaterial, update: CounterUpdate, tok: Token,
                               client_id: int | None, source: str | None) -> VerifyOutcome | None:
        if await self._committer.submit((update, self._wsapi_statuses)):
            return VerifyOutcome(Reason.VERIFIED, material.serial, material.public_id, tok)
        state = await self.store.key_state(material.id)
        if _gone(state, material):
            self._materials.pop(material.public_id, None)
            return None
        reason = self._classify(state, tok, update.nonce, None, self._wsapi_statuses, self._clock())
        if reason is None:
            return None  # the key changed under us (unblocked, re-enrolled): judge the OTP again
        return await self._fail(reason, material, client_id=client_id, source=source, token=tok)

    async def _commit_signin(self, material: KeyMaterial, update: CounterUpdate, tok: Token, user: str,
                             source: str | None, caller: str | None) -> VerifyOutcome | None:
        now = self._clock()
        async with self.store.begin_write() as conn:
            state = await self.store.key_state(material.id, conn, for_update=True)
            if _gone(state, material):
                self._materials.pop(material.public_id, None)
                return None
            reason = self._classify(state, tok, None, user, (UNASSIGNED, ACTIVE), now)
            if reason is None:
                enrol = state.status == UNASSIGNED
                if not await self.store.compare_and_set(conn, update, now, user=user, enrol=enrol):
                    raise RuntimeError("compare-and-set failed on a locked row")  # pragma: no cover
                if enrol:
                    await self.store.add_event(conn, at=now, kind="otp.key.enrolled", key_id=state.id,
                                               serial=state.serial, public_id=state.public_id, user=user,
                                               source=source, actor=user)
                return VerifyOutcome(Reason.ENROLLED if enrol else Reason.VERIFIED, state.serial, state.public_id,
                                     tok, user=user)
            if reason.counts_against_key:
                # used up: an OTP shown to somebody else (typed into a phishing page) counts against its key
                # once, not each time it is presented again, so one captured OTP cannot keep the key blocked
                await self.store.use_up(conn, update)
                reason = await self._note_key_failure(conn, reason, state, user=user, source=source, now=now)
        if reason.proves_nothing:  # revoked meanwhile
            return await self._fail(reason, material, user=user, client_id=None, source=source, caller=caller)
        return VerifyOutcome(reason, material.serial, material.public_id, user=user)

    async def _fail(self, reason: Reason, material: KeyMaterial | None, *, public_id: str | None = None,
                    user: str | None = None, client_id: int | None, source: str | None, caller: str | None = None,
                    token: Token | None = None) -> VerifyOutcome:
        """Record what a failure calls for (security event, throttling) and build the outcome."""
        public_id = material.public_id if material else public_id
        serial = material.serial if material else None
        if reason.proves_nothing:
            reason = await self._note_anonymous_failure(reason, material, public_id=public_id, user=user,
                                                        client_id=client_id, source=source, caller=caller)
        return VerifyOutcome(reason, serial, public_id, user=user)

    def _throttle_subjects(self, source: str | None, client_id: int | None,
                           caller: str | None) -> list[tuple[str, str, ThrottleSettings]]:
        """(subject, label, limits) of each party a failure is counted against."""
        subjects = []
        if source:
            subjects.append((f"source:{source_subject(source)}", "source", self.settings.throttle_source))
        if client_id is not None:
            subjects.append((f"client:{client_id}", "client", self.settings.throttle_client))
        elif caller:
            subjects.append((f"signin:{caller}"[:160], "client", self.settings.throttle_client))
        return subjects

    async def _note_anonymous_failure(self, reason: Reason, material: KeyMaterial | None, *, public_id: str | None,
                                      user: str | None, client_id: int | None, source: str | None,
                                      caller: str | None) -> Reason:
        """Count a failure that proves nothing about the key's holder against its source address and API
        client (never the key or a user); THROTTLED while either is blocked. A blocked party's failures
        cost no write: the block is remembered in memory until it ends."""
        now = self._clock()
        subjects = self._throttle_subjects(source, client_id, caller)
        if any((until := self._blocked.get(subject)) is not None and until > now for subject, _, _ in subjects):
            return Reason.THROTTLED
        event = reason in (Reason.UNKNOWN_KEY, Reason.REVOKED_KEY)
        if not subjects and not event:
            return reason
        key_id = material.id if material else None
        serial = material.serial if material else None
        throttled = False
        async with self.store.begin_write() as conn:
            for subject, label, limits in subjects:
                until, started = await self.store.note_throttle_failure(conn, subject, now, limits)
                if until is None:
                    continue
                if len(self._blocked) >= 10_000:
                    self._blocked.clear()
                self._blocked[subject] = until
                if not started:
                    throttled = True
                    continue
                await self.store.add_event(conn, at=now, kind=f"security.otp.{label}_throttled", key_id=key_id,
                                           serial=serial, public_id=public_id, user=user, client_id=client_id,
                                           source=source, actor=caller,
                                           detail={"subject": subject, "blocked_until": until.isoformat()})
                log.warning("otp.security", extra={"reason": f"{label}_throttled", "subject": subject,
                                                   "blocked_until": until.isoformat(), "source": source,
                                                   "client_id": client_id, "caller": caller})
            if throttled:
                return Reason.THROTTLED
            if event:
                await self.store.add_event(conn, at=now, kind=f"security.otp.{reason.value}", key_id=key_id,
                                           serial=serial, public_id=public_id, user=user, client_id=client_id,
                                           source=source, actor=caller)
        if event:
            log.warning("otp.security", extra={"reason": reason.value, "public_id": public_id, "user": user,
                                               "client_id": client_id, "source": source})
        return reason

    async def _note_key_failure(self, conn: AsyncConnection, reason: Reason, state: KeyState, *, user: str,
                                source: str | None, now: datetime) -> Reason:
        """A fresh OTP of a key enrolled to another user: a security event, and a count against that key
        (its holder is the one trying), in the caller's transaction."""
        await self.store.add_event(conn, at=now, kind=f"security.otp.{reason.value}", key_id=state.id,
                                   serial=state.serial, public_id=state.public_id, user=user, source=source,
                                   detail={"enrolled_user": state.user_name})
        log.warning("otp.security", extra={"reason": reason.value, "public_id": state.public_id, "user": user,
                                           "source": source})
        if state.blocked_until is not None and state.blocked_until > now:
            return Reason.THROTTLED
        if await self.store.note_key_failure(conn, state, now, self.settings.throttle_key):
            await self.store.add_event(conn, at=now, kind="security.otp.key_throttled", key_id=state.id,
                                       serial=state.serial, public_id=state.public_id, user=user, source=source)
            log.warning("otp.security", extra={"reason": "key_throttled", "public_id": state.public_id,
                                               "user": user, "source": source})
        return reason

    async def _material(self, public_id: str, fresh: bool) -> KeyMaterial | None:
        if not fresh:
            cached = self._materials.get(public_id)
            if cached is not None:
                return cached
        material = await self._loader.submit(public_id) if public_id else None
        if material is None:
            self._materials.pop(public_id, None)
        elif self.settings.key_cache_size:
            if len(self._materials) >= self.settings.key_cache_size and public_id not in self._materials:
                self._materials.pop(next(iter(self._materials)))
            self._materials[public_id] = material
        return material

    def _box_for(self, kek_id: str) -> SecretBox:
        """The KEK a value was sealed under: one this process read, else the source read again (at most once a
        second) in case the KEK was rotated; KekError when it is not that one either."""
        box = self._boxes.get(kek_id)
        if box is not None:
            return box
        if self._reload_kek is not None and time.monotonic() - self._kek_read_at >= KEK_REREAD_SECONDS:
            self.refresh_kek()
            box = self._boxes.get(kek_id)
            if box is not None:
                return box
        raise KekError(f"key sealed under KEK {kek_id or '(none)'}, this server has {self._box.kek_id}")

    def refresh_kek(self) -> bool:
        """Read the KEK from its source again; True when it changed (it seals from now on)."""
        if self._reload_kek is None:
            return False
        self._kek_read_at = time.monotonic()
        box = SecretBox(self._reload_kek())
        if box.kek_id == self._box.kek_id:
            return False
        self._boxes[box.kek_id] = box
        previous, self._box = self._box.kek_id, box
        log.warning("otp.kek.reloaded", extra={"kek_id": box.kek_id, "previous_kek_id": previous})
        return True

    async def _check_kek(self, conn: AsyncConnection, box: SecretBox) -> None:
        """Inside a write transaction, after its writes: _KekRotated (the caller rolls back) when a rotation
        recorded another KEK than the one `box` sealed these writes under (docs/otp.md "Rotating the
        key-encryption key")."""
        recorded = await self.store.recorded_kek_id(conn)
        if recorded is not None and recorded != box.kek_id:
            raise _KekRotated(recorded)

    async def _rotated_box(self, rotated: _KekRotated, again: bool, what: str) -> SecretBox:
        """The KEK a rotation recorded, from the KEK source read again (waiting up to KEK_SWITCH_SECONDS for the
        rotating command to put it in place), to seal a rolled-back write again under. BackendError (503, nothing
        written: the caller may retry) when the source does not hold it by then, or `again` (a second rotation)."""
        deadline = time.monotonic() + KEK_SWITCH_SECONDS
        while not again and self._reload_kek is not None:
            self.refresh_kek()
            if self._box.kek_id == rotated.kek_id:
                return self._box
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        log.error("otp.kek.mismatch", extra={"kek_id": rotated.kek_id,
                                             "detail": f"the key-encryption key was rotated during this {what}; "
                                                       f"this server has {self._box.kek_id}"})
        raise BackendError(f"the key-encryption key was rotated to KEK {rotated.kek_id} while this {what} was "
                           f"written and this server does not hold it yet (it has {self._box.kek_id}); nothing was "
                           "written: try again once the new key-encryption key file is in place") from None

    def _open_key(self, material: KeyMaterial) -> tuple[bytes, bytes]:
        """AES key and private ID, decrypted in memory for this one verification."""
        plain = self._box_for(material.kek_id).open(material.secret_sealed, _key_aad(material.public_id))
        return plain[:16], plain[16:22]

    async def _client(self, client_id: int) -> _Client | None:
        if not 0 < client_id <= MAX_CLIENT_ID:
            return None
        return await self._clients.get(client_id, lambda: self._read_client(client_id))

    async def _read_client(self, client_id: int) -> _Client | None:
        row = await self.store.client(client_id)
        if row is None or row.disabled_at is not None:
            return None
        try:
            return _Client(row.id, self._box_for(row.kek_id).open(row.secret_sealed, _client_aad(row.id)),
                           row.allow_unsigned)
        except KekError as exc:
            log.error("otp.kek.mismatch", extra={"client_id": client_id, "detail": str(exc)})
            raise BackendError("client key does not open under this server's KEK") from None

    # ---- import -------------------------------------------------------------------------------

    async def import_secrets(self, data: bytes, *, dry_run: bool = False, actor: str | None = None,
                             progress: "Progress | None" = None) -> ImportResult:
        """Validate a secrets file and, unless `dry_run`, import all of it or nothing.

        ``progress(stage, done, total)`` (trustkit.progress) follows the long steps: "read" (lines parsed, from
        the parsing thread), "seal" (keys encrypted) and "write" (keys written, before the commit)."""
        line_progress = None if progress is None else (lambda done, total: progress("read", done, total))
        parsed = await asyncio.to_thread(parse_secrets, data, line_progress)
        errors = Issues(parsed.errors, parsed.errors_total)
        records = parsed.records
        if records:
            dup_serials, dup_ids = await self.store.live_duplicates([r.serial for r in records],
                                                                    [r.public_id for r in records])
            for r in records:
                if r.serial in dup_serials:
                    errors.append(LineIssue(r.line, f"serial {r.serial} is already in the inventory (a reprogrammed "
                                                    "key can be uploaded again once the old one is revoked and deleted)"))
                if r.public_id in dup_ids:
                    errors.append(LineIssue(r.line, f"public ID {r.public_id} already belongs to a key in the inventory"))

        def result(imported: int, errs: Issues, import_id: int | None = None) -> ImportResult:
            return ImportResult(format=parsed.format, dry_run=dry_run, records=len(records), imported=imported,
                                errors=errs.first(), warnings=parsed.warnings, skipped=parsed.skipped,
                                import_id=import_id, errors_total=errs.total, warnings_total=parsed.warnings_total,
                                skipped_total=parsed.skipped_total)

        if errors.total or dry_run:
            return result(0, errors)
        self.refresh_kek()  # never seal under a KEK rotated away since this process read it
        box = self._box  # one KEK for the whole import
        now = self._clock()
        again = False
        while True:
            keys: list[NewKey] = []
            for i in range(0, len(records), SEAL_CHUNK):  # in chunks, so that the progress moves
                keys += await asyncio.to_thread(self._seal_records, box, records[i:i + SEAL_CHUNK])
                report(progress, "seal", len(keys), len(records))
            try:
                async with self.store.begin_write() as conn:
                    import_id = await self.store.insert_import(conn, at=now, actor=actor, fmt=parsed.format,
                                                               file_sha256=hashlib.sha256(data).hexdigest(),
                                                               keys=keys, progress=progress)
                    carried = await self.store.carry_counters(conn, import_id)
                    await self._check_kek(conn, box)
                break
            except IntegrityError:
                return result(0, Issues([LineIssue(0, "another import added some of these keys at the same time; "
                                                      "nothing was imported, run the import again to see which "
                                                      "lines")], 1))
            except _KekRotated as rotated:  # rolled back: sealed again under the rotated KEK, once
                box, again = await self._rotated_box(rotated, again, "import"), True
        for r in records:
            self._materials.pop(r.public_id, None)
        try:
            await self.store.analyze()
        except SQLAlchemyError as exc:  # statistics are an optimisation; the import itself is committed
            log.warning("otp.import.analyze_failed", exc_info=exc)
        log.info("otp.import", extra={"import_id": import_id, "keys": len(keys), "format": parsed.format,
                                      "actor": actor, "counters_carried": carried})
        return result(len(keys), Issues(), import_id)

    @staticmethod
    def _seal_records(box: SecretBox, records: tuple[SecretRecord, ...]) -> list[NewKey]:
        return [NewKey(serial=r.serial, public_id=r.public_id,
                       secret_sealed=box.seal(r.aes_key + r.private_id + (r.access_code or b""), _key_aad(r.public_id)),
                       kek_id=box.kek_id, source_line=r.line,
                       secret_sha256=secret_fingerprint(r.aes_key, r.private_id)) for r in records]

    # ---- report, revoke, delete ---------------------------------------------------------------

    async def report(self, flt: ReportFilter = ReportFilter(), *, with_history: bool = True) -> list[KeyReport]:
        """Every key matching the filters (up to `flt.limit`), ordered by serial: for a few keys (one serial);
        lists read :meth:`report_page`."""
        return await self._report(flt, flt.limit, None, with_history)

    async def report_page(self, flt: ReportFilter, page: PageRequest, *,
                          with_history: bool = True) -> Page[KeyReport]:
        """One page of the report (serial, then row id: REPORT_KEY; docs/api.md "Pagination")."""
        rows = await self._report(flt, page.limit + 1, page.after, with_history)
        return paging.take(rows, page.limit, key=lambda r: (r.serial, r.key_id))

    def _where(self, flt: ReportFilter, *, with_status: bool = True) -> list[Any]:
        """The report's filters as conditions on the keys' table."""
        t = otp_yubikeys
        where: list[Any] = []
        if flt.status and with_status:
            where.append(t.c.status == flt.status)
        if flt.serial is not None:
            where.append(t.c.serial == flt.serial)
        if flt.user:
            where.append((t.c.user_name == flt.user) | (t.c.last_user == flt.user))
        if flt.public_id:
            where.append(t.c.public_id == flt.public_id)
        for col, after, before in ((t.c.imported_at, flt.imported_after, flt.imported_before),
                                   (t.c.enrolled_at, flt.enrolled_after, flt.enrolled_before),
                                   (t.c.last_used_at, flt.last_used_after, flt.last_used_before)):
            if after is not None:
                where.append(col >= after)
            if before is not None:
                where.append(col < before)
        if not flt.include_deleted:
            where.append(t.c.deleted_at.is_(None))
        return where

    async def status_counts(self, flt: ReportFilter = ReportFilter()) -> dict[str, int]:
        """How many keys of each status match the filters other than the status (the report's totals)."""
        return await self.store.status_counts(self._where(flt, with_status=False))

    async def _report(self, flt: ReportFilter, limit: int | None, start: tuple | None,
                      with_history: bool) -> list[KeyReport]:
        """Keys matching the filters, ordered by serial; every key ever assigned stays listed."""
        rows = await self.store.report_rows(self._where(flt), limit, start)
        history = await self.store.history([r["id"] for r in rows]) if with_history else None
        return key_reports(rows, history)

    async def _live_report(self, serial: int) -> KeyReport:
        rows = await self.report(ReportFilter(serial=serial, include_deleted=False))
        if not rows:  # deleted by another request since it was revoked
            raise NotFound(f"YubiKey {serial} was revoked, then deleted from the inventory")
        return rows[0]

    async def revoke(self, serial: int, *, actor: str | None = None) -> KeyReport:
        """Lost or stolen: REVOKED, user association removed, secrets wiped; never usable again."""
        now = self._clock()
        async with self.store.begin_write() as conn:
            state = await self.store.live_key_by_serial(conn, serial)
            if state is None:
                raise NotFound(f"no YubiKey with serial {serial} in the inventory")
            if state.status == REVOKED:
                raise Conflict(f"YubiKey {serial} is already revoked")
            await self.store.revoke(conn, state.id, now)
            await self.store.add_event(conn, at=now, kind="otp.key.revoked", key_id=state.id, serial=state.serial,
                                       public_id=state.public_id, user=state.user_name, actor=actor,
                                       detail={"status_before": state.status})
        self._materials.pop(state.public_id, None)
        log.info("otp.key.revoked", extra={"serial": serial, "actor": actor})
        return await self._live_report(serial)

    async def delete(self, serial: int, *, actor: str | None = None) -> str:
        """Delete an unassigned key, or take a revoked one out of the inventory (its history stays).

        Refuses a key that is ACTIVE for a user. Returns the status the key had.
        """
        now = self._clock()
        async with self.store.begin_write() as conn:
            state = await self.store.live_key_by_serial(conn, serial)
            if state is None:
                raise NotFound(f"no YubiKey with serial {serial} in the inventory")
            if state.status == ACTIVE:
                raise Conflict(f"YubiKey {serial} is ACTIVE for user {state.user_name!r}: an assigned key cannot be "
                               "deleted; revoke it first")
            if state.status == UNASSIGNED and state.usage_ctr < 0:  # never used: nothing to remember
                await self.store.hard_delete(conn, state.id)
            else:  # its counters stay: imported again with the same secrets, it goes on from them
                await self.store.soft_delete(conn, state.id, now)
            await self.store.add_event(conn, at=now, kind="otp.key.deleted", key_id=state.id, serial=state.serial,
                                       public_id=state.public_id, actor=actor, detail={"status_before": state.status})
        self._materials.pop(state.public_id, None)
        log.info("otp.key.deleted", extra={"serial": serial, "actor": actor, "status_before": state.status})
        return state.status

    async def delete_factor(self, *, actor: str | None = None) -> dict[str, int]:
        """Remove every OTP-mode key (cannot be undone): never-used unassigned ones vanish, the others stay only in history."""
        now = self._clock()
        async with self.store.begin_write() as conn:
            removed, retired = await self.store.delete_factor(conn, now, actor)
            await self.store.add_event(conn, at=now, kind="otp.factor.deleted", actor=actor,
                                       detail={"unassigned_removed": removed, "assigned_retired": retired})
        self._materials.clear()
        log.warning("otp.factor.deleted", extra={"actor": actor, "removed": removed, "retired": retired})
        return {"unassigned_removed": removed, "assigned_retired": retired}

    async def security_events(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Security events (unknown/revoked key use, wrong user, throttling), oldest first."""
        return await self.store.events(kind_prefix="security.", limit=limit)

    # ---- protocol 2.0 API clients -------------------------------------------------------------

    async def add_client(self, name: str = "", *, allow_unsigned: bool = False,
                         actor: str | None = None) -> tuple[ClientInfo, str]:
        """A new API client; returns it and its base64 key (shown only now). `allow_unsigned` lets a legacy
        client send requests without `h` (each one is logged)."""
        name = (name or "").strip()
        if len(name) > 255 or any(ord(ch) < 32 for ch in name):
            raise InvalidInput("client name must be at most 255 printable characters")
        secret = secrets.token_bytes(CLIENT_KEY_BYTES)
        now = self._clock()
        self.refresh_kek()  # never seal under a KEK rotated away since this process read it
        box, again = self._box, False
        while True:
            try:
                async with self.store.begin_write() as conn:
                    client_id = await self.store.add_client(conn, name, now, allow_unsigned=allow_unsigned)
                    await self.store.set_client_secret(conn, client_id, box.seal(secret, _client_aad(client_id)),
                                                       box.kek_id)
                    await self.store.add_event(conn, at=now, kind="otp.client.added", client_id=client_id,
                                               actor=actor, detail={"name": name, "allow_unsigned": allow_unsigned})
                    await self._check_kek(conn, box)
                break
            except _KekRotated as rotated:  # rolled back: sealed again under the rotated KEK, once
                box, again = await self._rotated_box(rotated, again, "client"), True
        self._clients.changed()  # an id looked up before it existed is no longer "no such client" here
        log.info("otp.client.added", extra={"client_id": client_id, "allow_unsigned": allow_unsigned})
        return ClientInfo(client_id, name, now, None, allow_unsigned), base64.b64encode(secret).decode("ascii")

    async def list_clients(self, page: PageRequest) -> Page[ClientInfo]:
        """One page of the API clients by id (CLIENT_LIST_KEY; docs/api.md "Pagination")."""
        rows = await self.store.clients(page)
        return Page(items=[_client_info(r) for r in rows.items], next_cursor=rows.next_cursor)

    async def get_client(self, client_id: int) -> ClientInfo:
        """One API client (never its key); NotFound when there is none."""
        row = await self.store.client(client_id) if 0 < client_id <= MAX_CLIENT_ID else None
        if row is None:
            raise NotFound(f"no OTP client with id {client_id}")
        return _client_info(row)

    async def set_client_unsigned(self, client_id: int, allow: bool, *, actor: str | None = None) -> ClientInfo:
        """Let a legacy client send unsigned requests, or require its signatures again: at once in this process
        (a request in flight aside), within client_cache_seconds in the others."""
        if not isinstance(allow, bool):
            raise InvalidInput("allow_unsigned must be true or false")
        now = self._clock()
        async with self.store.begin_write() as conn:
            if not 0 < client_id <= MAX_CLIENT_ID or not await self.store.set_client_unsigned(conn, client_id, allow):
                raise NotFound(f"no OTP client with id {client_id}")
            await self.store.add_event(conn, at=now, kind="otp.client.changed", client_id=client_id, actor=actor,
                                       detail={"allow_unsigned": allow})
        self._clients.changed()
        log.warning("otp.client.changed", extra={"client_id": client_id, "allow_unsigned": allow})
        row = await self.store.client(client_id)
        assert row is not None
        return _client_info(row)

    async def disable_client(self, client_id: int, *, actor: str | None = None) -> ClientInfo:
        """Disable a client: its requests get NO_SUCH_CLIENT, at once in this process (a request in flight
        aside), within client_cache_seconds in the others."""
        now = self._clock()
        disabled = await self.store.disable_client(client_id, now)
        self._clients.changed()
        if not disabled:
            row = await self.store.client(client_id)
            if row is None:
                raise NotFound(f"no OTP client with id {client_id}")
            raise Conflict(f"OTP client {client_id} is already disabled")
        await self.store.record_event(at=now, kind="otp.client.disabled", client_id=client_id, actor=actor)
        row = await self.store.client(client_id)
        assert row is not None
        return _client_info(row)

    # ---- retention ----------------------------------------------------------------------------

    async def prune(self) -> tuple[int, int]:
        """Delete security events past their retention and throttling rows past their window and block."""
        now = self._clock()
        s = self.settings
        window = max(s.throttle_source.window_seconds, s.throttle_client.window_seconds)
        events, rows = await self.store.prune(
            now, events_before=now - timedelta(days=s.security_event_retention_days),
            throttle_window=timedelta(seconds=window))
        for subject, until in list(self._blocked.items()):
            if until <= now:
                del self._blocked[subject]
        if events or rows:
            log.info("otp.prune", extra={"security_events": events, "throttle_rows": rows})
        return events, rows


def _client_info(row: ClientRow) -> ClientInfo:
    return ClientInfo(row.id, row.name, row.created_at, row.disabled_at, row.allow_unsigned)
