"""The chain of checks in front of the issuer, for PKCSReq and RenewalReq.

Each check is an async callable taking the enrolment being judged: it returns None to pass it on, an Outcome to
answer now (a retry of a known transaction, a pending enrolment), or raises SCEPFailure to refuse it. The
service runs them in order (``default_checks``), then issues: the cheap local checks come first, before
anything is spent or asked (a one-time challenge, a webhook, a pending row).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import structlog
from cryptography import x509

from ..ca.authority import CertificateAuthority
from ..ca.inventory import CertRecord, Reason, serial_hex
from ..ca.policy import PolicyViolation, Vetted, subject_mailboxes
from ..profiles import Profile, UnknownProfile
from ..scep import message as codec
from ..scep.types import FailInfo, MessageType, PKIStatus, SCEPFailure
from .identity import NoDeviceId, device_id_of
from .model import (NOT_LOOKED_UP, ChallengeRejected, ChallengeVerifier, EnrollmentRequest, Outcome, challenge_password,
                    days)
from .repository import SignerStanding, with_bound_device

if TYPE_CHECKING:
    from .service import ScepService

log = structlog.get_logger("scep")

# a renewal is judged when it is made: one signed further from now than this (by its signingTime) is a request
# kept and sent again later, e.g. a captured renewal refused before the window, replayed inside it
RENEWAL_SIGNING_SKEW = timedelta(hours=24)


@dataclass
class Enrolment:
    """A PKCSReq or RenewalReq on its way through the checks; each check may fill in what it learned."""

    profile: Profile
    ca: CertificateAuthority
    message: codec.PKIMessage
    content: codec.RequestContent
    key: str  # the idempotency key (ScepService.transaction_key)
    public_key_sha256: str
    # SHA-256 of the key that signed the request (stored with the transaction: its CertPolls must come from it)
    signer_key_sha256: str | None = None
    known: object = NOT_LOOKED_UP  # the transaction row when looked up in the decryption stage (None: none)
    policy_error: str | None = None  # the template's verdict, judged in the decryption stage
    vetted: Vetted | None = None  # and the subject and SANs it allowed (IssuancePolicy.check)
    static_secrets: object = NOT_LOOKED_UP  # a static profile's secrets when read in the decryption stage
    compromised: object = NOT_LOOKED_UP  # CompromisedKey's answer when read in the decryption stage (None: none)
    signed_by_us: bool = False
    # a refusal of a request signed by us is remembered (Renewal) unless it was remembered before, or it holds only
    # at the profile it was sent to
    remember_refusal: bool = True
    renewal_of: CertRecord | None = None  # the signing certificate, for a renewal
    device_id: str | None = None
    named_device: str | None = None  # the device the request itself names (profile setting `device_id`)
    verifier: ChallengeVerifier | None = None  # set when a challenge authorised it: its hooks run after issue
    now: datetime | None = field(default=None)

    def refuse(self, text: str, info: FailInfo = FailInfo.BAD_REQUEST) -> SCEPFailure:
        return SCEPFailure(info, text, self.message)

    def request(self) -> EnrollmentRequest:
        csr = self.content.csr
        return EnrollmentRequest(profile=self.profile, message=self.message, csr=csr, csr_der=self.content.der,
                                 challenge=challenge_password(csr), renewal_of=self.renewal_of,
                                 device_id=self.device_id, named_device=self.named_device,
                                 static_secrets=self.static_secrets, public_key_sha256=self.public_key_sha256,
                                 vetted=self.vetted)


class Check(Protocol):
    async def __call__(self, e: Enrolment) -> Outcome | None: ...


class Replay:
    """A retry of a known transaction gets the same answer, never a second certificate (RFC 8894 §3.3.1); the
    same transaction under another key is refused."""

    def __init__(self, service: ScepService):
        self.service = service

    async def __call__(self, e: Enrolment) -> Outcome | None:
        existing, repository = e.known, self.service.repository
        if existing is NOT_LOOKED_UP:  # not read in the decryption stage: with CompromisedKey's answer, as there
            existing, e.compromised = await repository.find_with_compromised(e.profile.name, e.key,
                                                                             e.public_key_sha256)
        if existing is None:
            return None
        return await self.service.replay(e.profile, e.message, existing, e.public_key_sha256)


async def renewal_req_signed(e: Enrolment) -> None:
    """A RenewalReq is signed by one of our certificates, or carries a challenge (then it enrols as new)."""
    if not e.signed_by_us and e.message.message_type is MessageType.RENEWAL_REQ and not challenge_password(e.content.csr):
        raise e.refuse("RenewalReq must be signed by a valid certificate issued by this CA")


async def template_policy(e: Enrolment) -> None:
    """The profile's certificate template (key, algorithms, subject, SANs, weak keys), judged in the decryption
    stage and applied here, after a retry was recognised."""
    if e.policy_error is not None:
        raise e.refuse(e.policy_error)


class CompromisedKey:
    """A key a certificate of ours was revoked for as compromised (keyCompromise: by an administrator, or presented
    by a second device under `binding.revoke_on_second_device`) is never certified again, by a new enrolment or a
    renewal: its holder, whoever that is, would otherwise enrol it anew with any challenge (CA/Browser Forum BR
    §6.1.1.3 asks the same of public CAs)."""

    def __init__(self, service: ScepService):
        self.service = service

    async def __call__(self, e: Enrolment) -> None:
        serial = e.compromised  # read with the transaction in the decryption stage (SQLite), else here
        if serial is NOT_LOOKED_UP:
            serial = await self.service.repository.compromised_key(e.public_key_sha256)
        if serial is not None:
            raise e.refuse(f"the public key is compromised: certificate {serial} for it was revoked for "
                           f"keyCompromise; generate a new key")


class Renewal:
    """RFC 8894 §2.3: a request signed by a certificate we issued is a renewal authenticated by it.

    The renewal may not widen what the certificate is: same profile (or one the issuing profile lists in
    ``renewal_to``), same subject, no new SANs, a signer that is still valid and in use, within the window.
    """

    def __init__(self, service: ScepService):
        self.service = service

    async def __call__(self, e: Enrolment) -> None:
        if not e.signed_by_us:
            return
        msg, repository = e.message, self.service.repository
        standing = None
        if e.profile.settings.allow_renewal:
            standing = await repository.signer_standing(hashlib.sha256(msg.signer_cert_der).hexdigest())
        # A request sent to a profile that never renews this signer is refused and not remembered: that refusal
        # holds for as long as the profile's settings, and remembered it would block the same request at the
        # profile that does renew it (a captured request sent to the wrong profile first).
        elsewhere = await self._renewed_elsewhere(e.profile, standing)
        if elsewhere is not None:
            e.remember_refusal = False
            raise e.refuse(elsewhere)
        # Then, before the other rules: a request refused once (too early, a signer on hold, a device not active...)
        # is never issued later, when the reason no longer holds: it may be a captured one replayed inside the
        # window. A client signs each attempt anew (a new senderNonce), so its next attempt is judged afresh.
        if await repository.renewal_refused_before(serial_hex(msg.signer_cert.serial_number), msg.signed_sha256.hex()):
            e.remember_refusal = False
            raise e.refuse("this renewal request was refused before; sign a new one")
        e.renewal_of = await self._signer_record(e, standing)

    async def _renewed_elsewhere(self, profile: Profile, standing: SignerStanding | None) -> str | None:
        """Why ``profile`` never renews the signer (renewal off, a certificate of a profile whose ``renewal_to`` does
        not name it), or None."""
        if not profile.settings.allow_renewal:
            return "renewal is not enabled on this profile"
        if standing is None or standing.record.profile == profile.name:
            return None
        try:
            issuing = await self.service.profiles.get(standing.record.profile or "")
        except UnknownProfile:
            issuing = None
        if issuing is None or profile.name not in issuing.settings.renewal_to:
            return f"a certificate issued at profile {standing.record.profile!r} is renewed only there"
        return None

    async def _signer_record(self, e: Enrolment, standing: SignerStanding | None) -> CertRecord:
        profile, msg, csr, refuse = e.profile, e.message, e.content.csr, e.refuse
        signer = msg.signer_cert
        if standing is None:
            raise refuse("the signing certificate is not in this CA's inventory", FailInfo.BAD_CERT_ID)
        record = standing.record
        now = self.service.clock()
        if record.status == "hold":
            raise refuse("the signing certificate is on hold")
        if record.status != "valid":
            raise refuse(f"the signing certificate is {record.status}"
                         + (" (superseded)" if record.revocation_reason == int(Reason.SUPERSEDED) else ""))
        if standing.successor is not None:
            raise refuse(f"the signing certificate is superseded (already renewed as {standing.successor})")
        if not record.not_before <= now < record.not_after:
            raise refuse("the signing certificate has expired or is not yet valid")
        if standing.binding is not None:
            binding = standing.binding
            if binding.state != "active":
                raise refuse(f"the signing certificate is retired from its binding to device {binding.device_id}")
            if binding.device_status != "active":
                raise refuse(f"the signing certificate is bound to device {binding.device_id}, which is "
                             f"{binding.device_status}")
        window = profile.settings.renewal_window_days
        window_td = timedelta(days=window) if window is not None else (record.not_after - record.not_before) / 3
        if record.not_after - now > window_td:
            raise refuse(f"renewal is accepted only within {days(window_td)} days of expiry "
                         f"(from {(record.not_after - window_td).isoformat()})")
        signed = msg.signing_time
        if signed is not None and abs(now - signed) > RENEWAL_SIGNING_SKEW:
            hours = RENEWAL_SIGNING_SKEW.total_seconds() / 3600
            raise refuse(f"the renewal request was signed at {signed.isoformat()}, more than {hours:.0f} hours "
                         f"from now: sign it again", FailInfo.BAD_TIME)
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
        signer_sans.update(subject_mailboxes(signer.subject, signer_sans))  # an address only in its subject
        if not set(sans) <= signer_sans:
            raise refuse("the renewal request names subject alternative names the signing certificate does not have")
        if profile.settings.renewal_sans == "equal" and set(sans) != signer_sans:
            raise refuse("the renewal request's subject alternative names differ from the signing certificate's")
        return with_bound_device(record, standing.binding)


class Challenge:
    """The profile's challenge authorises a new enrolment (and a delegated renewal, when the profile
    re-validates renewals); it may name the device. A renewal keeps its signer's device."""

    def __init__(self, service: ScepService):
        self.service = service

    async def __call__(self, e: Enrolment) -> None:
        profile = e.profile
        req = e.request()  # verifiers see no device id yet
        inherited = e.renewal_of.enrolled_device_id if e.renewal_of is not None else None
        e.device_id = inherited
        validate = e.renewal_of is None or (profile.challenge_kind == "delegated"
                                            and profile.settings.renewal_revalidate)
        if not validate:
            return
        verifier = self.service.verifiers.get(profile.challenge_kind)
        if verifier is None:
            raise e.refuse(f"challenge kind {profile.challenge_kind!r} is not available on this server")
        try:  # asked even when the signer names its device: a re-validated renewal is the MDM's to refuse
            named = await verifier.verify(req)
        except ChallengeRejected as exc:
            raise e.refuse(str(exc)) from None
        if inherited is not None and named is not None and named != inherited:
            raise e.refuse(f"the challenge names device {named!r}, the signing certificate device {inherited!r}")
        e.device_id = inherited or named
        identity = self.service.device_identity
        if e.device_id is None and identity is not None and profile.settings.device_trust:
            e.device_id = await identity(profile.name, e.message.transaction_id)
        e.verifier = verifier


