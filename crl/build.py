"""Pure X.509 v2 CRL builder (RFC 5280 §5): revoked entries in, signed DER out."""
# Entries are encoded straight to DER (one bytes string each, no per-entry objects), the TBSCertList is
# joined once, and the signer hashes and signs it once. `EntryEncoder` keeps each entry's encoding from
# the previous build, so a re-sign only encodes what changed.
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import IntEnum
from typing import Iterable, Sequence

from cryptography import x509

from trustkit.der import (OCTET_STRING, SEQUENCE, ctx, encode_generalized_time, encode_length, encode_time, integer,
                          tlv, utc_seconds)

from .signing import CrlSigner

UTC = timezone.utc

# (serial, revocation date, CRLReason or None, invalidity date or None): the shape the inventory returns
Entry = tuple[int, datetime, "int | None", "datetime | None"]

MAX_CRL_NUMBER = 2**159  # RFC 5280 §5.2.3: at most 20 octets; CA/B BR §7.2.2: less than 2^159

OID_AUTHORITY_KEY_IDENTIFIER = b"\x06\x03\x55\x1d\x23"
OID_CRL_NUMBER = b"\x06\x03\x55\x1d\x14"
OID_ISSUING_DISTRIBUTION_POINT = b"\x06\x03\x55\x1d\x1c"
OID_REASON_CODE = b"\x06\x03\x55\x1d\x15"
OID_INVALIDITY_DATE = b"\x06\x03\x55\x1d\x18"
CRITICAL = b"\x01\x01\xff"
VERSION_2 = b"\x02\x01\x01"


class Reason(IntEnum):
    """CRLReason (RFC 5280 §5.3.1)."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10


def _reason_extensions(code: int) -> bytes:
    """crlEntryExtensions holding only reasonCode (§5.3.1), as DER."""
    ext = tlv(SEQUENCE, OID_REASON_CODE + tlv(OCTET_STRING, b"\x0a\x01" + bytes((code,))))
    return tlv(SEQUENCE, ext)


# unspecified (0) is written as no reasonCode at all (§5.3.1 SHOULD); 7 is unassigned; removeFromCRL (8) belongs
# to delta CRLs only, and this builder emits complete CRLs
_REASON_EXT: dict = {None: b"", 0: b""}
_REASON_EXT.update({int(r): _reason_extensions(int(r)) for r in Reason if r not in (Reason.UNSPECIFIED,
                                                                                    Reason.REMOVE_FROM_CRL)})


class CrlBuildError(ValueError):
    """Input the builder refuses: a bad serial, reason, date or number."""


@dataclass(frozen=True)
class Issuer:
    """The CRL issuer: its exact subject DER (§5.1.2.3), key identifier for the AKI (§5.2.1) and public key."""

    name: bytes
    key_id: bytes
    public_key: object = None

    @classmethod
    def from_certificate(cls, certificate: "x509.Certificate | bytes") -> "Issuer":
        """Take name bytes, SKI (or the RFC 5280 §4.2.1.2 method-1 hash) and key from the CA certificate."""
        cert = x509.load_der_x509_certificate(certificate) if isinstance(certificate, bytes) else certificate
        try:
            key_id = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            key_id = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
        return cls(name=cert.subject.public_bytes(), key_id=key_id, public_key=cert.public_key())


@dataclass(frozen=True)
class Scope:
    """An Issuing Distribution Point (§5.2.5) for a partitioned CRL: the shard's CDP URI(s)."""

    uris: tuple[str, ...]
    only_user_certs: bool = False
    only_ca_certs: bool = False

    def __post_init__(self) -> None:
        if not self.uris:
            raise CrlBuildError("a partitioned CRL's scope needs at least one URI")
        if self.only_user_certs and self.only_ca_certs:
            raise CrlBuildError("onlyContainsUserCerts and onlyContainsCACerts exclude each other (§5.2.5)")

    def value_der(self) -> bytes:
        """IssuingDistributionPoint DER: distributionPoint [0] { fullName [0] { uniformResourceIdentifier [6] } }."""
        names = b"".join(b"\x86" + encode_length(len(u.encode("ascii"))) + u.encode("ascii") for u in self.uris)
        body = tlv(ctx(0), tlv(ctx(0), names))
        if self.only_user_certs:
            body += b"\x81\x01\xff"
        if self.only_ca_certs:
            body += b"\x82\x01\xff"
        return tlv(SEQUENCE, body)


