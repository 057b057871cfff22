"""One BER/DER reader and DER writer (X.690 §8, §10) for the CMS structures of SCEP and for CRLs.

Reading keeps offsets into the original bytes so that signed content is never re-encoded. Every reader
raises :class:`DERError` and nothing else for malformed input, and takes a ``strict`` flag:

- lenient (the default) reads BER as real SCEP clients send it: indefinite lengths, non-minimal length
  octets, constructed strings (BouncyCastle-based jscep streams BER, Go's pkcs7 sends a constructed ``[0]``
  encryptedContent);
- ``strict=True`` reads DER only (X.690 §10): definite lengths in their shortest form, primitive strings,
  minimal INTEGERs and the RFC 5280 §4.1.2.5 time forms, as a CRL must be encoded.

An element is a tuple ``(identifier, start of TLV, start of contents, end of contents, end of TLV)``; for an
indefinite length the end of contents excludes the end-of-contents octets.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

UTC = timezone.utc

# Identifier octets (X.690 §8.1.2).
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
UTF8_STRING = 0x0C
SEQUENCE = 0x30
SET = 0x31
NUMERIC_STRING = 0x12
PRINTABLE_STRING = 0x13
TELETEX_STRING = 0x14
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
VISIBLE_STRING = 0x1A
UNIVERSAL_STRING = 0x1C
BMP_STRING = 0x1E
CONSTRUCTED = 0x20


def ctx(n: int, constructed: bool = True) -> int:
    """The identifier octet of a context-specific tag ``[n]`` (X.690 §8.1.2.2)."""
    return 0x80 | (0x20 if constructed else 0) | n


MAX_DEPTH = 40
MAX_INDEFINITE_ELEMENTS = 1024
"""The most TLVs an indefinite-length value may hold, counted through the indefinite-length values inside it.
Its end is found by reading every one of them, and again each time a value around it is read: without a
bound a body of thousands of tiny elements costs a hundred times a real message (BER from real clients holds
a few dozen: the structure and 1000-octet string segments)."""
MAX_STRING_SEGMENTS = 1024
"""The most segments of a constructed string (X.690 §8.7.3), counted through its nested segments."""
MAX_STRING_DEPTH = 4
"""The deepest nesting of constructed string segments (encoders nest none: segments are primitive)."""


class DERError(ValueError):
    """The bytes are not a well-formed BER (or, when strict, DER) encoding of what was expected."""


Element = tuple[int, int, int, int, int]


def read(data: bytes, pos: int, end: int, depth: int = 0, strict: bool = False,
         _budget: list[int] | None = None) -> Element:
    """Read one TLV starting at ``pos`` that must end by ``end`` (X.690 §8.1; §10.1 when ``strict``).

    High tag numbers (§8.1.2.4) are read over; their identifier is the first octet, so they never match
    a tag constant. An indefinite length holds at most MAX_INDEFINITE_ELEMENTS TLVs (``_budget``: what is
    left of the enclosing one's)."""
    if pos + 2 <= end:  # fast path: low tag number, short definite length (both modes)
        ident = data[pos]
        first = data[pos + 1]
        if first < 0x80 and ident & 0x1F != 0x1F:
            cend = pos + 2 + first
            if cend > end:
                raise DERError("truncated: contents run past the end")
            return ident, pos, pos + 2, cend, cend
    else:
        raise DERError("truncated: no room for a tag and a length")
    ident = data[pos]
    p = pos + 1
    if ident & 0x1F == 0x1F:
        while True:
            if p >= end:
                raise DERError("truncated tag")
            b = data[p]
            p += 1
            if not b & 0x80:
                break
    if p >= end:
        raise DERError("truncated length")
    first = data[p]
    p += 1
    if first < 0x80:
        cend = p + first
    elif first == 0x80:  # indefinite length (§8.1.3.6): BER only, constructed only
        if strict:
            raise DERError("indefinite length (not DER)")
        if not ident & CONSTRUCTED:
            raise DERError("indefinite length on a primitive value")
        if depth >= MAX_DEPTH:
            raise DERError("nesting too deep")
        budget = _budget if _budget is not None else [MAX_INDEFINITE_ELEMENTS]
        q = p
        while True:
            if q + 2 > end:
                raise DERError("truncated: missing end-of-contents")
            if data[q] == 0 and data[q + 1] == 0:
                return ident, pos, p, q, q + 2
            budget[0] -= 1
            if budget[0] < 0:
                raise DERError(f"an indefinite length holding more than {MAX_INDEFINITE_ELEMENTS} elements")
            q = read(data, q, end, depth + 1, False, budget)[4]
    else:
        n = first & 0x7F
        if n > 4 or first == 0xFF:
            raise DERError("length too large")
        if p + n > end:
            raise DERError("truncated length")
        value = int.from_bytes(data[p:p + n], "big")
        if strict and (value < 0x80 or data[p] == 0):
            raise DERError("length is not minimally encoded (not DER)")
        p += n
        cend = p + value
    if cend > end:
        raise DERError("truncated: contents run past the end")
    return ident, pos, p, cend, cend


def read_one(data: bytes, expect: int | None = None, strict: bool = False) -> Element:
    """Read the single TLV that makes up all of ``data``."""
    el = read(data, 0, len(data), 0, strict)
    if el[4] != len(data):
        raise DERError("trailing data after the value")
    if expect is not None and el[0] != expect:
        raise DERError(f"expected tag 0x{expect:02x}, found 0x{el[0]:02x}")
    return el


def children(data: bytes, el: Element, limit: int | None = None, strict: bool = False) -> list[Element]:
    """The elements inside a constructed element; DERError after ``limit`` of them, if given."""
    if not el[0] & CONSTRUCTED:
        raise DERError("expected a constructed value")
    out = []
    pos, end = el[2], el[3]
    while pos < end:
        if limit is not None and len(out) == limit:
            raise DERError(f"more than {limit} elements")
        if pos + 2 <= end:  # fast path: low tag number, short definite length
            ident, first = data[pos], data[pos + 1]
            if first < 0x80 and ident & 0x1F != 0x1F:
                cend = pos + 2 + first
                if cend > end:
                    raise DERError("truncated: contents run past the end")
                out.append((ident, pos, pos + 2, cend, cend))
                pos = cend
                continue
        c = read(data, pos, end, 0, strict)
        out.append(c)
        pos = c[4]
    return out


def expect(el: Element, ident: int, what: str) -> Element:
    """``el`` itself, if its identifier octet is ``ident``; DERError naming ``what`` otherwise."""
    if el[0] != ident:
        raise DERError(f"{what}: expected tag 0x{ident:02x}, found 0x{el[0]:02x}")
    return el


def contents(data: bytes, el: Element) -> bytes:
    """The contents octets of an element (primitive form)."""
    return data[el[2]:el[3]]


def raw(data: bytes, el: Element) -> bytes:
    """The whole encoding of an element, exactly as received."""
    return data[el[1]:el[4]]


def string_bytes(data: bytes, el: Element, depth: int = 0, strict: bool = False,
                 _segments: list[int] | None = None) -> bytes:
    """The value of a string type in primitive or (BER only) constructed form (X.690 §8.7.3, §8.21.6, §10.2):
    at most MAX_STRING_SEGMENTS segments, nested at most MAX_STRING_DEPTH deep."""
    if not el[0] & CONSTRUCTED:
        return data[el[2]:el[3]]
    if strict:
        raise DERError("constructed string (not DER)")
    if depth >= MAX_STRING_DEPTH:
        raise DERError("constructed string segments nested too deep")
    left = _segments if _segments is not None else [MAX_STRING_SEGMENTS]
    try:
        kids = children(data, el, left[0])
    except DERError as exc:
        if str(exc).startswith("more than"):
            raise DERError(f"a constructed string of more than {MAX_STRING_SEGMENTS} segments") from None
        raise
    left[0] -= len(kids)
    return b"".join(string_bytes(data, c, depth + 1, False, left) for c in kids)


def decode_integer(body: bytes, strict: bool = False) -> int:
    """An INTEGER's value from its contents octets (X.690 §8.3); when ``strict``, minimal octets only (§8.3.2)."""
    if not body:
        raise DERError("empty INTEGER")
    if strict and len(body) > 1 and ((body[0] == 0 and body[1] < 0x80) or (body[0] == 0xFF and body[1] >= 0x80)):
        raise DERError("INTEGER is not minimally encoded")
    return int.from_bytes(body, "big", signed=True)


_OID_CACHE: dict[bytes, str] = {}

MAX_OID_BYTES = 64
"""Longest OBJECT IDENTIFIER content accepted: the longest the SCEP codec ever matches is 11 octets, a UUID
OID (2.25.<128 bits>) is 20; checked before any arithmetic so a hostile OID costs nothing."""
MAX_OID_ARCS = 32


def decode_oid(body: bytes) -> str:
    """A dotted OBJECT IDENTIFIER from its contents octets (X.690 §8.19), at most 64 octets and 32 arcs."""
    dotted = _OID_CACHE.get(body)
    if dotted is not None:
        return dotted
    if not body or body[-1] & 0x80:
        raise DERError("malformed OBJECT IDENTIFIER")
    if len(body) > MAX_OID_BYTES:
        raise DERError(f"OBJECT IDENTIFIER longer than {MAX_OID_BYTES} octets")
    arcs: list[int] = []
    value = 0
    for i, b in enumerate(body):
        if value == 0 and b == 0x80 and (i == 0 or not body[i - 1] & 0x80):
            raise DERError("non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    if len(arcs) > MAX_OID_ARCS - 1:  # the first subidentifier holds two arcs
        raise DERError(f"OBJECT IDENTIFIER with more than {MAX_OID_ARCS} arcs")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    dotted = ".".join(str(a) for a in head + arcs[1:])
    if len(_OID_CACHE) < 4096:
        _OID_CACHE[bytes(body)] = dotted
    return dotted


_TIME_FORMATS = {UTC_TIME: ("%y%m%d%H%M%SZ", "%y%m%d%H%MZ"), GENERALIZED_TIME: ("%Y%m%d%H%M%SZ",)}


def decode_time(ident: int, body: bytes, strict: bool = False) -> datetime:
    """A UTCTime or GeneralizedTime as an aware UTC datetime; DERError for anything else.

    Lenient: the CMS forms (X.690 §11.7, §11.8; RFC 5652 §11.3), UTCTime also without seconds. Strict: the
    RFC 5280 §4.1.2.5 forms only, YYMMDDHHMMSSZ and YYYYMMDDHHMMSS[.f]Z."""
    if strict:
        return _decode_time_strict(ident, body)
    if len(body) > 32 or not body.isascii():
        raise DERError("malformed time")
    text = body.decode("ascii")
    micro = 0
    if ident == GENERALIZED_TIME and "." in text:  # fractional seconds
        head, _, frac = text.partition(".")
        digits = frac[:-1] if frac.endswith("Z") else frac
        if not digits.isdigit() or not digits.isascii():
            raise DERError("malformed time")
        text = head + "Z"
        micro = int((digits + "000000")[:6])
    if not text[:-1].isdigit():  # strptime also takes signs, spaces and single digits
        raise DERError("malformed time")
    for fmt in _TIME_FORMATS.get(ident, ()):
        try:
            dt = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if ident == UTC_TIME and dt.year >= 2050:  # RFC 5280 §4.1.2.5.1: YY >= 50 means 19YY
            dt = dt.replace(year=dt.year - 100)
        return dt.replace(microsecond=micro, tzinfo=UTC)
    raise DERError("malformed time")


def _decode_time_strict(ident: int, body: bytes) -> datetime:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise DERError("time is not ASCII") from None
    if not text.endswith("Z"):
        raise DERError(f"time {text!r} is not in UTC (Z)")
    digits = text[:-1]
    if ident == UTC_TIME:
        if len(digits) != 12 or not digits.isdigit():
            raise DERError(f"bad UTCTime {text!r}")
        yy = int(digits[:2])
        year = 1900 + yy if yy >= 50 else 2000 + yy
        rest = digits[2:]
        frac = ""
    elif ident == GENERALIZED_TIME:
        main, _, frac = digits.partition(".")
        if len(main) != 14 or not main.isdigit() or (frac and not frac.isdigit()):
            raise DERError(f"bad GeneralizedTime {text!r}")
        year = int(main[:4])
        rest = main[4:]
    else:
        raise DERError(f"tag 0x{ident:02x} is not a time")
    try:
        value = datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]), int(rest[8:10]),
                         tzinfo=UTC)
    except ValueError:
        raise DERError(f"impossible time {text!r}") from None
    if frac:
        value += timedelta(microseconds=int(frac[:6].ljust(6, "0")))
    return value


