"""The challenge service (one per process) and the verifiers it registers with the SCEP service."""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import aiohttp
import sqlalchemy as sa
import structlog
from cryptography import x509

from ..ca.inventory import public_key_sha256
from ..enrolment import ChallengeRejected, EnrollmentRequest
from .. import metrics
from ..profiles import Profile, ProfileSettings
from trustkit.db import writer
from ..store.tables import profiles as profiles_table
from ..web.client import throttle_key
from .basic import P, R, CredentialChecker, hash_params, hash_password, username_matches
from .config import (BasicCredentials, ChallengeConfigError, DelegatedSettings, DynamicSettings, delegated_settings,
                     dynamic_settings)
from .intune import IntuneClient, IntuneRejected, IntuneUnavailable
# ENROLMENT_STATES, ENROLMENT_KEY, CacheFull and expectations_from are also what the HTTP handlers use of the stores
from .enrolments import ENROLMENT_KEY, STATES as ENROLMENT_STATES, find_enrolment, hourly_outcomes, page_enrolments
from .store import CacheFull, ChallengeStore, Expectations, IssuedChallenge, check_expectations, expectations_from
from .throttle import Limits, LoginThrottle, address_key, known_key, user_key
from .webhook import WebhookClient, WebhookDenied, WebhookUnavailable

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from trustkit.paging import Page, PageRequest

    from ..runtime import Runtime

log = structlog.get_logger("challenge")

PER_ADDRESS_QUEUE = 8  # Basic logins of one client address waiting for their turn in this process, at most
# a login answered from the credential cache records its address as known again at most this often (a process
# remembers when it last did, for this many addresses at most)
REMEMBER_EVERY = timedelta(hours=1)
REMEMBERED_ADDRESSES = 1024


class NotDynamic(Exception):
    """The profile does not use dynamic challenges."""


@dataclass(frozen=True)
class Login:
    """The outcome of a Basic login: ok, or refused (401), blocked (429, retry_after; `blocked_by` "address" or
    "username") or busy (503)."""

    ok: bool
    retry_after: "int | None" = None
    busy: bool = False
    blocked_by: "str | None" = None