async def device_named(e: Enrolment) -> None:
    """A profile with a `device_id` source: the request must name its device there (read before any challenge is
    spent). A renewal keeps its signer's device."""
    source = e.profile.settings.device_id
    if source is None or e.renewal_of is not None:
        return
    try:
        e.named_device = device_id_of(e.content.csr, source)
    except NoDeviceId as exc:
        raise e.refuse(str(exc)) from None


class DeviceLinked:
    """The device the request names is the one its challenge was issued for (when the challenge names one), and is
    registered (active) if new; a deleted device's id is never enrolled again. A new enrolment for a device named
    otherwise (by its one-time challenge, Intune, a pre-registration) is refused as well while that device is not
    active."""

    def __init__(self, service: ScepService):
        self.service = service

    async def __call__(self, e: Enrolment) -> None:
        named = e.named_device
        if named is None:
            if e.device_id is not None and e.renewal_of is None and self.service.ensure_device is not None:
                status = await self.service.ensure_device(e.device_id, f"scep:{e.profile.name}", register=False)
                if status is not None:
                    self._refuse_unless_active(e, e.device_id, status)
            return
        if e.device_id is not None and e.device_id != named:
            raise e.refuse("the request names another device than the one its challenge was issued for")
        e.device_id = named
        if self.service.ensure_device is None:
            return
        self._refuse_unless_active(e, named, await self.service.ensure_device(named, f"scep:{e.profile.name}"))

    @staticmethod
    def _refuse_unless_active(e: Enrolment, device_id: str, status: str | None) -> None:
        if status == "deleted":
            raise e.refuse(f"device {device_id} is deleted: its id is never enrolled again")
        if status != "active":  # its certificates are on hold (deactivated) or refused (suspended): so is a new one
            raise e.refuse(f"device {device_id} is {status}: it enrols again once it is active")


