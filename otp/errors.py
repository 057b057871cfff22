"""Typed outcomes and failures of the OTP factor, mapped to the wire in one place.

A verification outcome carries a stable `Reason`; the protocol 2.0 endpoint sends only the
protocol's closed status set (finer reasons go to logs and the admin API), the sign-in API sends
the reason itself. Admin operations raise `OtpError` subclasses (`trustkit.problems.DomainError`s) that
carry their HTTP status and code.
"""
from __future__ import annotations

import enum
from trustkit import problems
from trustkit.problems import DomainError

from .yubico import Status


class Reason(str, enum.Enum):
    """Why a verification succeeded or failed; stable strings, part of the sign-in API contract."""

    VERIFIED = "verified"
    ENROLLED = "enrolled"
    MALFORMED_OTP = "malformed_otp"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    UNASSIGNED_KEY = "unassigned_key"
    INVALID_OTP = "invalid_otp"  # does not decrypt to a token with a valid CRC under the key's AES key
    PRIVATE_ID_MISMATCH = "private_id_mismatch"  # decrypts, but the private ID is not the imported one
    REPLAYED_OTP = "replayed_otp"
    REPLAYED_REQUEST = "replayed_request"
    WRONG_USER = "wrong_user"
    THROTTLED = "throttled"
    BACKEND_ERROR = "backend_error"

    @property
    def ok(self) -> bool:
        return self in (Reason.VERIFIED, Reason.ENROLLED)

    @property
    def wire_status(self) -> Status:
        """The protocol 2.0 status for this reason (docs/otp.md "Protocol 2.0")."""
        return _WIRE[self]

    @property
    def http_status(self) -> int:
        """The HTTP status of the sign-in API for this reason."""
        if self.ok:
            return 200
        if self is Reason.THROTTLED:
            return 429
        if self is Reason.BACKEND_ERROR:
            return 503
        return 403

    @property
    def proves_nothing(self) -> bool:
        """A failure anybody can cause with a key's public ID alone (garbage, an old key, a typo).

        It says nothing about the key's holder or user, so it never counts against them: it is
        throttled per source address and per API client instead.
        """
        return self in (Reason.MALFORMED_OTP, Reason.UNKNOWN_KEY, Reason.REVOKED_KEY, Reason.INVALID_OTP,
                        Reason.PRIVATE_ID_MISMATCH)

    @property
    def counts_against_key(self) -> bool:
        """A failure only the key's holder can cause: a fresh OTP of the key presented for another user.

        A replay never counts (it proves nothing and gains nothing), nor an idempotent retry or a block.
        """
        return self is Reason.WRONG_USER


_WIRE = {
    Reason.VERIFIED: Status.OK,
    Reason.ENROLLED: Status.OK,
    Reason.MALFORMED_OTP: Status.BAD_OTP,
    Reason.UNKNOWN_KEY: Status.BAD_OTP,
    Reason.REVOKED_KEY: Status.BAD_OTP,
    Reason.UNASSIGNED_KEY: Status.BAD_OTP,
    Reason.INVALID_OTP: Status.BAD_OTP,
    Reason.PRIVATE_ID_MISMATCH: Status.BAD_OTP,
    Reason.REPLAYED_OTP: Status.REPLAYED_OTP,
    Reason.REPLAYED_REQUEST: Status.REPLAYED_REQUEST,
    Reason.WRONG_USER: Status.BAD_OTP,
    Reason.THROTTLED: Status.OPERATION_NOT_ALLOWED,
    Reason.BACKEND_ERROR: Status.BACKEND_ERROR,
}

REASON_TEXT = {
    Reason.VERIFIED: "the OTP is valid",
    Reason.ENROLLED: "the OTP is valid and the key is now enrolled to this user",
    Reason.MALFORMED_OTP: "the value is not a YubiKey OTP (32-48 ModHex characters)",
    Reason.UNKNOWN_KEY: "no imported YubiKey has this public ID",
    Reason.REVOKED_KEY: "this YubiKey was revoked",
    Reason.UNASSIGNED_KEY: "this YubiKey is not enrolled to any user",
    Reason.INVALID_OTP: "the OTP does not decrypt under this key's AES key",
    Reason.PRIVATE_ID_MISMATCH: "the OTP's private ID does not match the imported key",
    Reason.REPLAYED_OTP: "this OTP, or a newer one, was already used",
    Reason.REPLAYED_REQUEST: "this exact request was already answered",
    Reason.WRONG_USER: "this YubiKey is enrolled to another user",
    Reason.THROTTLED: "too many failed attempts; try again later",
    Reason.BACKEND_ERROR: "the key store is unavailable",
}


class OtpError(DomainError):
    """A failed admin operation: a :class:`~trustkit.problems.DomainError` whose `status` is its HTTP status
    and `code` a stable identifier; keyword `extra` members go into the problem document."""

    status = 400
    code = "bad_request"


class InvalidInput(OtpError, problems.BadRequest):
    code = "invalid_input"


class NotFound(OtpError, problems.NotFound):
    status = 404
    code = "not_found"


class Conflict(OtpError, problems.Conflict):
    status = 409
    code = "conflict"


class PayloadTooLarge(OtpError, problems.PayloadTooLarge):
    status = 413
    code = "payload_too_large"


class BackendError(OtpError, problems.ServiceUnavailable):
    status = 503
    code = "backend_error"
