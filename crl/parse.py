"""Pure CRL parser (RFC 5280 §5) and a serial index built in one pass over revokedCertificates."""
# The header is decoded field by field; entries are walked without creating per-entry objects: the
# index maps serial -> (entry offset << 4 | reason code + 1), and an entry's dates are decoded only
# when a lookup hits it.
from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509

from trustkit.der import (BIT_STRING, BOOLEAN, ENUMERATED, GENERALIZED_TIME, INTEGER, OCTET_STRING, OID, SEQUENCE,
                          UTC_TIME, DERError, ctx, decode_integer, decode_oid, decode_time, expect, read)

PEM_BEGIN = b"-----BEGIN X509 CRL-----"
PEM_END = b"-----END X509 CRL-----"

# extension OIDs as content octets
AKI = b"\x55\x1d\x23"
CRL_NUMBER = b"\x55\x1d\x14"
ISSUING_DISTRIBUTION_POINT = b"\x55\x1d\x1c"
DELTA_CRL_INDICATOR = b"\x55\x1d\x1b"
FRESHEST_CRL = b"\x55\x1d\x2e"
ISSUER_ALT_NAME = b"\x55\x1d\x12"
AUTHORITY_INFO_ACCESS = b"\x2b\x06\x01\x05\x05\x07\x01\x01"
REASON_CODE = b"\x55\x1d\x15"
HOLD_INSTRUCTION_CODE = b"\x55\x1d\x17"
INVALIDITY_DATE = b"\x55\x1d\x18"
CERTIFICATE_ISSUER = b"\x55\x1d\x1d"

# CRL extensions this parser understands (§5.2); any other one marked critical makes the CRL unusable (§6.3.3 (f))
KNOWN_CRL_EXTENSIONS = frozenset({AKI, CRL_NUMBER, ISSUING_DISTRIBUTION_POINT, DELTA_CRL_INDICATOR, FRESHEST_CRL,
                                  ISSUER_ALT_NAME, AUTHORITY_INFO_ACCESS})
# entry extensions (§5.3) understood; holdInstructionCode is RFC 3280's, still written by OpenSSL
KNOWN_ENTRY_EXTENSIONS = frozenset({REASON_CODE, INVALIDITY_DATE, HOLD_INSTRUCTION_CODE})

# an entry whose only extension is a reasonCode: SEQUENCE { SEQUENCE { OID 2.5.29.21, OCTET STRING { ENUMERATED
_REASON_ONLY = b"\x30\x0c\x30\x0a\x06\x03\x55\x1d\x15\x04\x03\x0a\x01"
UNKNOWN_REASON = 15  # index code for a reasonCode value outside §5.3.1: still revoked


class CrlFormatError(ValueError):
    """Bytes that are not a well-formed RFC 5280 CRL."""


class UnsupportedCrl(CrlFormatError):
    """A well-formed CRL this package does not use: unknown critical extension, indirect CRL entries."""


@dataclass(frozen=True)
class Extension:
    oid: str
    critical: bool
    value: bytes


@dataclass(frozen=True)
class IdpScope:
    """The Issuing Distribution Point of a CRL (§5.2.5)."""

    uris: tuple[str, ...]
    has_distribution_point: bool
    only_user_certs: bool
    only_ca_certs: bool
    only_attribute_certs: bool
    only_some_reasons: bool
    indirect: bool


@dataclass(frozen=True)
class RevokedEntry:
    """One decoded revokedCertificates element (§5.1.2.6, §5.3)."""

    serial: int
    revoked_at: datetime
    reason: "int | None"
    invalidity_date: "datetime | None"


