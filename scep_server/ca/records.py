"""The certificate inventory's records and the filters of its lists, apart from the database layer.

:mod:`scep_server.ca.inventory` and :mod:`scep_server.ca.queries` re-export these names; a reader that does
not use SQLAlchemy (:mod:`scep_server.store.sqlitereads`) makes the same records from the same columns.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from trustkit.clock import aware
from trustkit.problems import BadRequest

from .status import CertStatus

MAX_SERIAL_DIGITS = 40  # RFC 5280 §4.1.2.2: at most 20 octets
FILTERS = ("status", "profile", "device", "issued_after", "issued_before", "expires_after", "expires_before",
           "serial_prefix")
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")  # profile names and device ids (\Z: no final newline)
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class CertRecord:
    serial: str
    ca: str
    profile: str | None
    subject: str
    sans: list[str]
    not_before: datetime
    not_after: datetime
    status: CertStatus
    revocation_reason: int | None
    revoked_at: datetime | None
    invalidity_date: datetime | None
    transaction_id: str | None
    fingerprint_sha256: str
    public_key_sha256: str
    der: bytes
    issued_at: datetime
    first_used_at: datetime | None
    renewal_of: str | None = None
    unused_since: datetime | None = None
    enrolled_device_id: str | None = None


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def record_from_row(m: Mapping[str, Any]) -> CertRecord:
    """A certificate from its stored columns (a row's mapping)."""
    return CertRecord(
        serial=m["serial"], ca=m["ca"], profile=m["profile"], subject=m["subject"], sans=json.loads(m["sans"]),
        not_before=aware(m["not_before"]), not_after=aware(m["not_after"]), status=CertStatus(m["status"]),
        revocation_reason=m["revocation_reason"], revoked_at=aware(m["revoked_at"]),
        invalidity_date=aware(m["invalidity_date"]), transaction_id=m["transaction_id"],
        fingerprint_sha256=m["fingerprint_sha256"], public_key_sha256=m["public_key_sha256"], der=m["der"],
        issued_at=aware(m["issued_at"]), first_used_at=aware(m["first_used_at"]),
        renewal_of=m["renewal_of"], unused_since=aware(m["unused_since"]),
        enrolled_device_id=m["enrolled_device_id"],
    )


CERT_KEY = (datetime, str)
"""The kinds of a certificate list's cursor: newest first by issue time, then by serial."""


def _bad(detail: str) -> BadRequest:
    return BadRequest(detail, code="invalid_input")


def parse_hex(text: str, what: str) -> str:
    """Lower-case ASCII hex digits without leading zeros (how serials are stored); BadRequest otherwise."""
    cleaned = text.lower()
    if not (cleaned.isascii() and 0 < len(cleaned) <= MAX_SERIAL_DIGITS and set(cleaned) <= _HEX):
        raise _bad(f"{what}: 1 to {MAX_SERIAL_DIGITS} hexadecimal digits")
    stripped = cleaned.lstrip("0")
    if not stripped:
        raise _bad(f"{what}: a serial number is not zero")
    return stripped


def parse_serial(text: str) -> str:
    """A serial as the inventory stores it (hex, any case, leading zeros ignored)."""
    return parse_hex(text, "serial")


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is UTC (a date: its midnight, UTC)."""
    if not (text.isascii() and 0 < len(text) <= 64):
        raise _bad(f"{what}: an ISO 8601 date or date-time")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(f"{what}: an ISO 8601 date or date-time, e.g. 2026-12-01T00:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 lies before year 1 in UTC
        raise _bad(f"{what}: out of range") from None


def _name(text: str, what: str) -> str:
    if not _NAME.fullmatch(text):
        raise _bad(f"{what}: a name of letters, digits and . _ : - (at most 64)")
    return text


@dataclass(frozen=True)
class CertFilter:
    """What a list of certificates is narrowed to; times are half-open: ``after`` <= t < ``before``."""

    status: CertStatus | None = None
    profile: str | None = None
    device: str | None = None
    issued_after: datetime | None = None
    issued_before: datetime | None = None
    expires_after: datetime | None = None
    expires_before: datetime | None = None
    serial_prefix: str | None = None

    @classmethod
    def parse(cls, values: Mapping[str, str | None]) -> "CertFilter":
        """Filters from texts (absent or empty: not filtered); BadRequest naming the first bad one."""
        got = {k: v for k, v in values.items() if k in FILTERS and v not in (None, "")}
        kw: dict[str, Any] = {}
        if "status" in got:
            try:
                kw["status"] = CertStatus(got["status"])
            except ValueError:
                raise _bad("status: valid, hold or revoked") from None
        for key in ("profile", "device"):
            if key in got:
                kw[key] = _name(got[key], key)
        for key in ("issued_after", "issued_before", "expires_after", "expires_before"):
            if key in got:
                kw[key] = parse_time(got[key], key)
        if "serial_prefix" in got:
            kw["serial_prefix"] = parse_hex(got["serial_prefix"], "serial_prefix")
        return cls(**kw)


def reason_name(code: int | None) -> str | None:
    """A revocation reason as the CLI and the API spell it ("key-compromise", "certificate-hold")."""
    if code is None:
        return None
    from crl.build import Reason  # here: a list without revoked certificates does not load the CRL encoder

    try:
        return Reason(code).name.lower().replace("_", "-")
    except ValueError:
        return str(code)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def summary(r: CertRecord) -> dict[str, Any]:
    """A certificate in a list (the API's and `cert list --format json`)."""
    return {"serial": r.serial, "ca": r.ca, "subject": r.subject, "sans": r.sans, "profile": r.profile,
            "status": r.status.value, "not_before": r.not_before.isoformat(), "not_after": r.not_after.isoformat(),
            "issued_at": r.issued_at.isoformat(), "transaction_id": r.transaction_id,
            "fingerprint_sha256": r.fingerprint_sha256, "revocation_reason": r.revocation_reason,
            "revocation_reason_name": reason_name(r.revocation_reason), "revoked_at": _iso(r.revoked_at),
            "invalidity_date": _iso(r.invalidity_date), "enrolled_device_id": r.enrolled_device_id}