def encode_entry(serial: int, revoked_at: datetime, reason: "int | None" = None,
                 invalidity_date: "datetime | None" = None) -> bytes:
    """One revokedCertificates element (§5.1.2.6) with reasonCode (§5.3.1) and invalidityDate (§5.3.2)."""
    _check_serial(serial)
    try:
        reason_ext = _REASON_EXT[reason]
    except (KeyError, TypeError):
        raise CrlBuildError(f"serial {serial:x}: reason {reason!r} cannot appear on a complete CRL") from None
    exts = reason_ext[2:] if reason_ext else b""  # the bare Extension, without its SEQUENCE OF wrapper
    if invalidity_date is not None:
        exts += tlv(SEQUENCE, OID_INVALIDITY_DATE + tlv(OCTET_STRING, encode_generalized_time(utc_seconds(invalidity_date))))
    body = integer(serial) + encode_time(utc_seconds(revoked_at))
    if exts:
        body += tlv(SEQUENCE, exts)
    return tlv(SEQUENCE, body)


def _check_serial(serial: int) -> None:
    if not isinstance(serial, int) or serial <= 0 or serial.bit_length() > 159:
        raise CrlBuildError(f"serial {serial!r} is not a positive integer of at most 20 octets (§4.1.2.2)")


_SECONDS: list[bytes] = []