class ForeignSigner:
    """A key the profile knows (a transaction in any state, a certificate in any status), enrolled again under a
    signer that is not that key: a captured request whose envelope someone else signed again, under a transactionID
    of their own, looks like this. Refused, and recorded as a security event. A request signed by another key than
    the CSR's (``require_signer_csr_key`` off) is accepted only for a key the profile has never seen: the key's
    holder signs its own later requests (or renews with its certificate). Otherwise a captured envelope, with the
    static challenge inside, would be a bearer token that never expires: certificates for the device's key without
    end, pending enrolments that look like the device's, a fresh certificate after a revocation or a hold."""

    def __init__(self, service: ScepService):
        self.service = service

    async def __call__(self, e: Enrolment) -> None:
        if e.renewal_of is not None or not self.service.foreign_signer(e.ca, e.message, e.public_key_sha256,
                                                                         e.signer_key_sha256 or ""):
            return
        now = e.now = e.now or self.service.clock()
        profile, msg, pub_sha = e.profile, e.message, e.public_key_sha256
        repository = self.service.repository
        if not await repository.key_enrolled(profile.name, pub_sha):
            return
        serials = await repository.valid_serials_for_key(profile.name, pub_sha, now)
        signer = hashlib.sha256(msg.signer_cert_der).hexdigest()
        await self.service.repository.record_event(dict(
            at=now, kind="security.scep.foreign_signer", subject=msg.transaction_id, actor=f"scep:{profile.name}",
            data={"profile": profile.name, "public_key_sha256": pub_sha, "signer_fingerprint_sha256": signer,
                  "valid_certificates": list(serials)}))
        log.warning("security.scep.foreign_signer", profile=profile.name, transaction_id=msg.transaction_id,
                    public_key_sha256=pub_sha, signer_fingerprint_sha256=signer, valid_certificates=list(serials))
        raise e.refuse("this key is enrolled at this profile already: its requests must be signed by the key itself "
                       "(or, to renew, by its certificate)")