@dataclass(frozen=True, eq=False)
class ParsedCrl:
    """The CertificateList fields (§5.1) with the TBS and entries located in `der`."""

    der: bytes
    tbs_start: int
    tbs_end: int
    signature_algorithm: bytes
    tbs_signature_algorithm: bytes
    signature: bytes
    version: int
    issuer: bytes
    this_update: datetime
    next_update: "datetime | None"
    entries_start: int
    entries_end: int
    extensions: tuple[Extension, ...]
    crl_number: "int | None"
    authority_key_id: "bytes | None"
    scope: "IdpScope | None"
    delta_base: "int | None"
    unknown_critical: tuple[str, ...]

    @property
    def tbs(self) -> memoryview:
        """The signed TBSCertList bytes (no copy)."""
        return memoryview(self.der)[self.tbs_start:self.tbs_end]

    @property
    def has_entries(self) -> bool:
        return self.entries_end > self.entries_start

    def extension(self, oid: str) -> "Extension | None":
        for ext in self.extensions:
            if ext.oid == oid:
                return ext
        return None

    def summary(self) -> dict:
        """A JSON-ready description (for `crl show`): number, times, entries by reason, scope, digest."""
        by_reason: dict[str, int] = {}
        for code in self.index(offsets=False).codes.values():
            key = "none" if code == 0 else str(code - 1) if code != UNKNOWN_REASON else "other"
            by_reason[key] = by_reason.get(key, 0) + 1
        return {"crl_number": self.crl_number, "this_update": self.this_update.isoformat(),
                "next_update": self.next_update.isoformat() if self.next_update else None,
                "entries": sum(by_reason.values()), "entries_by_reason": by_reason,
                "authority_key_id": self.authority_key_id.hex() if self.authority_key_id else None,
                "scope": list(self.scope.uris) if self.scope else None, "delta_base": self.delta_base,
                "bytes": len(self.der), "sha256": hashlib.sha256(self.der).hexdigest()}

    def index(self, *, offsets: bool = True) -> "CrlIndex":
        """Walk revokedCertificates once and index every serial (§5.1.2.6)."""
        # Without `offsets` the values are bare reason codes (small shared ints: no allocation per entry,
        # fewer cache misses per lookup), and `CrlIndex.entry()` is unavailable.
        return CrlIndex(self.der, index_entries(self.der, self.entries_start, self.entries_end, offsets=offsets))