_STRING_CODECS = {
    UTF8_STRING: "utf-8", PRINTABLE_STRING: "ascii", IA5_STRING: "ascii", VISIBLE_STRING: "ascii",
    NUMERIC_STRING: "ascii", TELETEX_STRING: "latin-1", BMP_STRING: "utf-16-be", UNIVERSAL_STRING: "utf-32-be",
}


def decode_string(data: bytes, el: Element) -> str:
    """The text of an ASN.1 character string (X.680 §41)."""
    codec = _STRING_CODECS.get(el[0] & ~CONSTRUCTED)
    if codec is None:
        raise DERError(f"tag 0x{el[0]:02x} is not a character string")
    try:
        return string_bytes(data, el).decode(codec)
    except UnicodeDecodeError as exc:
        raise DERError(f"malformed character string: {exc.reason}") from None


# ---------------------------------------------------------------- writing (DER, X.690 §10)

def encode_length(n: int) -> bytes:
    """Definite-form length octets, shortest form (X.690 §8.1.3, §10.1)."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(ident: int, body: bytes) -> bytes:
    """One DER element with a single-octet identifier."""
    n = len(body)
    if n < 0x80:
        return bytes((ident, n)) + body
    if n < 0x100:
        return bytes((ident, 0x81, n)) + body
    if n < 0x10000:
        return bytes((ident, 0x82, n >> 8, n & 0xFF)) + body
    return bytes((ident,)) + encode_length(n) + body


def seq(*parts: bytes) -> bytes:
    """A SEQUENCE of already-encoded parts."""
    return tlv(SEQUENCE, b"".join(parts))


def set_of(parts: list[bytes] | tuple[bytes, ...], sort: bool = True) -> bytes:
    """A SET OF: DER order (X.690 §11.6) unless ``sort`` is off to keep a meaningful order."""
    return tlv(SET, b"".join(sorted(parts) if sort else parts))


def integer_content(value: int) -> bytes:
    """Two's-complement minimal contents octets of an INTEGER (X.690 §8.3)."""
    if value >= 0:
        return value.to_bytes((value.bit_length() + 8) // 8, "big")
    return value.to_bytes((value + 1).bit_length() // 8 + 1, "big", signed=True)


def integer(value: int) -> bytes:
    """A DER INTEGER (X.690 §8.3)."""
    return tlv(INTEGER, integer_content(value))


def oid(dotted: str) -> bytes:
    """A DER OBJECT IDENTIFIER (X.690 §8.19)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"bad OID {dotted!r}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1]] + arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(OID, bytes(out))


def octet_string(body: bytes) -> bytes:
    return tlv(OCTET_STRING, body)


def printable(text: str) -> bytes:
    """A PrintableString (X.680 §41.4); SCEP's messageType, pkiStatus and failInfo (RFC 8894 §3.2.1)."""
    return tlv(PRINTABLE_STRING, text.encode("ascii"))


def utf8(text: str) -> bytes:
    return tlv(UTF8_STRING, text.encode("utf-8"))


def utc_seconds(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime truncated to whole seconds; a naive value is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(microsecond=0)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def encode_time(value: datetime) -> bytes:
    """Time (RFC 5280 §4.1.2.5, RFC 5652 §11.3): UTCTime for 1950-2049, GeneralizedTime otherwise, Zulu, to
    the second (fractions dropped). ``value`` must be aware: ValueError otherwise."""
    v = _utc(value)
    if 1950 <= v.year < 2050:
        return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (v.year % 100, v.month, v.day, v.hour, v.minute, v.second)
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (v.year, v.month, v.day, v.hour, v.minute, v.second)


def encode_generalized_time(value: datetime) -> bytes:
    """GeneralizedTime YYYYMMDDHHMMSSZ (RFC 5280 §4.1.2.5.2) whatever the year, as invalidityDate requires
    (§5.3.2). ``value`` must be aware: ValueError otherwise."""
    v = _utc(value)
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (v.year, v.month, v.day, v.hour, v.minute, v.second)


NULL_DER = b"\x05\x00"