class ChallengeService:
    def __init__(self, runtime: "Runtime"):
        self.runtime = runtime
        self.store = ChallengeStore(runtime.engine)
        self.credentials = CredentialChecker()
        section = runtime.settings.challenge
        self.throttle = LoginThrottle(runtime.engine, Limits.from_settings(section))
        self.scrypt_log2_n = section.scrypt_log2_n
        # password hashing has its own threads: a flood of logins never delays the SCEP work
        self._hasher = ThreadPoolExecutor(max_workers=section.hash_workers, thread_name_prefix="challenge-scrypt")
        self._max_waiting = section.max_waiting_checks
        self._waiting = 0
        self._per_address: dict[str, list] = {}  # address key -> [lock, requests holding or awaiting it]
        self._rehashed: set[tuple[str, str]] = set()
        self._remembered: OrderedDict[str, datetime] = OrderedDict()  # known_key -> when this process recorded it
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, tuple[str, object]] = {}

    # ------------------------------------------------------------------ dynamic

    async def dynamic_profile(self, name: str) -> tuple[Profile, DynamicSettings]:
        profile = await self.runtime.profiles.get(name)
        if profile.challenge_kind != "dynamic":
            raise NotDynamic(f"profile {name!r} does not use dynamic challenges")
        return profile, dynamic_settings(profile.settings.challenge)

    async def new_challenge(self, name: str, *, source: str, requested_by: str | None = None,
                            payload_identifier: str | None = None,
                            expectations: Expectations | None = None) -> IssuedChallenge:
        profile, settings = await self.dynamic_profile(name)
        issued = await self.store.issue(profile.name, now=self.runtime.clock(),
                                        ttl=timedelta(minutes=settings.ttl_minutes), source=source,
                                        max_unused=settings.max_unused, requested_by=requested_by,
                                        payload_identifier=payload_identifier, expectations=expectations)
        metrics.challenge_issued(profile.name)
        log.info("challenge.issued", profile=profile.name, source=source, requested_by=requested_by,
                 payload_identifier=payload_identifier, expires_at=issued.expires_at.isoformat())
        return issued

    # ------------------------------------------------------------------ Basic login

    async def login(self, profile: str, creds: BasicCredentials, user: str, password: str, address: str) -> Login:
        """Check Basic credentials under the shared throttle (per client address and per username).

        One check at a time per client address in this process: guesses sent together are counted one after the
        other, so a burst gets no more checks than the address's limit (plus one per other server process). At
        most PER_ADDRESS_QUEUE logins of one address wait their turn (beyond: busy, 503, for that address only),
        and the checks under way, one per address, are at most ``max_waiting_checks`` (beyond: busy): one
        address, locked out or not, never takes the page away from the others."""
        by_address = address_key(profile, throttle_key(address))
        entry = self._per_address.get(by_address)
        if entry is None:
            entry = self._per_address[by_address] = [asyncio.Lock(), 0]
        if entry[1] >= PER_ADDRESS_QUEUE:
            return Login(False, 1, busy=True)
        entry[1] += 1
        try:
            async with entry[0]:
                if self._waiting >= self._max_waiting:
                    return Login(False, 1, busy=True)
                self._waiting += 1
                try:
                    return await self._login(profile, creds, user, password, throttle_key(address))
                finally:
                    self._waiting -= 1
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._per_address.pop(by_address, None)

    async def _login(self, profile: str, creds: BasicCredentials, user: str, password: str,
                     address: str) -> Login:
        """The username's lock does not hold back a pair verified moments ago in this process (not a guess), nor
        an address that logged in with this username within `known_address_hours` (recorded in the database for
        every process and instance): failures from others cannot lock the real client out. An address's own
        lock holds back every login from it."""
        now = self.runtime.clock()
        by_address = address_key(profile, address)
        by_user = user_key(profile, creds.username) if username_matches(creds, user) else None
        known = known_key(profile, creds.username, address)
        blocked = await self.throttle.blocked([by_address] + ([by_user] if by_user else []), now)
        if by_address in blocked:
            return Login(False, blocked[by_address], blocked_by="address")
        if self.credentials.cached(profile, creds, user, password):
            await self._remember(known, now, refresh=True)
            return Login(True)
        if by_user in blocked and not await self.throttle.known(known, now):
            return Login(False, blocked[by_user], blocked_by="username")
        ok = await asyncio.get_running_loop().run_in_executor(
            self._hasher, self.credentials.check, profile, creds, user, password)
        now = self.runtime.clock()
        if not ok:
            limits = self.throttle.limits
            keys = [(by_address, limits.failures_per_address)]
            if by_user is not None:
                keys.append((by_user, limits.failures_per_user))
            locked = await self.throttle.failed_keys(keys, now)
            if by_address in locked:
                metrics.challenge_login_lockout(profile, "address")
            if by_user is not None and by_user in locked:
                metrics.challenge_login_lockout(profile, "username")
                log.warning("challenge.username_locked", profile=profile, username=creds.username[:64],
                            lockout_seconds=limits.lockout_seconds,
                            known_address_hours=limits.known_address_seconds // 3600)
            return Login(False)
        await self.throttle.succeeded(by_address)
        await self._remember(known, now, refresh=False)
        if hash_params(creds.password_hash) != (self.scrypt_log2_n, R, P):
            try:
                await self._rehash(profile, creds, password)
            except Exception:  # noqa: BLE001 - the login stands; the old hash stays until the next one
                log.exception("challenge.password_rehash_failed", profile=profile)
        return Login(True)

    async def _remember(self, known: str, now: datetime, *, refresh: bool) -> None:
        """Record a good login of an address in the database: always after a password check; for a login the
        credential cache answered, when this process has not recorded that address for REMEMBER_EVERY (the
        record must outlive the cache, which slides)."""
        if self.throttle.limits.known_address_seconds <= 0:
            return
        every = min(REMEMBER_EVERY, timedelta(seconds=self.throttle.limits.known_address_seconds) / 4)
        last = self._remembered.get(known)
        if refresh and last is not None and timedelta(0) <= now - last < every:
            return
        await self.throttle.remember(known, now)
        self._remembered[known] = now
        self._remembered.move_to_end(known)
        while len(self._remembered) > REMEMBERED_ADDRESSES:
            self._remembered.popitem(last=False)

    async def _rehash(self, profile: str, creds: BasicCredentials, password: str) -> None:
        """Replace a hash of another cost after a good login (compare-and-set: a concurrent change wins)."""
        if (profile, creds.password_hash) in self._rehashed:
            return
        self._rehashed.add((profile, creds.password_hash))
        new = await asyncio.get_running_loop().run_in_executor(self._hasher, lambda: hash_password(
            password, log2_n=self.scrypt_log2_n))
        async with writer(self.runtime.engine).begin() as conn:
            row = (await conn.execute(sa.select(profiles_table.c.settings).where(
                profiles_table.c.name == profile))).first()
            if row is None:
                return
            settings = ProfileSettings.model_validate_json(row.settings or "{}")
            challenge = dict(settings.challenge)
            stored = dict(challenge.get("credentials") or {})
            if stored.get("password_hash") != creds.password_hash:
                return
            challenge["credentials"] = {**stored, "password_hash": new}
            updated = settings.model_copy(update={"challenge": challenge}).model_dump_json()
            res = await conn.execute(profiles_table.update().where(
                profiles_table.c.name == profile, profiles_table.c.settings == row.settings).values(
                settings=updated, updated_at=self.runtime.clock()))
        if res.rowcount == 1:
            log.info("challenge.password_rehashed", profile=profile, log2_n=self.scrypt_log2_n)

    # ------------------------------------------------------------------ outbound HTTP

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "scep-server"})
        return self._session

    def _client(self, profile: Profile, settings: DelegatedSettings):
        key = settings.model_dump_json()
        hit = self._clients.get(profile.name)
        if hit is None or hit[0] != key:
            client = IntuneClient(settings.intune, self.session) if settings.provider == "intune" \
                else WebhookClient(settings.webhook, self.session)
            hit = self._clients[profile.name] = (key, client)
        return hit[1]

    async def close(self) -> None:
        self._hasher.shutdown(wait=False, cancel_futures=True)
        await self.store.close()
        if self._session is not None:
            await self._session.close()
        self._clients.clear()