class Approval:
    """On a profile that requires approval, the enrolment waits (PENDING) for an administrator's decision
    (scep_server.enrolment.approval); a renewal waits too unless the profile exempts renewals."""

    def __init__(self, service: ScepService):
        self.service = service

    async def __call__(self, e: Enrolment) -> Outcome | None:
        settings = e.profile.settings
        if not settings.require_approval or (e.renewal_of is not None and not settings.renewal_requires_approval):
            return None
        now = e.now = e.now or self.service.clock()
        msg = e.message
        existing = await self.service.repository.insert_transaction(dict(
            profile=e.profile.name, transaction_id=e.key, state="pending", message_type=int(msg.message_type),
            csr_der=e.content.der, public_key_sha256=e.public_key_sha256,
            renewal_of=e.renewal_of.serial if e.renewal_of else None, device_id=e.device_id, created_at=now,
            updated_at=now, signer_key_sha256=e.signer_key_sha256))
        if existing is not None:  # a parallel retry won the insert
            return await self.service.replay(e.profile, msg, existing, e.public_key_sha256)
        return Outcome(PKIStatus.PENDING)


def default_checks(service: ScepService) -> list[Check]:
    """The chain, in order: recognise a retry, the message's and template's local rules, a compromised key, the
    renewal rules, a foreign signer of a known key (before the challenge: a one-time challenge is not used up by a
    request refused anyway, a delegated validator not asked), the challenge, approval."""
    return [Replay(service), renewal_req_signed, template_policy, CompromisedKey(service), Renewal(service),
            device_named, ForeignSigner(service), Challenge(service), DeviceLinked(service), Approval(service)]


__all__ = ["Approval", "Challenge", "Check", "CompromisedKey", "DeviceLinked", "Enrolment", "ForeignSigner", "NOT_LOOKED_UP", "Renewal",
           "Replay", "device_named",
           "default_checks", "renewal_req_signed", "template_policy"]
