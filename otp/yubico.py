"""Yubico validation protocol 2.0 codec: request parsing, HMAC-SHA1 signatures, responses.

Spec: Yubico/yubikey-val doc/Validation_Protocol_V2.0.adoc (sections "Request", "Response",
"Signing"); reference behaviour from ykval-verify.php. Pure: the clock and keys are passed in.
"""
from __future__ import annotations

import base64
import enum
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping
from urllib.parse import unquote, unquote_plus


class Status(str, enum.Enum):
    """The closed status set of protocol 2.0 (Validation_Protocol_V2.0 "Response")."""

    OK = "OK"
    BAD_OTP = "BAD_OTP"
    REPLAYED_OTP = "REPLAYED_OTP"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    MISSING_PARAMETER = "MISSING_PARAMETER"
    NO_SUCH_CLIENT = "NO_SUCH_CLIENT"
    OPERATION_NOT_ALLOWED = "OPERATION_NOT_ALLOWED"
    BACKEND_ERROR = "BACKEND_ERROR"
    NOT_ENOUGH_ANSWERS = "NOT_ENOUGH_ANSWERS"
    REPLAYED_REQUEST = "REPLAYED_REQUEST"


# Statuses whose reply echoes `otp` and `nonce` (ykval-verify.php sends them with these only).
ECHO_STATUSES = frozenset({Status.OK, Status.REPLAYED_OTP, Status.REPLAYED_REQUEST, Status.NOT_ENOUGH_ANSWERS})

_CLIENT_ID = re.compile(r"[0-9]{1,10}")
_NONCE = re.compile(r"[A-Za-z0-9]{16,40}")
_DIGITS = re.compile(r"[0-9]{1,9}")
_SAFE_VALUE = re.compile(r"[!-~]*")  # printable ASCII, no space: values never carry whitespace (2.4)


class ProtocolError(Exception):
    """A request the protocol answers with a non-OK status before any key is consulted."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_params(raw: str) -> dict[str, str]:
    """Decode a raw query string or form body into parameters (last occurrence wins, as in PHP).

    `h` is decoded without form semantics: a raw `+` in base64 stays `+` (yubico-client escapes
    only `+`, ykclient `+` and `=`, others nothing), every other value is form-decoded.
    """
    params: dict[str, str] = {}
    if not raw:
        return params
    for part in raw.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        name = unquote_plus(key) if "%" in key or "+" in key else key
        if "%" in value or "+" in value:
            value = unquote(value) if name == "h" else unquote_plus(value)
        params[name] = value
    return params


def signature_base(params: Mapping[str, str]) -> bytes:
    """Every pair except `h`, sorted by key, joined as `k=v&...` with decoded values (V2.0 "Signing")."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "h").encode("utf-8")


def sign(params: Mapping[str, str], key: bytes) -> str:
    """Base64 HMAC-SHA1 of the signature base under the (base64-decoded) client key."""
    return base64.b64encode(hmac.digest(key, signature_base(params), "sha1")).decode("ascii")


def signature_matches(params: Mapping[str, str], key: bytes) -> bool:
    """Constant-time check of `h` (YK-VAL 2.28 fixed a timing leak here, issue #26)."""
    given = params.get("h")
    if given is None:
        return False
    # A raw `+` that went through form decoding elsewhere arrives as a space; base64 has no spaces.
    given = given.replace(" ", "+").strip()
    return hmac.compare_digest(given.encode("ascii", "replace"), sign(params, key).encode("ascii"))


def parse_client_id(params: Mapping[str, str]) -> int:
    """The `id` parameter: digits, at most 10, not 0 (YK-VAL is_clientid), else MISSING_PARAMETER."""
    raw = params.get("id", "").strip()
    if not _CLIENT_ID.fullmatch(raw) or int(raw) == 0:
        raise ProtocolError(Status.MISSING_PARAMETER, "id must be a positive number of at most 10 digits")
    return int(raw)


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """A syntactically valid /wsapi/2.0/verify request (Validation_Protocol_V2.0 "Request")."""

    client_id: int
    otp: str  # exactly as received (trimmed): echoed back, clients compare it byte for byte
    nonce: str
    want_timestamp: bool
    sl: str | None
    timeout: int | None
    signed: bool