def certificate_names(req: EnrollmentRequest):
    """The subject and SANs the certificate of `req` gets (ca.policy.Vetted): as the enrolment vetted them, else
    as the profile's policy computes them now; ChallengeRejected when the policy refuses the request."""
    if req.vetted is not None:
        return req.vetted
    from ..ca.policy import PolicyViolation

    try:
        return req.profile.policy.subject_and_sans(req.csr)
    except PolicyViolation as exc:
        raise ChallengeRejected(str(exc)) from None


def _names_or_none(req: EnrollmentRequest):
    """certificate_names, or None when the policy refuses the request (a notification still describes it)."""
    try:
        return certificate_names(req)
    except ChallengeRejected:
        return None


class DynamicVerifier:
    """A one-time challenge of this profile, unused and unexpired, whose expectations the certificate meets: its
    subject and SANs as the profile's policy computes them (the SANs it derives from the subject included), never
    only what the CSR writes."""

    def __init__(self, service: ChallengeService):
        self.service = service

    async def verify(self, req: EnrollmentRequest) -> str | None:
        try:
            dynamic_settings(req.profile.settings.challenge)
        except ChallengeConfigError as exc:
            raise ChallengeRejected(f"this profile is misconfigured: {exc}") from None
        try:
            names = certificate_names(req)
            redeemed = await self.service.store.redeem(
                req.profile.name, req.challenge, now=self.service.runtime.clock(),
                transaction_id=req.message.transaction_id,
                public_key_sha256=req.public_key_sha256 or public_key_sha256(req.csr.public_key()),
                check=lambda expected: check_expectations(names, expected, named_device=req.named_device))
        except ChallengeRejected:
            metrics.challenge_redeemed(req.profile.name, "refused")
            raise
        metrics.challenge_redeemed(req.profile.name, "redeemed")
        log.info("challenge.redeemed", profile=req.profile.name, transaction_id=req.message.transaction_id,
                 source=redeemed.source, payload_identifier=redeemed.payload_identifier)
        return redeemed.expectations.device_id

    async def after_issue(self, req: EnrollmentRequest, cert: x509.Certificate) -> None:
        return None

    async def after_failure(self, req: EnrollmentRequest, text: str) -> None:
        return None


INTUNE_DEVICE_URI = "intunedeviceid://"


def intune_device_id(csr: x509.CertificateSigningRequest) -> str | None:
    """The Intune device id of a request Intune validated: its URI SAN ``IntuneDeviceId://{{DeviceId}}`` (the
    SCEP profile's variable, filled in by Intune, which validates the request as a whole); None when absent
    or named more than once."""
    try:
        uris = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        return None
    found = {u[len(INTUNE_DEVICE_URI):] for u in uris if u.lower().startswith(INTUNE_DEVICE_URI)}
    found.discard("")
    return found.pop() if len(found) == 1 and len(next(iter(found))) <= 64 else None


class _Denied(ChallengeRejected):
    """Intune or the webhook said no (as opposed to: could not be asked)."""