def der_from_bytes(data: bytes) -> bytes:
    """The DER of a CRL delivered as DER or as PEM (RFC 7468 §5), whichever `data` is."""
    head = data[:64].lstrip()
    if not head.startswith(b"-----BEGIN"):
        return data
    start = data.find(PEM_BEGIN)
    end = data.find(PEM_END, start + 1)
    if start < 0 or end < 0:
        raise CrlFormatError("PEM data without an X509 CRL block")
    try:
        return base64.b64decode(b"".join(data[start + len(PEM_BEGIN):end].split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CrlFormatError(f"bad base64 in PEM CRL: {exc}") from None


def pem_from_der(der: bytes) -> bytes:
    """PEM encoding of a CRL (RFC 7468 §5)."""
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return PEM_BEGIN + b"\n" + b"\n".join(lines) + b"\n" + PEM_END + b"\n"


def oid_dotted(content: bytes) -> str:
    """Dotted form of OBJECT IDENTIFIER content octets (X.690 §8.19), at most 64 octets and 32 arcs."""
    try:
        return decode_oid(content)
    except DERError as exc:
        raise CrlFormatError(f"bad OBJECT IDENTIFIER: {exc}") from None


def parse_crl(data: bytes) -> ParsedCrl:
    """Parse a DER (or PEM) CRL's structure and CRL extensions; entries are located, not decoded."""
    der = der_from_bytes(bytes(data))
    try:
        return _parse(der)
    except DERError as exc:
        raise CrlFormatError(str(exc)) from None


def _parse(der: bytes) -> ParsedCrl:
    n = len(der)
    _, _, start, end, _ = expect(read(der, 0, n, strict=True), SEQUENCE, "CertificateList")
    if end != n:
        raise CrlFormatError("trailing bytes after the CertificateList")
    tag, _, ts, te, _ = read(der, start, end, strict=True)
    if tag != SEQUENCE:
        raise CrlFormatError("tbsCertList is not a SEQUENCE")
    tbs_start, tbs_end = start, te
    _, _, a0, a1, _ = expect(read(der, te, end, strict=True), SEQUENCE, "signatureAlgorithm")
    alg = der[te:a1]
    _, _, b0, b1, _ = expect(read(der, a1, end, strict=True), BIT_STRING, "signatureValue")
    if b1 != end:
        raise CrlFormatError("trailing elements after signatureValue")
    if b1 - b0 < 1 or der[b0] != 0:
        raise CrlFormatError("signatureValue has unused bits")
    signature = der[b0 + 1:b1]

    pos = ts
    tag, _, c0, c1, _ = read(der, pos, te, strict=True)
    version = 1
    if tag == INTEGER:
        if c1 - c0 > 4:
            raise CrlFormatError("CRL version is not a small INTEGER (§5.1.2.1)")
        v = decode_integer(der[c0:c1], strict=True)
        if v != 1:
            raise CrlFormatError(f"CRL version value {v}: only v2 (1) may be written (§5.1.2.1)")
        version = 2
        pos = c1
    _, _, s0, s1, _ = expect(read(der, pos, te, strict=True), SEQUENCE, "signature")
    tbs_alg = der[pos:s1]
    _, _, i0, i1, _ = expect(read(der, s1, te, strict=True), SEQUENCE, "issuer")
    issuer = der[s1:i1]
    tag, _, t0, t1, _ = read(der, i1, te, strict=True)
    if tag not in (UTC_TIME, GENERALIZED_TIME):
        raise CrlFormatError("thisUpdate is not a Time")
    this_update = decode_time(tag, der[t0:t1], strict=True)
    pos = t1
    next_update = None
    entries_start = entries_end = 0
    ext_bytes = None
    if pos < te:
        tag, _, t0, t1, _ = read(der, pos, te, strict=True)
        if tag in (UTC_TIME, GENERALIZED_TIME):
            next_update = decode_time(tag, der[t0:t1], strict=True)
            pos = t1
    if pos < te:
        tag, _, t0, t1, _ = read(der, pos, te, strict=True)
        if tag == SEQUENCE:
            entries_start, entries_end = t0, t1
            pos = t1
    if pos < te:
        tag, _, t0, t1, _ = read(der, pos, te, strict=True)
        if tag == ctx(0):
            if version != 2:
                raise CrlFormatError("a v1 CRL cannot carry extensions (§5.1.2.1)")
            ext_bytes = (t0, t1)
            pos = t1
    if pos != te:
        raise CrlFormatError("unexpected element in tbsCertList")

    extensions: tuple[Extension, ...] = ()
    crl_number = aki = delta_base = None
    scope = None
    unknown_critical: list[str] = []
    if ext_bytes is not None:
        _, _, e0, e1, _ = expect(read(der, ext_bytes[0], ext_bytes[1], strict=True), SEQUENCE, "crlExtensions")
        if e1 != ext_bytes[1]:
            raise CrlFormatError("trailing bytes in crlExtensions")
        raw = _extensions(der, e0, e1)
        extensions = tuple(Extension(oid_dotted(o), c, v) for o, c, v in raw)
        for oid, critical, value in raw:
            if oid == CRL_NUMBER:
                crl_number = _integer_value(value, "CRL Number")
                if crl_number < 0 or len(value) > 22:
                    raise CrlFormatError("CRL Number is negative or longer than 20 octets (§5.2.3)")
            elif oid == DELTA_CRL_INDICATOR:
                delta_base = _integer_value(value, "Delta CRL Indicator")
                if delta_base < 0 or len(value) > 22:
                    raise CrlFormatError("BaseCRLNumber is negative or longer than 20 octets (§5.2.4)")
            elif oid == AKI:
                aki = _aki(value)
            elif oid == ISSUING_DISTRIBUTION_POINT:
                scope = _idp(value)
            elif critical and oid not in KNOWN_CRL_EXTENSIONS:
                unknown_critical.append(oid_dotted(oid))
    return ParsedCrl(der=der, tbs_start=tbs_start, tbs_end=tbs_end, signature_algorithm=alg,
                     tbs_signature_algorithm=tbs_alg, signature=signature, version=version, issuer=issuer,
                     this_update=this_update, next_update=next_update, entries_start=entries_start,
                     entries_end=entries_end, extensions=extensions, crl_number=crl_number, authority_key_id=aki,
                     scope=scope, delta_base=delta_base, unknown_critical=tuple(unknown_critical))


def _extensions(der: bytes, pos: int, end: int) -> list[tuple[bytes, bool, bytes]]:
    """Extensions ::= SEQUENCE OF Extension (§4.1): (OID content, critical, extnValue content); no duplicates."""
    out: list[tuple[bytes, bool, bytes]] = []
    seen: set[bytes] = set()
    while pos < end:
        _, _, x0, x1, _ = expect(read(der, pos, end, strict=True), SEQUENCE, "Extension")
        _, _, o0, o1, _ = expect(read(der, x0, x1, strict=True), OID, "extnID")
        oid = der[o0:o1]
        p = o1
        critical = False
        tag, _, b0, b1, _ = read(der, p, x1, strict=True)
        if tag == BOOLEAN:
            if b1 - b0 != 1 or der[b0] not in (0, 0xFF):
                raise CrlFormatError("bad BOOLEAN in Extension")
            critical = der[b0] == 0xFF
            p = b1
        _, _, v0, v1, _ = expect(read(der, p, x1, strict=True), OCTET_STRING, "extnValue")
        if v1 != x1:
            raise CrlFormatError("trailing bytes in Extension")
        if oid in seen:
            raise CrlFormatError(f"extension {oid_dotted(oid)} appears twice (§4.2)")
        seen.add(oid)
        out.append((oid, critical, der[v0:v1]))
        pos = x1
    return out


def _integer_value(value: bytes, what: str) -> int:
    t, _, c0, c1, _ = read(value, 0, len(value), strict=True)
    if t != INTEGER or c1 != len(value):
        raise CrlFormatError(f"{what} is not an INTEGER")
    return decode_integer(value[c0:c1], strict=True)


MAX_DECODED_EXTENSION = 4096
"""The longest AKI or IDP value handed to asn1crypto (object per element): a key identifier and a few
URIs take a few hundred octets; a hostile CRL is read before its signature is checked."""


def _aki(value: bytes) -> "bytes | None":
    if len(value) > MAX_DECODED_EXTENSION:
        raise CrlFormatError(f"Authority Key Identifier longer than {MAX_DECODED_EXTENSION} octets")
    try:
        parsed = asn1_x509.AuthorityKeyIdentifier.load(value)
        key_id = parsed["key_identifier"].native
        parsed.native  # force a full decode so malformed contents are found here
    except Exception as exc:  # noqa: BLE001 - asn1crypto raises several types for malformed input
        raise CrlFormatError(f"bad Authority Key Identifier: {exc}") from None
    return key_id


def _idp(value: bytes) -> IdpScope:
    if len(value) > MAX_DECODED_EXTENSION:
        raise CrlFormatError(f"Issuing Distribution Point longer than {MAX_DECODED_EXTENSION} octets")
    try:
        idp = asn1_crl.IssuingDistributionPoint.load(value)
        native = idp.native
    except Exception as exc:  # noqa: BLE001 - asn1crypto raises several types for malformed input
        raise CrlFormatError(f"bad Issuing Distribution Point: {exc}") from None
    uris: list[str] = []
    dp = native.get("distribution_point")
    if dp is not None and idp["distribution_point"].name == "full_name":  # not nameRelativeToCRLIssuer
        for gn in idp["distribution_point"].chosen:
            if gn.name == "uniform_resource_identifier":
                uris.append(gn.chosen.native)
    return IdpScope(uris=tuple(uris), has_distribution_point=dp is not None,
                    only_user_certs=bool(native.get("only_contains_user_certs")),
                    only_ca_certs=bool(native.get("only_contains_ca_certs")),
                    only_attribute_certs=bool(native.get("only_contains_attribute_certs")),
                    only_some_reasons=native.get("only_some_reasons") is not None,
                    indirect=bool(native.get("indirect_crl")))


def index_entries(der: bytes, pos: int, end: int, *, offsets: bool = True) -> dict[int, int]:
    """serial -> (offset << 4) | (reasonCode + 1, or 0), or just the code without `offsets` (§5.1.2.6)."""
    index: dict[int, int] = {}
    shift = 4 if offsets else 0
    keep = -1 if offsets else 0
    count = 0
    from_bytes = int.from_bytes
    startswith = der.startswith
    reason_only = _REASON_ONLY
    try:
        while pos < end:
            if der[pos] != 0x30:
                raise CrlFormatError(f"revokedCertificates element at {pos} is not a SEQUENCE")
            length = der[pos + 1]
            if length < 0x80:
                c0 = pos + 2
                c1 = c0 + length
            else:
                _, _, c0, c1, _ = read(der, pos, end, strict=True)
            sl = der[c0 + 1]
            if c1 > end or der[c0] != 0x02 or not 0 < sl <= 21:
                raise CrlFormatError(f"bad userCertificate in the entry at {pos}")
            s1 = c0 + 2 + sl
            serial = from_bytes(der[c0 + 2:s1], "big", signed=True)
            t = der[s1]
            if t != 0x17 and t != 0x18:
                raise CrlFormatError(f"bad revocationDate in the entry at {pos}")
            p = s1 + 2 + der[s1 + 1]
            if p == c1:
                code = 0
            elif c1 - p == 14 and startswith(reason_only, p):
                r = der[p + 13]
                code = r + 1 if r <= 10 and r != 7 else UNKNOWN_REASON
            elif p > c1:
                raise CrlFormatError(f"entry at {pos} overruns itself")
            else:
                code = _entry_reason_code(der, p, c1)
            index[serial] = ((pos << shift) & keep) | code
            count += 1
            pos = c1
    except IndexError:
        raise CrlFormatError("truncated revokedCertificates") from None
    except DERError as exc:
        raise CrlFormatError(str(exc)) from None
    if pos != end:
        raise CrlFormatError("revokedCertificates overruns its SEQUENCE")
    if count != len(index):
        raise CrlFormatError(f"{count - len(index)} serial(s) listed twice")
    return index


def locate_entries(der: bytes, start: int, end: int, serials) -> dict[int, tuple[int, int]]:
    """serial -> (start, end) of its revokedCertificates element in der[start:end], for each of `serials`
    listed there (§5.1.2.6), without walking the other entries.

    A serial's encoding (INTEGER tag, length, octets) is searched for; a hit counts only where an entry's
    SEQUENCE header sits just before it and that entry, read on its own, names this serial. A caller that
    rewrites the CRL around these spans still checks the result with a full walk (crl.selfcheck)."""
    found: dict[int, tuple[int, int]] = {}
    for serial in serials:
        if serial <= 0:
            continue
        n = (serial.bit_length() + 8) >> 3
        needle = b"\x02" + bytes((n,)) + serial.to_bytes(n, "big")
        pos = der.find(needle, start, end)
        while pos != -1:
            span = _entry_around(der, start, end, pos, serial)
            if span is not None:
                found[serial] = span
                break
            pos = der.find(needle, pos + 1, end)
    return found


def _entry_around(der: bytes, start: int, end: int, serial_at: int, serial: int) -> "tuple[int, int] | None":
    """The span of the entry whose userCertificate starts at `serial_at`, if one does and names `serial`."""
    for head in (2, 3, 4):  # short form, then 0x81 xx, 0x82 xx xx lengths
        entry = serial_at - head
        if entry < start or der[entry] != 0x30:
            continue
        try:
            _, _, c0, c1, _ = read(der, entry, end, strict=True)
        except DERError:
            continue
        if c0 != serial_at:
            continue
        try:
            if list(index_entries(der, entry, c1, offsets=False)) == [serial]:
                return entry, c1
        except CrlFormatError:
            return None
    return None


def _entry_reason_code(der: bytes, pos: int, end: int) -> int:
    """Index code of crlEntryExtensions (§5.3); raises for unknown critical ones and indirect-CRL entries."""
    _, _, e0, e1, _ = expect(read(der, pos, end, strict=True), SEQUENCE, "crlEntryExtensions")
    if e1 != end:
        raise CrlFormatError("trailing bytes after crlEntryExtensions")
    code = 0
    for oid, critical, value in _extensions(der, e0, e1):
        if oid == REASON_CODE:
            if len(value) != 3 or value[0] != ENUMERATED or value[1] != 1:
                raise CrlFormatError("bad reasonCode")
            r = value[2]
            code = r + 1 if r <= 10 and r != 7 else UNKNOWN_REASON
        elif oid == CERTIFICATE_ISSUER:
            raise UnsupportedCrl("indirect CRL entries (certificateIssuer, §5.3.3) are not supported")
        elif critical and oid not in KNOWN_ENTRY_EXTENSIONS:
            raise UnsupportedCrl(f"unknown critical CRL entry extension {oid_dotted(oid)} (§5.3)")
    return code


def decode_entry(der: bytes, offset: int) -> RevokedEntry:
    """The entry at `offset` (from the index), fully decoded."""
    try:
        _, _, c0, c1, _ = expect(read(der, offset, len(der), strict=True), SEQUENCE, "revoked entry")
        _, _, s0, s1, _ = expect(read(der, c0, c1, strict=True), INTEGER, "userCertificate")
        tag, _, t0, t1, _ = read(der, s1, c1, strict=True)
        revoked_at = decode_time(tag, der[t0:t1], strict=True)
        reason = invalidity = None
        if t1 < c1:
            _, _, e0, e1, _ = expect(read(der, t1, c1, strict=True), SEQUENCE, "crlEntryExtensions")
            for oid, _critical, value in _extensions(der, e0, e1):
                if oid == REASON_CODE and len(value) == 3:
                    reason = value[2]
                elif oid == INVALIDITY_DATE:
                    vt, _, v0, v1, _ = read(value, 0, len(value), strict=True)
                    invalidity = decode_time(vt, value[v0:v1], strict=True)
        return RevokedEntry(serial=decode_integer(der[s0:s1], strict=True), revoked_at=revoked_at, reason=reason,
                            invalidity_date=invalidity)
    except DERError as exc:
        raise CrlFormatError(str(exc)) from None


class CrlIndex:
    """Serial lookups against one CRL: O(1), no per-entry objects kept beyond the dict."""

    __slots__ = ("der", "codes")

    def __init__(self, der: bytes, codes: dict[int, int]) -> None:
        self.der = der
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def __contains__(self, serial: int) -> bool:
        return serial in self.codes

    def reason(self, serial: int) -> "int | None | bool":
        """False when not listed; None when listed without a reasonCode; else the reasonCode (15 = unknown value)."""
        code = self.codes.get(serial)
        if code is None:
            return False
        code &= 0xF
        return None if code == 0 else (UNKNOWN_REASON if code == UNKNOWN_REASON else code - 1)

    def entry(self, serial: int) -> "RevokedEntry | None":
        code = self.codes.get(serial)
        if code is not None and code < 16:
            raise ValueError("this index was built without entry offsets")
        return None if code is None else decode_entry(self.der, code >> 4)

    def serials(self):
        return self.codes.keys()
