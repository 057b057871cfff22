"""The profiles' model: a profile, its settings (stored as JSON with it) and the errors of profile operations.

Apart from the store (:mod:`scep_server.profiles`, which re-exports these names) so that a reader of the
profiles that does not use SQLAlchemy (:mod:`scep_server.store.sqlitereads`) makes the same profiles.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .ca.template import CertificateTemplate, compile_pattern


@dataclass(frozen=True)
class StaticSecrets:
    """A static profile's secrets as stored (SHA-256 hex): the current one, and the previous one with the end of
    its grace period after a rotation (aware)."""

    current_sha256: str | None
    previous_sha256: str | None
    previous_until: datetime | None


if TYPE_CHECKING:
    from .ca.policy import IssuancePolicy

ChallengeKind = Literal["static", "dynamic", "delegated"]


class ProfileError(Exception):
    """A profile operation failed (unknown name, duplicate, invalid settings)."""


class UnknownProfile(ProfileError):
    pass


class ProfileExists(ProfileError):
    """A profile of that name exists already."""


class NotStatic(ProfileError):
    """The operation needs a static profile (rotating its secret)."""


class ProfileInUse(ProfileError):
    """Deleting a profile whose certificates are still valid or on hold needs ``force``."""

    def __init__(self, message: str, certificates: int):
        super().__init__(message)
        self.certificates = certificates


class InvalidSettings(ProfileError):
    """Profile settings that do not validate; ``field`` names the first wrong one (``settings.template...``)."""

    def __init__(self, message: str, field: str, errors: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.field = field
        self.errors = errors or [{"field": field, "message": message}]


STATIC_NAMES_NO_DEVICE = ("a static profile cannot name devices (settings.device_id): its secret is shared by every "
                          "device, so any of them could claim another's id; use a dynamic or delegated challenge")


class DeviceIdSource(BaseModel):
    """Where a request names its device: a subject attribute, or a URI SAN after a prefix, filled in by the MDM's
    profile variables (Jamf `$UDID`, `$SERIALNUMBER`; Intune `{{DeviceId}}`, `{{AAD_Device_ID}}`; Workspace ONE
    `{DeviceUid}`). The value must match `pattern` (RE2, whole value) and be a device id (docs/mdm.md)."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["subject", "san_uri"] = "subject"
    attribute: Literal["CN", "serialNumber", "UID", "OU"] = "CN"  # for source = subject
    uri_prefix: str = Field("", max_length=128)  # for source = san_uri, e.g. "urn:device:"
    pattern: str = Field(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", min_length=1, max_length=512)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            compile_pattern(value)
        except Exception as exc:  # noqa: BLE001 - re2.error; the message names the pattern
            raise ValueError(f"invalid pattern {value!r}: {exc}") from None
        return value


class ProfileSettings(BaseModel):
    """Stored as JSON with each profile."""

    template: CertificateTemplate = CertificateTemplate()
    # RenewalReq (or PKCSReq) signed by a valid certificate this CA issued, without a challenge
    allow_renewal: bool = True
    # accept renewal only within this many days of the old certificate's expiry (None: the last third of its
    # validity)
    renewal_window_days: int | None = Field(None, ge=1, le=100_000)
    # profiles (besides this one) at which a certificate issued here may be renewed (planned migrations)
    renewal_to: list[str] = []
    # the renewed certificate's SANs: a subset of the signer's ("subset") or exactly the signer's ("equal")
    renewal_sans: Literal["subset", "equal"] = "subset"
    # delegated profiles ask the MDM (Intune validateRequest, the webhook) about renewals too
    renewal_revalidate: bool = True
    # with require_approval, renewals wait for an administrator's approval too
    renewal_requires_approval: bool = True
    # revoke the replaced certificate (reason superseded) when its renewal is issued
    supersede_on_renewal: bool = True
    # enrolments wait for an administrator's approval (SCEP PENDING, then CertPoll)
    require_approval: bool = False
    # with require_approval: a pending enrolment nobody decided within this many days of its request is rejected
    # (the device's next CertPoll gets FAILURE; it can no longer be approved); 0: pending until decided
    pending_expiry_days: int = Field(30, ge=0, le=3650)
    # legacy single-DES requests are decrypted (micromdm scepclient sends them), each use logged; replies never
    # use DES. Off on new profiles; settings stored without the field (before it defaulted off) keep it on.
    allow_single_des: bool = False
    # a self-signed request must be signed with the CSR's own key (RFC 8894 §2.3 SHOULD); renewals signed by
    # one of our certificates are not affected. Off by default: some clients sign with a separate key.
    require_signer_csr_key: bool = False
    # certificates of this profile may attest device management (bind to a device); off for the `default`
    # static profile created on first start
    device_trust: bool = True
    # where an enrolment names its device (None: it does not); the certificate is issued for that device, which is
    # created (active) if new. Dynamic and delegated profiles only: a static secret is shared by every device.
    device_id: DeviceIdSource | None = None
    # certificates issued carry the OCSP responder's URL in their AIA extension (while [ocsp] enabled); on for
    # new profiles, off for settings stored before the field existed (docs/ocsp.md "The OCSP URL in certificates")
    ocsp_aia: bool = True
    # settings of the dynamic or delegated challenge (owned by scep_server.challenge)
    challenge: dict[str, Any] = {}


@dataclass(frozen=True)
class Profile:
    name: str
    ca: str
    challenge_kind: str
    static_secret_sha256: str | None
    settings: ProfileSettings

    @functools.cached_property
    def fingerprint(self) -> str:
        """Changes whenever what decides an answer changes (name, challenge, settings): a cache key."""
        return hashlib.sha256(json.dumps([self.name, self.ca, self.challenge_kind, self.static_secret_sha256,
                                          self.settings.model_dump_json()]).encode()).hexdigest()

    @property
    def policy(self) -> "IssuancePolicy":
        from .ca.policy import IssuancePolicy  # the CSR checks: cryptography's X.509, the SCEP codec

        return IssuancePolicy(self.settings.template)

    def check_static_secret(self, challenge: str | None) -> bool:
        """Constant-time comparison of a static challenge (stored as SHA-256)."""
        if not self.static_secret_sha256:
            return False
        given = hashlib.sha256((challenge or "").encode()).hexdigest()
        return hmac.compare_digest(given, self.static_secret_sha256) and bool(challenge)


def profile_from_row(m: Mapping[str, Any]) -> Profile:
    """A profile from its stored columns (a row's mapping), its settings validated (ProfileError if they are not)."""
    try:
        settings = ProfileSettings.model_validate_json(m["settings"] or "{}")
        if "allow_single_des" not in settings.model_fields_set:  # stored when single DES was on by default
            settings = settings.model_copy(update={"allow_single_des": True})
        if "ocsp_aia" not in settings.model_fields_set:  # stored before certificates named an OCSP responder
            settings = settings.model_copy(update={"ocsp_aia": False})
    except ValidationError as exc:
        raise ProfileError(f"profile {m['name']}: stored settings are invalid: {exc}") from None
    return Profile(name=m["name"], ca=m["ca"], challenge_kind=m["challenge_kind"],
                   static_secret_sha256=m["static_secret_sha256"], settings=settings)