class DelegatedVerifier:
    """Intune or a webhook decides; they learn the outcome (success or failure notification)."""

    def __init__(self, service: ChallengeService):
        self.service = service

    def _client(self, req: EnrollmentRequest):
        try:
            settings = delegated_settings(req.profile.settings.challenge)
        except ChallengeConfigError as exc:
            raise ChallengeRejected(f"this profile is misconfigured: {exc}") from None
        return self.service._client(req.profile, settings)

    async def verify(self, req: EnrollmentRequest) -> str | None:
        client = self._client(req)
        provider = "intune" if isinstance(client, IntuneClient) else "webhook"
        started = time.perf_counter()
        outcome = "unavailable"
        try:
            found = await self._validate(req, client)
            outcome = "allowed"
            return found
        except _Denied:
            outcome = "denied"
            raise
        finally:
            metrics.delegated_validation(provider, outcome, time.perf_counter() - started)

    async def _validate(self, req: EnrollmentRequest, client) -> str | None:
        txid = req.message.transaction_id
        try:
            if isinstance(client, IntuneClient):
                if not req.challenge:
                    raise _Denied("the CSR carries no challengePassword (Intune: ChallengePasswordMissing)")
                await client.validate(txid, req.csr_der)
            else:
                await client.validate(profile=req.profile.name, transaction_id=txid, challenge=req.challenge,
                                      csr=req.csr, csr_der=req.csr_der, names=certificate_names(req))
        except IntuneRejected as exc:
            log.warning("challenge.intune.rejected", profile=req.profile.name, transaction_id=txid, code=exc.code,
                        description=exc.description)
            raise _Denied(f"Intune rejected the request: {exc.code}"
                                    + (f" ({exc.description})" if exc.description else "")) from None
        except IntuneUnavailable as exc:
            log.error("challenge.intune.unavailable", profile=req.profile.name, transaction_id=txid, error=str(exc))
            raise ChallengeRejected(f"Intune validation is unavailable: {exc}") from None
        except WebhookDenied as exc:
            log.warning("challenge.webhook.denied", profile=req.profile.name, transaction_id=txid, error=str(exc))
            raise _Denied(f"the validation webhook denied the request: {exc}") from None
        except (WebhookUnavailable, ChallengeConfigError) as exc:
            log.error("challenge.webhook.unavailable", profile=req.profile.name, transaction_id=txid, error=str(exc))
            raise ChallengeRejected(str(exc)) from None
        log.info("challenge.delegated.allowed", profile=req.profile.name, transaction_id=txid,
                 provider="intune" if isinstance(client, IntuneClient) else "webhook")
        return intune_device_id(req.csr) if isinstance(client, IntuneClient) else None

    async def after_issue(self, req: EnrollmentRequest, cert: x509.Certificate) -> None:
        client = self._client(req)
        txid = req.message.transaction_id
        if isinstance(client, IntuneClient):
            ca = self.service.runtime.cas[req.profile.ca]
            try:
                await client.success(txid, req.csr_der, cert, issuer=cert.issuer.rfc4514_string(), ca_name=ca.name)
            except (IntuneRejected, IntuneUnavailable) as exc:
                code = getattr(exc, "code", None)
                log.error("challenge.intune.success_notification_failed", profile=req.profile.name,
                          transaction_id=txid, code=code, error=str(exc))
                raise ChallengeRejected(f"Intune did not accept the success notification: {exc}") from None
            return
        try:
            await client.success(profile=req.profile.name, transaction_id=txid, csr=req.csr, csr_der=req.csr_der,
                                 cert=cert, names=_names_or_none(req))
        except (WebhookUnavailable, ChallengeConfigError) as exc:
            log.warning("challenge.webhook.success_notification_failed", profile=req.profile.name,
                        transaction_id=txid, error=str(exc))
            if client.settings.require_success_ack:
                raise ChallengeRejected(f"the success notification failed: {exc}") from None

    async def after_failure(self, req: EnrollmentRequest, text: str) -> None:
        client = self._client(req)
        txid = req.message.transaction_id
        try:
            if isinstance(client, IntuneClient):
                await client.failure(txid, req.csr_der, text)
            else:
                await client.failure(profile=req.profile.name, transaction_id=txid, csr=req.csr,
                                     csr_der=req.csr_der, reason=text, names=_names_or_none(req))
        except (IntuneRejected, IntuneUnavailable, WebhookUnavailable, ChallengeConfigError) as exc:
            log.warning("challenge.failure_notification_failed", profile=req.profile.name, transaction_id=txid,
                        error=str(exc))


async def enrolments(engine: AsyncEngine, page: "PageRequest", *, state: str | None,
                     profile: str | None, now: datetime | None = None) -> "Page[dict]":
    """A page of the enrolments in `state` (all when None), of one profile or all, for the admin API: approval
    works on every profile, so this needs no challenge service (the capability may be switched off)."""
    return await page_enrolments(engine, page, state=state, profile=profile, now=now)


async def enrolment(engine: AsyncEngine, profile: str, transaction_id: str,
                    now: datetime | None = None) -> "dict | None":
    """One enrolment (any state) with its request's key, for the admin pages; None when there is none."""
    return await find_enrolment(engine, profile, transaction_id, now=now)


async def enrolment_counts(engine: AsyncEngine, since: datetime, until: datetime) -> list[tuple[datetime, str, int]]:
    """(hour start, state, count) of the enrolments received in [since, until), for the console's dashboard (no
    challenge service needed either)."""
    return await hourly_outcomes(engine, since, until)
