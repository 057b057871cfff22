"""Minimal DER encoding and decoding for CRLs (ITU-T X.690 §8, §10): lengths, TLVs, INTEGER, Time."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

UTC = timezone.utc

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_UTC_TIME = 0x17
TAG_GENERALIZED_TIME = 0x18
TAG_SEQUENCE = 0x30
TAG_SET = 0x31
TAG_CONTEXT_0 = 0xA0  # [0] constructed


class DerError(ValueError):
    """Bytes that are not the DER this module expects (X.690 §10)."""


def encode_length(n: int) -> bytes:
    """Definite-form length octets, shortest form (X.690 §8.1.3, §10.1)."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element with a single-octet tag."""
    return bytes((tag,)) + encode_length(len(content)) + content


def integer_content(value: int) -> bytes:
    """Two's-complement minimal content octets of an INTEGER (X.690 §8.3)."""
    if value >= 0:
        return value.to_bytes((value.bit_length() + 8) // 8, "big")
    return value.to_bytes((value + 1).bit_length() // 8 + 1, "big", signed=True)


def encode_integer(value: int) -> bytes:
    """A DER INTEGER."""
    return tlv(TAG_INTEGER, integer_content(value))


def decode_integer(content: bytes) -> int:
    """The value of INTEGER content octets; rejects non-minimal encodings (X.690 §8.3.2)."""
    if not content:
        raise DerError("empty INTEGER")
    if len(content) > 1 and ((content[0] == 0 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)):
        raise DerError("INTEGER is not minimally encoded")
    return int.from_bytes(content, "big", signed=True)


def utc_seconds(value: datetime) -> datetime:
    """`value` as an aware UTC datetime truncated to whole seconds (naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(microsecond=0)


def encode_time(value: datetime) -> bytes:
    """RFC 5280 §5.1.2.4 Time: UTCTime through 2049, GeneralizedTime from 2050, in UTC, whole seconds."""
    v = utc_seconds(value)
    if 1950 <= v.year < 2050:
        return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (v.year % 100, v.month, v.day, v.hour, v.minute, v.second)
    return encode_generalized_time(v)


def encode_generalized_time(value: datetime) -> bytes:
    """GeneralizedTime YYYYMMDDHHMMSSZ (RFC 5280 §4.1.2.5.2), as invalidityDate requires (§5.3.2)."""
    v = utc_seconds(value)
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (v.year, v.month, v.day, v.hour, v.minute, v.second)


def decode_time(tag: int, content: bytes) -> datetime:
    """UTCTime or GeneralizedTime content (RFC 5280 §4.1.2.5) to an aware UTC datetime."""
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DerError("time is not ASCII") from exc
    if not text.endswith("Z"):
        raise DerError(f"time {text!r} is not in UTC (Z)")
    digits = text[:-1]
    if tag == TAG_UTC_TIME:
        if len(digits) != 12 or not digits.isdigit():
            raise DerError(f"bad UTCTime {text!r}")
        yy = int(digits[:2])
        year = 1900 + yy if yy >= 50 else 2000 + yy
        rest = digits[2:]
        frac = ""
    elif tag == TAG_GENERALIZED_TIME:
        main, _, frac = digits.partition(".")
        if len(main) != 14 or not main.isdigit() or (frac and not frac.isdigit()):
            raise DerError(f"bad GeneralizedTime {text!r}")
        year = int(main[:4])
        rest = main[4:]
    else:
        raise DerError(f"tag 0x{tag:02x} is not a time")
    try:
        value = datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]), int(rest[8:10]),
                         tzinfo=UTC)
    except ValueError as exc:
        raise DerError(f"impossible time {text!r}") from exc
    if frac:
        value += timedelta(microseconds=int(frac[:6].ljust(6, "0")))
    return value


def read_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Header of the element at `pos`: (tag, content start, content end); single-octet tags only."""
    if pos + 2 > end:
        raise DerError("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-octet tags are not used in CRLs")
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4:
            raise DerError("indefinite or oversized length")
        if pos + k > end:
            raise DerError("truncated length")
        n = int.from_bytes(data[pos:pos + k], "big")
        if n < 0x80 or (k > 1 and data[pos] == 0):
            raise DerError("length is not minimally encoded")
        pos += k
    if pos + n > end:
        raise DerError("element runs past its container")
    return tag, pos, pos + n


def expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Content bounds of the element at `pos`, which must carry `tag`."""
    t, start, stop = read_tlv(data, pos, end)
    if t != tag:
        raise DerError(f"{what}: expected tag 0x{tag:02x}, found 0x{t:02x}")
    return start, stop