def parse_verify_request(params: Mapping[str, str], client_id: int) -> VerifyRequest:
    """Check `otp`, `nonce`, `sl`, `timeout`, `timestamp`; ProtocolError(MISSING_PARAMETER) when malformed.

    The OTP's own format is judged later (BAD_OTP), after the presence checks, as in ykval-verify.php.
    """
    otp = params.get("otp", "").strip()
    if not otp:
        raise ProtocolError(Status.MISSING_PARAMETER, "otp is missing")
    nonce = params.get("nonce", "").strip()
    # YSA-2020-01: YK-VAL requires an alphanumeric nonce of 16-40 characters.
    if not _NONCE.fullmatch(nonce):
        raise ProtocolError(Status.MISSING_PARAMETER, "nonce must be 16-40 letters or digits")
    sl = params.get("sl")
    if sl is not None:
        sl = sl.strip().lower()
        # 0-100, "fast" or "secure" (V2.0, the words in any case, as YK-VAL reads them); YK-VAL also rejects 0,
        # which the spec allows: we accept it.
        if sl not in ("fast", "secure") and not (_DIGITS.fullmatch(sl) and int(sl) <= 100):
            raise ProtocolError(Status.MISSING_PARAMETER, "sl must be 0-100, fast or secure")
    timeout_raw = params.get("timeout")
    timeout = None
    if timeout_raw is not None:
        timeout_raw = timeout_raw.strip()
        if not _DIGITS.fullmatch(timeout_raw):
            raise ProtocolError(Status.MISSING_PARAMETER, "timeout must be a number of seconds")
        timeout = int(timeout_raw)
    if not _SAFE_VALUE.fullmatch(otp):
        raise ProtocolError(Status.BAD_OTP, "otp contains characters outside printable ASCII")
    return VerifyRequest(
        client_id=client_id, otp=otp, nonce=nonce, want_timestamp=params.get("timestamp", "").strip() == "1",
        sl=sl, timeout=timeout, signed="h" in params,
    )


@dataclass(frozen=True, slots=True)
class VerifyResponse:
    """The fields of a reply; `encode_response` adds `t` and the signature `h`."""

    status: Status
    otp: str | None = None
    nonce: str | None = None
    sl: int | None = None
    timestamp: int | None = None
    sessioncounter: int | None = None
    sessionuse: int | None = None


def format_t(now: datetime) -> str:
    """`t` in YK-VAL's format YYYY-MM-DDTHH:MM:SSZ0mmm (UTC, `Z0` then milliseconds)."""
    n = now.astimezone(timezone.utc)
    return (f"{n.year:04d}-{n.month:02d}-{n.day:02d}T{n.hour:02d}:{n.minute:02d}:{n.second:02d}"
            f"Z0{n.microsecond // 1000:03d}")


def response_fields(resp: VerifyResponse, now: datetime) -> list[tuple[str, str]]:
    """The emitted fields except `h`, in YK-VAL's order (t, otp, nonce, sl, timestamp..., status)."""
    fields = [("t", format_t(now))]
    for name in ("otp", "nonce", "sl", "timestamp", "sessioncounter", "sessionuse"):
        value = getattr(resp, name)
        if value is not None:
            text = str(value)
            if not _SAFE_VALUE.fullmatch(text):
                raise ValueError(f"{name} would carry whitespace or control characters")
            fields.append((name, text))
    fields.append(("status", resp.status.value))
    return fields


def encode_response(resp: VerifyResponse, key: bytes, now: datetime) -> str:
    """`key=value` lines with CRLF and a final empty line, `h` first, signed over every other field."""
    fields = response_fields(resp, now)
    h = sign(dict(fields), key)
    return "h=" + h + "\r\n" + "".join(f"{k}={v}\r\n" for k, v in fields) + "\r\n"


def decode_response(body: str) -> dict[str, str]:
    """Parse a reply (CRLF or LF lines) into its fields, for clients and tests."""
    fields: dict[str, str] = {}
    for line in body.splitlines():
        line = line.strip()
        if "=" in line:
            k, _, v = line.partition("=")
            fields[k] = v
    return fields
