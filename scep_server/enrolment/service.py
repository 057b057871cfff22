"""The SCEP service (RFC 8894): GetCACaps, GetCACert, GetNextCACert and PKIOperation.

Checks are chained in front of the issuer: message check (the decryption stage), then the enrolment checks of
scep_server.enrolment.checks (retry, template, renewal by an issued certificate or challenge, approval), then
issue. Every failure after the outer SignedData parsed becomes a signed CertRep FAILURE with its failInfo and a
failInfoText. Storage is an EnrolmentRepository (scep_server.enrolment.repository).
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from typing import Awaitable, Callable

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import Clock, utcnow

from .. import metrics
from ..ca import inventory
from ..ca.authority import CertificateAuthority, random_serial
from ..ca.policy import MESSAGE_DIGEST_CAPS, PolicyViolation, Vetted, check_message_digest
from ..profiles import Profile, ProfileStore
from ..scep import message as codec
from ..scep.types import ContentCipher, FailInfo, MalformedMessage, MessageType, PKIStatus, SCEPFailure
from .approval import ApprovalWorkflow
from .checks import Check, Enrolment, default_checks
from .expiry import PendingExpiry
from .getcrl import GETCRL_QUEUE, GetCrlLane
from .model import (ACK_STALE_AFTER, MAX_TRANSACTION_ID, ChallengeRejected, ChallengeVerifier, EnrollmentRequest,
                    CaNotLoaded, NoNextCA, Opened, Outcome, StaticChallenge, bounded, expired_text, has_control_characters,
                    pending_expired, type_name, unused_since)
from .reconcile import AckReconciler
from .repository import DeviceTakenDown, Duplicate, EnrolmentRepository, NotPending, SignerChanged
from .sql import SqliteRepository, in_executor, repository_for

log = structlog.get_logger("scep")

DER = serialization.Encoding.DER


_LOOKUPS = (MessageType.CERT_POLL, MessageType.GET_CERT, MessageType.GET_CRL)


def _ra_ders(ca: CertificateAuthority) -> list[bytes]:
    return [cert_der for cert_der, _ in ca.ra_recipients]


def scep_threads(configured: int | None = None, workers: int = 1) -> int:
    """The size of the SCEP service's executor: configured, else the CPUs' share of each of the `workers` processes
    (at least one). More threads than that only contend for the process's GIL around the RSA operations: with two
    workers on two CPUs, one thread each gave 0.27-0.31 of the RSA ceiling and a p99 of 123-130 ms at
    concurrency 16, two threads each 0.25-0.26 and 174-175 ms (bench/README.md)."""
    return configured or max(1, (os.cpu_count() or 1) // max(1, workers))


class ScepService:
    """RFC 8894 operations for every profile."""

    def __init__(self, *, engine: AsyncEngine | None = None, cas: dict[str, CertificateAuthority],
                 profiles: ProfileStore, verifiers: dict[str, ChallengeVerifier] | None = None,
                 clock: Clock = utcnow, crl_source: Callable[[str], Awaitable[bytes]] | None = None,
                 on_status_change: Callable[[str], None] | None = None, threads: int | None = None,
                 repository: EnrolmentRepository | None = None,
                 device_identity: Callable[[str, str], Awaitable[str | None]] | None = None,
                 ensure_device: Callable[..., Awaitable[str | None]] | None = None,
                 refuse_issuing: str | None = None, ocsp_aia: bool = False,
                 pick_up_cas: Callable[[], Awaitable[list[str]]] | None = None, getcrl_queue: int = GETCRL_QUEUE):
        if repository is None:
            if engine is None:
                raise TypeError("ScepService needs an engine or a repository")
            repository = repository_for(engine)
        self.engine = engine
        self.cas = cas
        self.profiles = profiles
        self.verifiers: dict[str, ChallengeVerifier] = {"static": StaticChallenge(profiles), **(verifiers or {})}
        self.clock = clock
        self.crl_source = crl_source
        self.on_status_change = on_status_change or (lambda ca: None)
        self._cacert_cache: dict[str, tuple[CertificateAuthority, bytes]] = {}
        self._reserved: tuple = ()
        self._reserved_of: tuple = ()  # the CAs _reserved was built from (a rollover adds one at run time)
        self.repository: EnrolmentRepository = repository
        # SCEP's CPU work (parse, decrypt, sign) runs here, not on the loop's default executor: hostile requests
        # queue behind each other instead of starving everything else that uses threads
        self._executor = ThreadPoolExecutor(max_workers=scep_threads(threads), thread_name_prefix="scep")
        # an inline repository's durable commit waits here while the signing thread signs the CertRep (the two
        # overlap); a pool of its own, so that a signing thread never waits on work queued behind itself
        self._commits: ThreadPoolExecutor | None = None
        if isinstance(repository, SqliteRepository):
            repository.executor = self._executor
            self._commits = ThreadPoolExecutor(max_workers=scep_threads(threads), thread_name_prefix="scep-commit")
        # a GetCRL answer's work in proportion to the CRL runs in a lane of its own (one thread, at most
        # `getcrl_queue` GetCRLs, then 503): a flood of GetCRLs never holds the threads that serve enrolments
        self.getcrl = GetCrlLane(getcrl_queue)
        # (profile, transactionID) -> the device id an administrator pre-registered for it (binding feature)
        self.device_identity = device_identity
        # (device id, actor): register a device an enrolment names, if new, and return its status (binding
        # feature; profile `device_id`); with register=False only its status (None: not registered)
        self.ensure_device = ensure_device
        # why no certificate may be issued (server.base_url unset behind a wildcard listen address), or None:
        # enrolments and approvals are refused with this text; GetCACaps, GetCACert, CertPoll, GetCert still answer
        self.refuse_issuing = refuse_issuing
        # the OCSP responder runs ([ocsp] enabled): certificates of profiles with ocsp_aia name it in their AIA
        self.ocsp_aia = ocsp_aia
        # loads the CAs this process has not loaded yet (a CA rollover activated elsewhere), or None
        self.pick_up_cas = pick_up_cas
        self.checks: list[Check] = default_checks(self)
        self.approvals = ApprovalWorkflow(self)
        self.reconciler = AckReconciler(self)
        self.expiry = PendingExpiry(self)

    async def _run(self, fn, /, *args, **kwargs):
        return await in_executor(self._executor, fn, *args, **kwargs)

    async def close(self) -> None:
        """Stop the executor once the requests in it have finished (queued work that never started is dropped)."""
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._executor.shutdown, wait=True, cancel_futures=True))
        await self.getcrl.close()
        if self._commits is not None:
            self._commits.shutdown(wait=False)  # idle once the signing threads have finished

    async def ca_of(self, profile) -> CertificateAuthority:
        """The CA that issues for the profile. A profile may name a CA this process has not loaded yet: a
        rollover activated by another process moved it there. That CA is loaded now; until it can be, the
        request is answered 503 (try again), never with the previous CA."""
        return await self._loaded(profile.ca, f"of profile {profile.name!r}")

    async def _loaded(self, name: str, of: str) -> CertificateAuthority:
        """The CA ``name``, loaded now if this process has not loaded it yet (a rollover activated by another
        process); CaNotLoaded (503, try again) until it can be."""
        ca = self.cas.get(name)
        if ca is None and self.pick_up_cas is not None:
            try:
                await self.pick_up_cas()
            except Exception as exc:  # noqa: BLE001 - answered 503 below; the RA job tries again
                log.warning("ca.load_failed", ca=name, error=f"{exc.__class__.__name__}: {exc}")
            ca = self.cas.get(name)
        if ca is None:
            raise CaNotLoaded(f"the CA {name!r} {of} is not loaded here yet")
        return ca

    # ------------------------------------------------------------------ GetCACaps / GetCACert

    async def get_ca_caps(self, profile_name: str) -> str:
        """RFC 8894 §3.5.2: capabilities generated from what this server enforces."""
        profile = await self.profiles.get(profile_name)
        caps = ["AES", "DES3", *MESSAGE_DIGEST_CAPS, "POSTPKIOperation", "SCEPStandard"]
        if profile.settings.allow_renewal:
            caps.append("Renewal")
        if (await self.ca_of(profile)).next_ca_certs:
            caps.append("GetNextCACert")
        return "\n".join(caps) + "\n"

    async def get_ca_cert(self, profile_name: str) -> bytes:
        """RFC 8894 §4.2.1.2: RA certificate first (split: the signing one, then the encryption one, as NDES
        orders them), then the issuing CA, as a degenerate PKCS#7."""
        profile = await self.profiles.get(profile_name)
        ca = await self.ca_of(profile)
        cached = self._cacert_cache.get(profile.ca)
        if cached is None or cached[0] is not ca:  # a renewed RA replaces the CA object (scep_server.ca.ra)
            cached = self._cacert_cache[profile.ca] = (ca, codec.build_degenerate(ca.ca_cert_ders))
        return cached[1]

    async def get_next_ca_cert(self, profile_name: str) -> bytes:
        """RFC 8894 §4.7.1: the next CA, signed by the current RA."""
        profile = await self.profiles.get(profile_name)
        ca = await self.ca_of(profile)
        if not ca.next_ca_certs:
            raise NoNextCA(f"no CA rollover is configured for CA {ca.name!r}")
        return await self._run(codec.build_next_ca_cert, ca.next_ca_ders, ra_cert_der=ca.ra_cert_der,
                               sign=self._signer(ca), digest=codec.Digest.SHA256, signing_time=self.clock())

    # ------------------------------------------------------------------ PKIOperation

    async def pki_operation(self, profile_name: str, body: bytes, body_sha256: bytes | None = None) -> bytes:
        """Handle one pkiMessage; MalformedMessage (HTTP 400) only when no signer can be answered.

        ``body_sha256``: the body's SHA-256 when the caller has it already (the HTTP layer does)."""
        started = time.perf_counter()
        profile = await self.profiles.get(profile_name)
        ca = await self.ca_of(profile)
        digest = body_sha256 if body_sha256 is not None else hashlib.sha256(body).digest()
        cached = ca.failure_replies.get(profile.fingerprint, digest)  # a replayed bad message: no second RA signature
        if cached is not None:
            return cached
        msg: codec.PKIMessage | None = None
        opened = False
        await self.repository.prepare()
        try:
            request = await self._run(self._open, body, ca, profile)
            ca, msg, opened = request.ca, request.message, True
            outcome = await self._dispatch(profile, request)
        except SCEPFailure as exc:
            if exc.message is None:
                raise MalformedMessage(exc.text) from None
            msg = exc.message
            outcome = Outcome(PKIStatus.FAILURE, fail_info=exc.fail_info, fail_text=exc.text)
        reply = outcome.reply or await self._run(self._reply, ca, msg, outcome)
        if not opened:  # failed on its bytes alone (signature, structure, envelope): same bytes, same answer
            ca.failure_replies.put(profile.fingerprint, digest, reply)
        elapsed = time.perf_counter() - started
        fail_info = outcome.fail_info.name if outcome.fail_info is not None else None
        metrics.scep_transaction(profile.name, msg.message_type, outcome.status.name, fail_info, elapsed)
        log.info("scep.transaction", profile=profile.name, transaction_id=bounded(msg.transaction_id),
                 message_type=type_name(msg.message_type), outcome=outcome.status.name,
                 fail_info=fail_info, fail_text=outcome.fail_text, serial=outcome.serial,
                 duration_ms=round(elapsed * 1000, 2))
        return reply

    def _open(self, body: bytes, ca: CertificateAuthority, profile: Profile) -> Opened:
        """Parse, verify, decrypt and parse the content (CPU work, run in a thread); with an inline repository,
        also find an enrolment's transaction.

        Nothing is looked up before the content parsed: every decryption-stage fault is one answer after the
        same work (see codec.open_request). Single DES is refused from the envelope's algorithm, before any
        decryption, unless the profile allows it.
        """
        msg = codec.parse_pki_message(body)
        check_message_digest(msg)  # badAlg for a digest GetCACaps does not offer (MD5)
        ca = self.addressed_ca(ca, msg)
        try:
            content = codec.open_request(msg, None, recipients=ca.ra_recipients,
                                         allow_single_des=profile.settings.allow_single_des, issuer=ca.cert.subject)
        except SCEPFailure as exc:
            raise exc.with_message(msg) from None
        if content.cipher is ContentCipher.DES_CBC:
            log.warning("scep.single_des", profile=profile.name, transaction_id=msg.transaction_id,
                        message_type=type_name(msg.message_type))
        opened = Opened(ca, msg, content)
        if content.csr is not None:
            # the digests of the CSR's key and of the signer's, computed once for the whole enrolment
            opened.public_key_sha256 = inventory.public_key_sha256(content.public_key)
            signer_key = msg.signer_cert.public_key()
            opened.signer_key_sha256 = (opened.public_key_sha256 if signer_key == content.public_key
                                        else inventory.public_key_sha256(signer_key))
            self._check_signer_key(profile, ca, msg, opened.public_key_sha256, opened.signer_key_sha256)
            # the template's rules, judged here in the same thread; applied after a retry is recognised
            try:  # vetted: the subject and SANs the certificate gets, used again when it is signed
                opened.vetted = profile.policy.check(content.csr, reserved_names=self.reserved_names(),
                                                     proof_checked=content.proof_checked)
            except PolicyViolation as exc:
                opened.policy_error = str(exc)
            if self.repository.inline:
                # a static profile's secret is read now, as stored: rotated by another process or not
                opened.known, opened.static_secrets = self.repository.lookup_sync(
                    profile.name, self.transaction_key(ca, msg), static_secrets=profile.challenge_kind == "static")
                # on the same connection: the compromised-key check (checks.CompromisedKey) costs no round trip
                opened.compromised = self.repository.compromised_sync(opened.public_key_sha256)
        return opened

    def addressed_ca(self, ca: CertificateAuthority, msg: codec.PKIMessage) -> CertificateAuthority:
        """The CA that answers a request: the profile's; a CertPoll, GetCert or GetCRL encrypted to the RA of
        another CA of this server and not to the profile's, that CA (a device told PENDING before a CA rollover
        was activated polls with the RA certificate and the CA name it had then): its RA decrypts the request
        and signs the reply, and the request must name it."""
        if msg.message_type not in _LOOKUPS or len(self.cas) < 2 or codec.addressed_to(msg, _ra_ders(ca)):
            return ca
        return next((c for c in self.cas.values() if c is not ca and codec.addressed_to(msg, _ra_ders(c))), ca)

    def reserved_names(self) -> tuple:
        """The names never issued to a requester: those of every CA loaded here (the one issuing, one that issued
        before a rollover, a configured next one) and of their RAs."""
        ids = tuple(id(ca) for ca in self.cas.values())
        if ids != self._reserved_of:
            self._reserved = tuple(dict.fromkeys(n for ca in self.cas.values() for n in ca.reserved_names))
            self._reserved_of = ids
        return self._reserved

    def signed_by_us(self, ca: CertificateAuthority, msg: codec.PKIMessage) -> bool:
        """Signed by a certificate of ``ca``, or of another of our CAs (a CA that issued before a rollover: its
        certificates renew at the new one)."""
        signer = msg.signer_cert
        return any(signer.issuer == c.cert.subject and c.issued_by_us(signer)
                   for c in (ca, *(c for c in self.cas.values() if c is not ca)))

    def foreign_signer(self, ca: CertificateAuthority, msg: codec.PKIMessage, public_key_sha256: str,
                       signer_key_sha256: str) -> bool:
        """A self-signed request (not a renewal by one of our certificates) whose signer key is not the CSR's (by the
        SHA-256 of each key)."""
        return signer_key_sha256 != public_key_sha256 and not self.signed_by_us(ca, msg)

    def _check_signer_key(self, profile: Profile, ca: CertificateAuthority, msg: codec.PKIMessage,
                          public_key_sha256: str, signer_key_sha256: str) -> None:
        """Profile setting ``require_signer_csr_key``: the self-signed signer must hold the CSR's key (RFC 8894 §2.3)."""
        if profile.settings.require_signer_csr_key and self.foreign_signer(ca, msg, public_key_sha256,
                                                                             signer_key_sha256):
            raise SCEPFailure(FailInfo.BAD_REQUEST,
                              "the request is signed by a key other than the CSR's (this profile requires the CSR's "
                              "key)", msg)

    def _signer(self, ca: CertificateAuthority):
        def sign(data: bytes, digest) -> bytes:
            return ca.ra_key.sign(data, digest.hash_algorithm())
        return sign

    def _reply(self, ca: CertificateAuthority, msg: codec.PKIMessage, outcome: Outcome) -> bytes:
        kwargs = {}
        if outcome.status is PKIStatus.SUCCESS:
            # the codec mirrors the request's cipher (single DES answered with AES) and uses the leading bytes
            kwargs = {"content": outcome.content, "cek": secrets.token_bytes(32), "iv": secrets.token_bytes(16)}
        return codec.build_cert_rep(request=msg, status=outcome.status, ra_cert_der=ca.ra_cert_der,
                                    sign=self._signer(ca), sender_nonce=secrets.token_bytes(16),
                                    signing_time=self.clock(), fail_info=outcome.fail_info,
                                    fail_text=outcome.fail_text, **kwargs)

    async def _dispatch(self, profile: Profile, request: Opened) -> Outcome:
        ca, msg, inner = request.ca, request.message, request.content
        t = msg.message_type
        if t in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
            return await self._enrol(profile, request)
        if t is MessageType.CERT_POLL:
            return await self._poll(profile, ca, msg, inner)
        if t is MessageType.GET_CERT:
            return await self._get_cert(ca, msg, inner)
        return await self._get_crl(ca, msg, inner)

    # ------------------------------------------------------------------ enrolment

    async def _enrol(self, profile: Profile, request: Opened) -> Outcome:
        # parsed, key loaded and proof of possession checked in the decryption stage (codec.open_request)
        ca, msg, content = request.ca, request.message, request.content
        signed_by_us = self.signed_by_us(ca, msg)
        e: Enrolment | None = None
        try:
            refusal = self.cannot_issue(ca, self.clock())
            if refusal:  # before any check: no challenge is used up by a request that cannot succeed
                raise SCEPFailure(FailInfo.BAD_REQUEST, refusal, msg)
            assert request.public_key_sha256 is not None  # computed in the decryption stage for every CSR
            e = Enrolment(profile=profile, ca=ca, message=msg, content=content, key=self.transaction_key(ca, msg),
                          public_key_sha256=request.public_key_sha256, known=request.known,
                          signer_key_sha256=request.signer_key_sha256,
                          static_secrets=request.static_secrets, compromised=request.compromised,
                          policy_error=request.policy_error, vetted=request.vetted, signed_by_us=signed_by_us)
            for check in self.checks:
                try:
                    answer = await check(e)
                except SCEPFailure as exc:
                    if e.verifier is not None:  # a delegated challenge that allowed it is told it failed after all
                        await e.verifier.after_failure(e.request(), exc.text)
                    raise
                if answer is not None:
                    return answer
            e.now = e.now or self.clock()
            return await self._issue(e)
        except SCEPFailure:
            # a renewal refused is refused for good (checks.Renewal): the same request, captured and sent again
            # once the reason no longer holds, is not issued; a refusal is the only write
            if signed_by_us and (e is None or e.remember_refusal):
                await self.repository.remember_refused_renewal(
                    inventory.serial_hex(msg.signer_cert.serial_number), msg.signed_sha256.hex(),
                    signer_not_after=msg.signer_cert.not_valid_after_utc, now=self.clock())
            raise

    def cannot_issue(self, ca: CertificateAuthority, now: datetime) -> str | None:
        """Why no certificate can be issued now, or None: ``refuse_issuing``, or a CA certificate that has expired
        (a certificate ends with its CA's: one issued now would end before it starts)."""
        if self.refuse_issuing:
            return self.refuse_issuing
        expiry = ca.cert.not_valid_after_utc
        if now >= expiry:
            return (f"the certificate of CA {ca.name!r} expired at {expiry.isoformat()}: no certificate is issued "
                    f"until a new CA is activated (CA rollover)")
        return None

    async def _issue(self, e: Enrolment) -> Outcome:
        """Sign, record and answer. A delegated enrolment is recorded ``awaiting_ack`` and delivered only once the
        MDM accepted the success notification; a renewal is recorded only while its signer is still valid."""
        profile, ca, msg, key, now, verifier = e.profile, e.ca, e.message, e.key, e.now, e.verifier
        req = e.request()
        renewal = req.renewal_of is not None
        ack = verifier is not None and profile.challenge_kind == "delegated"
        supersede = renewal and profile.settings.supersede_on_renewal
        inline = self.repository.inline and not renewal and not ack
        state = "awaiting_ack" if ack else "issued"
        for _attempt in range(3):
            # One thread hop signs the certificate and its CertRep (and with an inline repository commits the rows
            # in between); the reply leaves only once the rows are committed.
            cert, rows, outcome = await self._run(self._sign, profile, ca, req, key, e.public_key_sha256, now,
                                                  inline, state, e.vetted, e.signer_key_sha256)
            try:
                if outcome is None:
                    raise rows  # the inline write's Duplicate or DeviceTakenDown
                if renewal or ack:
                    await self.repository.record_guarded(
                        *rows, renewal_of=req.renewal_of.serial if renewal else None, now=now,
                        supersede=supersede and not ack)
                elif not inline:
                    await self.repository.record(*rows)
            except Duplicate:
                # A concurrent retry of the same transaction inserted first: answer with its result.
                existing = await self.repository.find(profile.name, key)
                if existing is not None:
                    return await self.replay(profile, msg, existing, e.public_key_sha256)
                continue  # the random serial (127 bits) was taken: sign again with a fresh one
            except (SignerChanged, DeviceTakenDown) as exc:
                # a retry of this transaction, sent at the same time (to another process or instance), renewed the
                # signer first: its answer, not a refusal of a renewal that was issued
                existing = await self.repository.find(profile.name, key)
                if existing is not None:
                    return await self.replay(profile, msg, existing, e.public_key_sha256)
                if verifier is not None:
                    await verifier.after_failure(req, str(exc))
                raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
            break
        else:
            raise RuntimeError(f"could not record a certificate for transaction {bounded(key)!r}")
        if supersede and not ack:
            self.on_status_change(ca.name)
        if ack:
            return await self._acknowledge(profile, ca, req, verifier, cert, outcome, key)
        if verifier is not None:
            try:
                await verifier.after_issue(req, cert)
            except ChallengeRejected as exc:
                await self.withdraw(ca, outcome.serial, profile.name, key, str(exc))
                raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
        return outcome

    async def _acknowledge(self, profile: Profile, ca: CertificateAuthority, req: EnrollmentRequest,
                           verifier: ChallengeVerifier, cert: x509.Certificate, outcome: Outcome, key: str) -> Outcome:
        """Tell the MDM about an ``awaiting_ack`` certificate; deliver it only once that succeeded."""
        msg = req.message
        try:
            await verifier.after_issue(req, cert)
        except ChallengeRejected as exc:
            await self.withdraw(ca, outcome.serial, profile.name, key, str(exc))
            raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
        except Exception:  # noqa: BLE001 - left awaiting_ack: the reconciliation job retries or revokes it
            log.exception("scep.ack.unresolved", profile=profile.name, transaction_id=bounded(msg.transaction_id),
                          serial=outcome.serial)
            return Outcome(PKIStatus.PENDING)
        try:
            confirmed = await self.confirm_ack(profile, ca, key, req.renewal_of.serial if req.renewal_of else None)
        except SignerChanged as exc:
            await self.withdraw(ca, outcome.serial, profile.name, key, str(exc))
            raise SCEPFailure(FailInfo.BAD_REQUEST, str(exc), msg) from None
        if not confirmed:  # decided meanwhile (reconciled): answer what the transaction says now
            row = await self.repository.find(profile.name, key)
            return await self.state_outcome(profile, msg, row)
        return outcome

    async def confirm_ack(self, profile: Profile, ca: CertificateAuthority, key: str, renewal_of: str | None) -> bool:
        """``awaiting_ack`` -> ``issued``, superseding a renewal's signer in the same transaction.

        False when the transaction is no longer awaiting its acknowledgement; SignerChanged when the signer left
        ``valid`` meanwhile (nothing is changed then).
        """
        supersede = renewal_of is not None and profile.settings.supersede_on_renewal
        try:
            await self.repository.confirm_ack(profile.name, key, renewal_of=renewal_of, now=self.clock(),
                                              supersede=supersede)
        except NotPending:
            return False
        if supersede:
            self.on_status_change(ca.name)
        return True

    def _sign(self, profile: Profile, ca: CertificateAuthority, req: EnrollmentRequest, key: str, pub_sha: str,
              now: datetime, inline: bool, state: str = "issued", vetted: Vetted | None = None,
              signer_sha: str | None = None):
        """Issue the certificate, write its rows when ``inline``, and build the CertRep SUCCESS (in a thread).

        ``vetted``: the subject and SANs the profile's policy returned for this CSR and this CA in the decryption
        stage (judged again here without them).

        Returns (certificate, (certificate row, transaction row, event), outcome), or (certificate, the
        Duplicate or DeviceTakenDown, None) when the inline write lost to a concurrent insert or device change.
        """
        msg = req.message
        if vetted is None:
            vetted = profile.policy.subject_and_sans(req.csr, reserved_names=self.reserved_names())
        cert = ca.issue(req.csr, profile.policy, serial=random_serial(), now=now,
                        ocsp=self.ocsp_aia and profile.settings.ocsp_aia, vetted=vetted)
        der = cert.public_bytes(DER)
        cert_row = inventory.certificate_row(cert, der, ca.name, profile.name, msg.transaction_id, pub_sha, now,
                                             crl_partition=ca.partition_of(cert.serial_number), names=vetted)
        cert_row.update(renewal_of=req.renewal_of.serial if req.renewal_of else None,
                        unused_since=unused_since(req.renewal_of, now) if req.renewal_of else None,
                        enrolled_device_id=req.device_id)
        serial = cert_row["serial"]
        # decided now: the CSR is kept without its challengePassword (a delegated one waits for its acknowledgement
        # with it, see enrolment.sql._forget_challenge)
        kept_csr = req.csr_der if state == "awaiting_ack" else codec.without_challenge_password(req.csr_der)
        tx_row = dict(profile=profile.name, transaction_id=key, state=state, message_type=int(msg.message_type),
                      csr_der=kept_csr, public_key_sha256=pub_sha, serial=serial, created_at=now, updated_at=now,
                      signer_key_sha256=signer_sha)
        event = dict(at=now, kind="pki.cert.renew" if req.renewal_of else "pki.cert.issue", subject=serial,
                     actor=f"scep:{profile.name}",
                     data={"transaction_id": msg.transaction_id, "subject": cert_row["subject"],
                           "renewal_of": req.renewal_of.serial if req.renewal_of else None})
        committed = None
        if inline:  # the commit (mostly the wait for the disk) runs while the CertRep is signed below
            if self._commits is not None:
                committed = self._commits.submit(self.repository.record_sync, cert_row, tx_row, event)
            else:
                try:
                    self.repository.record_sync(cert_row, tx_row, event)
                except (Duplicate, DeviceTakenDown) as exc:
                    return cert, exc, None
        outcome = Outcome(PKIStatus.SUCCESS, content=codec.build_degenerate([der, ca.cert_der]), serial=serial)
        try:
            outcome.reply = self._reply(ca, msg, outcome)
        except BaseException:
            if committed is not None:
                wait([committed])  # never leave a write behind unawaited
            raise
        if committed is not None:
            try:
                committed.result()  # the reply leaves only once its rows are committed
            except (Duplicate, DeviceTakenDown) as exc:
                return cert, exc, None  # nothing written: the reply signed above is dropped
        return cert, (cert_row, tx_row, event), outcome

    async def withdraw(self, ca: CertificateAuthority, serial: str, profile: str, key: str, why: str) -> None:
        """Revoke a certificate that must not be handed out, and mark its transaction rejected."""
        now = self.clock()
        await self.repository.withdraw(serial, profile, key, why, dict(
            at=now, kind="pki.cert.revoke", subject=serial, actor=f"scep:{profile}",
            data={"reason": "withdrawn after issue", "detail": why}), now=now)
        self.on_status_change(ca.name)

    # ------------------------------------------------------------------ transactions

    def transaction_key(self, ca: CertificateAuthority, msg: codec.PKIMessage) -> str:
        """The idempotency key of an enrolment.

        Clients derive the transactionID from the public key (RFC 8894 §3.2.1.1), so a renewal that keeps its
        key repeats the original enrolment's transactionID: a request signed by one of our certificates is
        therefore its own transaction, keyed by the signing certificate's serial as well. A key longer than the
        column is stored hashed. A client's own transactionID spelled like one of these keys (holding
        ``/renewal/``, or starting ``sha256:``) is hashed under a prefix of its own: no enrolment can take the key
        of another's renewal (whose transactionID and serial number are no secret). A transactionID that no
        client sends (control characters such as NUL, more than 255 characters) is refused before anything is
        looked up or spent.
        """
        txid = msg.transaction_id
        if len(txid) > MAX_TRANSACTION_ID or has_control_characters(txid):
            raise SCEPFailure(FailInfo.BAD_REQUEST, f"invalid transactionID {bounded(txid)!r}: at most "
                              f"{MAX_TRANSACTION_ID} printable characters", msg)
        if self.signed_by_us(ca, msg):
            txid = f"{txid}/renewal/{msg.signer_cert.serial_number:x}"
        elif "/renewal/" in txid or txid.startswith("sha256:"):  # spelled like a key of ours: kept apart from them
            return "sha256:" + hashlib.sha256(b"client:" + txid.encode("utf-8", "surrogatepass")).hexdigest()
        return txid if len(txid) <= 255 else "sha256:" + hashlib.sha256(txid.encode()).hexdigest()

    async def replay(self, profile: Profile, msg: codec.PKIMessage, row: dict, pub_sha: str) -> Outcome:
        """A retry of a known transaction: same answer, never a second certificate (RFC 8894 §3.3.1)."""
        if row["public_key_sha256"] != pub_sha:
            raise SCEPFailure(FailInfo.BAD_REQUEST, "this transactionID was already used with a different key", msg)
        if not self._from_requester(msg, row):  # a captured request re-signed by someone else: not theirs to learn
            raise SCEPFailure(FailInfo.BAD_REQUEST, "this transactionID was already used by another requester", msg)
        return await self.state_outcome(profile, msg, row)

    async def state_outcome(self, profile: Profile, msg: codec.PKIMessage, row: dict) -> Outcome:
        state = row["state"]
        if state == "pending" and pending_expired(profile.settings, row["created_at"], now := self.clock()):
            # nobody decided it in time (profile pending_expiry_days): rejected now, as the sweep would
            if await self.expiry.expire(profile, row["transaction_id"], row["created_at"], now=now):
                return Outcome(PKIStatus.FAILURE, fail_info=FailInfo.BAD_REQUEST,
                               fail_text=expired_text(profile.settings))
            decided = await self.repository.find(profile.name, row["transaction_id"])  # decided meanwhile
            if decided is not None and decided["state"] != "pending":
                return await self.state_outcome(profile, msg, decided)
        if state in ("pending", "awaiting_ack"):  # awaiting_ack: delivered once the MDM acknowledged it
            return Outcome(PKIStatus.PENDING)
        if state == "rejected":
            return Outcome(PKIStatus.FAILURE, fail_info=FailInfo.BAD_REQUEST,
                           fail_text=row["fail_text"] or "the enrolment was rejected")
        record = await self.repository.certificate(row["serial"])
        if record is None or record.status == "revoked":
            return Outcome(PKIStatus.FAILURE, fail_info=FailInfo.BAD_REQUEST,
                           fail_text="the certificate of this transaction has been revoked")
        ca = await self._loaded(record.ca, f"of certificate {record.serial}")  # maybe activated elsewhere just now
        return Outcome(PKIStatus.SUCCESS, content=codec.build_degenerate([record.der, ca.cert_der]),
                       serial=record.serial)

    async def _poll(self, profile: Profile, ca: CertificateAuthority, msg: codec.PKIMessage,
                    inner: codec.RequestContent) -> Outcome:
        """CertPoll (GetCertInitial, RFC 8894 §3.3.3): the state of a pending transaction."""
        if inner.issuer != ca.cert.subject:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "CertPoll names an issuer that is not this CA", msg)
        row = await self.repository.find(profile.name, self.transaction_key(ca, msg))
        if row is None or not self._from_requester(msg, row):  # another signer learns nothing of it
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "no enrolment with this transactionID", msg)
        return await self.state_outcome(profile, msg, row)

    @staticmethod
    def _from_requester(msg: codec.PKIMessage, row: dict) -> bool:
        """Whether a CertPoll (RFC 8894 §3.3.3) or a retried request comes from the requester of the transaction:
        signed by the key that signed the request, or by the CSR's key. The answer (state, failInfoText,
        certificate) goes to nobody else: the request's envelope can be captured and signed again by anyone. A
        renewal's is also keyed by the signing certificate's serial (transaction_key). A row written before the
        signer was stored (migration core_0014) is answered to any signer, as it was. The digests are of public
        keys: no secret to compare in constant time."""
        stored = row.get("signer_key_sha256")
        if stored is None:
            return True
        asker = inventory.public_key_sha256(msg.signer_cert.public_key())
        return asker in (stored, row["public_key_sha256"])

    async def _get_cert(self, ca: CertificateAuthority, msg: codec.PKIMessage,
                        inner: codec.RequestContent) -> Outcome:
        """GetCert (RFC 8894 §3.3.4): a certificate by issuer and serial number."""
        issuer, serial = self._issuer_and_serial(ca, msg, inner)
        record = await self.repository.certificate(inventory.serial_hex(serial))
        if record is None or record.ca != ca.name:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "no certificate with this issuer and serial number", msg)
        return Outcome(PKIStatus.SUCCESS, content=codec.build_degenerate([record.der]), serial=record.serial)

    async def _get_crl(self, ca: CertificateAuthority, msg: codec.PKIMessage,
                       inner: codec.RequestContent) -> Outcome:
        """GetCRL (RFC 8894 §3.3.4): the current CRL of the CA that issued the named certificate."""
        self._issuer_and_serial(ca, msg, inner)
        if self.crl_source is None:
            raise SCEPFailure(FailInfo.BAD_REQUEST, "no CRL is published by this server", msg)
        content, reply = await self.getcrl.answer(
            ca.name, lambda: self.crl_source(ca.name),
            lambda content: self._reply(ca, msg, Outcome(PKIStatus.SUCCESS, content=content)))
        return Outcome(PKIStatus.SUCCESS, content=content, reply=reply)

    def _issuer_and_serial(self, ca: CertificateAuthority, msg: codec.PKIMessage, inner: codec.RequestContent):
        if inner.issuer != ca.cert.subject:
            raise SCEPFailure(FailInfo.BAD_CERT_ID, "the issuer named is not this CA", msg)
        return inner.issuer, inner.serial

    # ------------------------------------------------------------------ pending enrolments, leftovers

    async def decide(self, profile_name: str, transaction_id: str, *, approve: bool, actor: str,
                     reason: str | None = None) -> str:
        """Approve (issue now) or reject a pending enrolment (scep_server.enrolment.approval)."""
        return await self.approvals.decide(profile_name, transaction_id, approve=approve, actor=actor, reason=reason)

    async def reconcile_unacknowledged(self, *, older_than: timedelta = ACK_STALE_AFTER) -> dict[str, str]:
        """Certificates left ``awaiting_ack`` (scep_server.enrolment.reconcile). Returns {serial: outcome}."""
        return await self.reconciler.run(older_than=older_than)

    async def ack_reconciler(self, every_seconds: float = 60.0) -> None:
        """A background job: reconcile leftovers at start-up, then periodically."""
        while True:
            await self.reconcile_unacknowledged()
            await asyncio.sleep(every_seconds)

    async def expire_pending(self) -> dict[str, int]:
        """Reject the pending enrolments nobody decided within their profile's ``pending_expiry_days``
        (scep_server.enrolment.expiry). Returns {profile: count}."""
        return await self.expiry.run()

    async def pending_expiry(self, every_seconds: float = 60.0) -> None:
        """A background job: expire pending enrolments at start-up, then periodically."""
        while True:
            await self.expire_pending()
            await asyncio.sleep(every_seconds)
