"""What the enrolment service, its checks and its repositories share: the request as verifiers see it, the
answer being built, the errors, and the small rules about transaction ids and renewal clocks."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.x509.oid import AttributeOID

from trustkit.clock import aware
from trustkit.problems import ServiceUnavailable

from ..ca.inventory import CertRecord
from ..ca.policy import Vetted
from ..profiles import Profile, ProfileStore
from ..scep import message as codec
from ..scep.types import FailInfo, MessageType, PKIStatus

if TYPE_CHECKING:
    from ..ca.authority import CertificateAuthority


class ChallengeRejected(Exception):
    """The challenge (static, one-time or delegated) did not authorise this enrolment."""


class ApprovalRefused(Exception):
    """An administrator approved a pending enrolment that the profile's template now refuses, one past its
    profile's ``pending_expiry_days``, or a renewal whose signer expired or left its device meanwhile: it is
    rejected."""


class NoNextCA(Exception):
    """GetNextCACert without a configured rollover."""


class CaNotLoaded(ServiceUnavailable):
    """A profile names a CA this process could not load (yet): try again."""

    code = "ca_not_loaded"


NOT_LOOKED_UP = object()  # a value the decryption stage did not read (the checks read it themselves)


@dataclass(frozen=True)
class EnrollmentRequest:
    """What challenge verifiers and hooks see of a PKCSReq/RenewalReq."""

    profile: Profile
    message: codec.PKIMessage
    csr: x509.CertificateSigningRequest
    # never in a log line, an error or a traceback that shows this object: the challengePassword (the CSR has it)
    csr_der: bytes = field(repr=False)
    challenge: str | None = field(repr=False)
    renewal_of: CertRecord | None
    # the device a trusted source named for this enrolment (challenge expectations, Intune, pre-registration)
    device_id: str | None = None
    # the device the request itself names (profile setting `device_id`; read before any challenge is spent)
    named_device: str | None = None
    # a static profile's secrets (scep_server.profilemodel.StaticSecrets, None: no such static profile) as read in
    # the decryption stage by an inline repository, or NOT_LOOKED_UP
    static_secrets: object = NOT_LOOKED_UP
    # SHA-256 of the CSR's public key (SubjectPublicKeyInfo), as the enrolment computed it (None: not computed)
    public_key_sha256: str | None = None
    # the subject and SANs the certificate gets, as the profile's policy vetted them (None: not vetted): what a
    # verifier judges, not the CSR's own names (the policy adds an e-mail SAN for each subject emailAddress)
    vetted: Vetted | None = None


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
    """One secret per profile, compared in constant time. With the profile store, the secret is the one stored
    now, not the cached profile's: a rotated secret is refused at once by every process."""

    def __init__(self, profiles: "ProfileStore | None" = None) -> None:
        self.profiles = profiles

    async def verify(self, req: EnrollmentRequest) -> None:
        if not req.challenge:
            raise ChallengeRejected("the CSR carries no challengePassword")
        fresh = getattr(self.profiles, "static_secret_ok", None)  # a store without it: the profile's own secret
        if fresh is not None and req.static_secrets is not NOT_LOOKED_UP:  # read in the decryption stage
            ok = self.profiles.static_secret_matches(req.profile.name, req.static_secrets, req.challenge)
        elif fresh is not None:
            ok = await fresh(req.profile.name, req.challenge)
        else:
            ok = req.profile.check_static_secret(req.challenge)
        if not ok:
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


def req_has_challenge(csr: x509.CertificateSigningRequest) -> bool:
    return bool(challenge_password(csr))


@dataclass
class Outcome:
    """The answer to one pkiMessage, before it is signed."""

    status: PKIStatus
    content: bytes | None = None
    fail_info: FailInfo | None = None
    fail_text: str | None = None
    serial: str | None = None
    reply: bytes | None = None  # the signed CertRep, when built together with the certificate


@dataclass
class Opened:
    """What the decryption stage (ScepService._open, in a thread) made of a pkiMessage: the CA that answers it, the
    message and its content, and for a PKCSReq or RenewalReq what it judged and read there."""

    ca: CertificateAuthority
    message: codec.PKIMessage
    content: codec.RequestContent
    public_key_sha256: str | None = None  # of the CSR's key, computed once for the whole enrolment
    signer_key_sha256: str | None = None  # of the signer's key, likewise
    policy_error: str | None = None  # the template's verdict
    vetted: Vetted | None = None  # and the subject and SANs it allowed
    known: object = NOT_LOOKED_UP  # the transaction row, read by an inline repository (None: none)
    static_secrets: object = NOT_LOOKED_UP  # a static profile's secrets as stored now, read with it
    compromised: object = NOT_LOOKED_UP  # checks.CompromisedKey's answer, read with it


@dataclass(frozen=True)
class StoredTransaction:
    """What the verifiers read of a request's message, for a transaction taken up again from the database."""

    transaction_id: str


# RFC 8894 transactionIDs are PrintableStrings (clients send a hash of the key in hex or base64)
MAX_TRANSACTION_ID = 255
# C0, DEL, C1 (U+009B is a terminal's CSI) and the bidirectional formatting characters, as in a subject
# (ca.policy): a transactionID is shown where pending enrolments are decided on
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# an ``awaiting_ack`` certificate untouched for this long is reconciled (longer than any notification may take)
ACK_STALE_AFTER = timedelta(minutes=15)


# the actor of a pending enrolment rejected because nobody decided it in time (profile ``pending_expiry_days``)
EXPIRY_ACTOR = "system:expiry"


def pending_expiry(settings) -> timedelta | None:
    """How long a pending enrolment of a profile (its ProfileSettings) waits for a decision; None: until decided."""
    days = settings.pending_expiry_days
    return timedelta(days=days) if days else None


def pending_expired(settings, created_at: datetime, now: datetime) -> bool:
    """Whether a pending enrolment received at ``created_at`` is past its profile's ``pending_expiry_days``."""
    expiry = pending_expiry(settings)
    return expiry is not None and now >= aware(created_at) + expiry


def expired_text(settings) -> str:
    """The failInfoText of an enrolment rejected by its expiry (the device reads it at its next CertPoll)."""
    days = settings.pending_expiry_days
    return (f"the enrolment expired: no administrator approved it within {days} day{'' if days == 1 else 's'}; "
            "enrol again with a new request")


def bounded(text: str, limit: int = 64) -> str:
    """A transactionID as logs and failure texts show it: at most ``limit`` characters, control characters escaped."""
    short = text[:limit].encode("unicode_escape").decode("ascii")
    return short + f"...({len(text)} characters)" if len(text) > limit else short


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None


def days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f}".removesuffix(".0")


def unused_since(predecessor: CertRecord, now: datetime) -> datetime:
    """The day-91 clock of a renewal: it continues from an unused predecessor's, else starts at the new issue."""
    if predecessor.first_used_at is None:
        return predecessor.unused_since or predecessor.issued_at
    return now


def type_name(t) -> str:
    try:
        return MessageType(t).name
    except ValueError:
        return str(t)