def _seconds_table() -> list[bytes]:
    """'HHMMSSZ' for every second of a day, built once."""
    if not _SECONDS:
        _SECONDS.extend(b"%02d%02d%02dZ" % (s // 3600, s // 60 % 60, s % 60) for s in range(86400))
    return _SECONDS


def _day_prefix(day: datetime) -> bytes:
    """Time tag, length and date digits of a day (§5.1.2.4: UTCTime through 2049, GeneralizedTime after)."""
    if 1950 <= day.year < 2050:
        return b"\x17\x0d%02d%02d%02d" % (day.year % 100, day.month, day.day)
    return b"\x18\x0f%04d%02d%02d" % (day.year, day.month, day.day)


def _encode_fast(entries: Iterable[Entry], days: dict[int, bytes]) -> list[bytes]:
    """Encode entries; the common shape (UTC time, reason or none, no invalidityDate) without any call."""
    secs = _seconds_table()
    reasons = _REASON_EXT
    out: list[bytes] = []
    append = out.append
    try:
        for serial, at, reason, invalidity in entries:
            tz = at.tzinfo
            if invalidity is not None or (tz is not UTC and tz is not None):
                append(encode_entry(serial, at, reason, invalidity))
                continue
            n = (serial.bit_length() + 8) >> 3
            if n > 20 or serial <= 0:
                _check_serial(serial)
            day = days.get(at.toordinal())
            if day is None:
                day = days[at.toordinal()] = _day_prefix(at)
            ext = reasons[reason]
            append(b"\x30%c\x02%c%b%b%b%b" % (n + len(day) + 9 + len(ext), n, serial.to_bytes(n, "big"), day,
                                              secs[at.hour * 3600 + at.minute * 60 + at.second], ext))
    except (KeyError, TypeError, OverflowError, AttributeError, ValueError) as exc:
        if isinstance(exc, CrlBuildError):
            raise
        # re-encode the offending entry on the slow path for a precise message
        for entry in entries:
            try:
                encode_entry(*entry)
            except CrlBuildError:
                raise
            except Exception as inner:  # noqa: BLE001 - turned into the builder's own error
                raise CrlBuildError(f"bad CRL entry {entry!r}: {inner}") from None
        raise CrlBuildError(f"bad CRL entry: {exc}") from None
    return out


class EntryEncoder:
    """Encodes revokedCertificates entries, reusing the DER of every entry unchanged since the previous call."""

    def __init__(self, *, cache: bool = True) -> None:
        self._use_cache = cache
        self._cache: dict[Entry, bytes] = {}
        self._days: dict[int, bytes] = {}
        self.last_reused = 0

    def encode(self, entries: Sequence[Entry]) -> list[bytes]:
        """DER of each entry, in order; entries must be hashable tuples when caching."""
        if not self._use_cache:
            return _encode_fast(entries, self._days)
        cache = self._cache
        if not cache:
            out = _encode_fast(entries, self._days)
            self._cache = dict(zip(entries, out))
            self.last_reused = 0
            return out
        get = cache.get
        out = [get(e) for e in entries]
        missing = [i for i, d in enumerate(out) if d is None] if None in out else []
        if missing:
            fresh = _encode_fast([entries[i] for i in missing], self._days)
            for i, d in zip(missing, fresh):
                out[i] = d
                cache[entries[i]] = d
        self.last_reused = len(out) - len(missing)
        # entries that left the CRL stay cached until they are a quarter of the cache, then it is rebuilt
        if len(cache) > len(out) + max(1024, len(out) // 4):
            self._cache = dict(zip(entries, out))
        return out

    def clear(self) -> None:
        self._cache = {}

    @property
    def cached_entries(self) -> int:
        return len(self._cache)


def extensions_der(issuer: Issuer, number: int, scope: "Scope | None") -> bytes:
    """crlExtensions [0]: AKI keyIdentifier (§5.2.1), CRL Number (§5.2.3), critical IDP when partitioned (§5.2.5)."""
    if not 0 <= number < MAX_CRL_NUMBER:
        raise CrlBuildError(f"CRL number {number} is outside 0..2^159-1 (§5.2.3)")
    if not issuer.key_id:
        raise CrlBuildError("the issuer has no key identifier for the AKI (§5.2.1)")
    aki = tlv(SEQUENCE, OID_AUTHORITY_KEY_IDENTIFIER + tlv(
        OCTET_STRING, tlv(SEQUENCE, b"\x80" + encode_length(len(issuer.key_id)) + issuer.key_id)))
    num = tlv(SEQUENCE, OID_CRL_NUMBER + tlv(OCTET_STRING, integer(number)))
    exts = aki + num
    if scope is not None:
        exts += tlv(SEQUENCE, OID_ISSUING_DISTRIBUTION_POINT + CRITICAL + tlv(OCTET_STRING, scope.value_der()))
    return tlv(ctx(0), tlv(SEQUENCE, exts))


def build_tbs(*, issuer: Issuer, algorithm: bytes, number: int, this_update: datetime, next_update: datetime,
              encoded_entries: Sequence[bytes], scope: "Scope | None" = None) -> bytes:
    """TBSCertList (§5.1.2) around already-encoded entries; revokedCertificates is omitted when empty (§5.1.2.6)."""
    this_update, next_update = utc_seconds(this_update), utc_seconds(next_update)
    if next_update <= this_update:
        raise CrlBuildError("nextUpdate must be later than thisUpdate (§5.1.2.5)")
    head = VERSION_2 + algorithm + issuer.name + encode_time(this_update) + encode_time(next_update)
    tail = extensions_der(issuer, number, scope)
    if encoded_entries:
        size = sum(map(len, encoded_entries))
        revoked_header = b"\x30" + encode_length(size)
        total = len(head) + len(revoked_header) + size + len(tail)
        parts = [b"\x30" + encode_length(total), head, revoked_header]
        parts += encoded_entries
        parts.append(tail)
        return b"".join(parts)
    return tlv(SEQUENCE, head + tail)


def assemble(tbs: bytes, algorithm: bytes, signature: bytes) -> bytes:
    """CertificateList (§5.1.1): tbsCertList, signatureAlgorithm (= the TBS signature field), signatureValue."""
    bits = b"\x03" + encode_length(len(signature) + 1) + b"\x00" + signature
    return b"".join((b"\x30", encode_length(len(tbs) + len(algorithm) + len(bits)), tbs, algorithm, bits))


def patch_crl(*, base: bytes, entries_start: int, entries_end: int, drop: Iterable[tuple[int, int]],
              add: Sequence[Entry], issuer: Issuer, signer: CrlSigner, number: int, this_update: datetime,
              next_update: datetime, scope: "Scope | None" = None) -> bytes:
    """A signed complete v2 CRL listing what `base` lists in base[entries_start:entries_end] (its
    revokedCertificates contents), without the entries at the `drop` spans, and the `add` entries after them.

    A re-sign after a few status changes then copies the unchanged entries instead of reading and encoding them
    again; `base` must be a CRL of this issuer that was checked when it was signed or adopted."""
    view = memoryview(base)
    chunks: list = []
    pos = entries_start
    for start, end in sorted(drop):
        if not entries_start <= pos <= start <= end <= entries_end:
            raise CrlBuildError("entry spans to drop overlap or lie outside revokedCertificates")
        chunks.append(view[pos:start])
        pos = end
    chunks.append(view[pos:entries_end])
    chunks = [c for c in chunks if len(c)]
    chunks += EntryEncoder(cache=False).encode(add)
    tbs = build_tbs(issuer=issuer, algorithm=signer.algorithm, number=number, this_update=this_update,
                    next_update=next_update, encoded_entries=chunks, scope=scope)
    del chunks, view
    return assemble(tbs, signer.algorithm, signer.sign(tbs))


def build_crl(*, issuer: Issuer, signer: CrlSigner, number: int, this_update: datetime, next_update: datetime,
              entries: Sequence[Entry] = (), scope: "Scope | None" = None,
              encoder: "EntryEncoder | None" = None) -> bytes:
    """A signed complete v2 CRL (§5.1) as DER; `signer.sign` receives the TBSCertList bytes once."""
    encoded = (encoder or EntryEncoder(cache=False)).encode(entries)
    tbs = build_tbs(issuer=issuer, algorithm=signer.algorithm, number=number, this_update=this_update,
                    next_update=next_update, encoded_entries=encoded, scope=scope)
    del encoded
    return assemble(tbs, signer.algorithm, signer.sign(tbs))
