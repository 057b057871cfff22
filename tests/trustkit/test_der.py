"""The one BER/DER reader: strict (DER, for CRLs) against lenient (BER, for SCEP), one error type."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from trustkit import der

NESTED_INDEFINITE = bytes.fromhex("3080" "020105" "0000")          # SEQUENCE (indefinite) { INTEGER 5 }
LONG_FORM_SHORT_LENGTH = bytes.fromhex("3081" "03" "020105")        # length 3 written in two octets
LEADING_ZERO_LENGTH = bytes.fromhex("048200" "81") + bytes(0x81)    # length 0x81 with a zero octet first
CONSTRUCTED_STRING = bytes.fromhex("2406" "040161" "040162")                 # OCTET STRING { "a", "b" }, constructed


@pytest.mark.parametrize("data", [NESTED_INDEFINITE, LONG_FORM_SHORT_LENGTH, LEADING_ZERO_LENGTH])
def test_strict_refuses_what_lenient_reads(data):
    el = der.read_one(data)
    assert el[0] == data[0] and el[4] == len(data)
    with pytest.raises(der.DERError, match="not DER"):
        der.read_one(data, strict=True)


def test_strict_reads_der_identically():
    data = der.seq(der.integer(7), der.octet_string(bytes(300)), der.tlv(der.ctx(0), der.integer(-1)))
    assert der.read_one(data, strict=True) == der.read_one(data)
    outer = der.read_one(data, strict=True)
    assert der.children(data, outer, strict=True) == der.children(data, outer)
    assert der.children(data, outer, strict=True)[1][3] - der.children(data, outer, strict=True)[1][2] == 300


def test_children_strict_refuses_a_non_minimal_inner_length():
    data = der.tlv(der.SEQUENCE, LONG_FORM_SHORT_LENGTH)
    outer = der.read_one(data, strict=True)
    assert len(der.children(data, outer)) == 1
    with pytest.raises(der.DERError):
        der.children(data, outer, strict=True)


def test_constructed_strings_are_ber_only():
    el = der.read_one(CONSTRUCTED_STRING)
    assert der.string_bytes(CONSTRUCTED_STRING, el) == b"ab"
    with pytest.raises(der.DERError, match="not DER"):
        der.string_bytes(CONSTRUCTED_STRING, el, strict=True)


@pytest.mark.parametrize("body", [b"\x00\x05", b"\xff\xff", b"\x00\x00"])
def test_strict_integers_are_minimal(body):
    assert der.decode_integer(body) == int.from_bytes(body, "big", signed=True)
    with pytest.raises(der.DERError, match="minimal"):
        der.decode_integer(body, strict=True)
    assert der.decode_integer(b"\x00\x80", strict=True) == 128


@pytest.mark.parametrize("ident, body", [
    (der.UTC_TIME, b"2506011200Z"),                 # no seconds: CMS allows it, RFC 5280 does not
    (der.GENERALIZED_TIME, b"20250601120000.5"),    # no Z
    (der.UTC_TIME, b"250601120000+0100"),           # an offset
])
def test_strict_times_are_the_rfc5280_forms(ident, body):
    try:
        der.decode_time(ident, body)
    except der.DERError:
        pass  # the lenient reader may refuse some too; the strict one must refuse all of them
    with pytest.raises(der.DERError):
        der.decode_time(ident, body, strict=True)


def test_both_time_modes_agree_on_the_common_forms():
    t = datetime(2025, 6, 1, 12, 0, 5, tzinfo=timezone.utc)
    for ident, body in ((der.UTC_TIME, b"250601120005Z"), (der.GENERALIZED_TIME, b"20250601120005Z")):
        assert der.decode_time(ident, body) == der.decode_time(ident, body, strict=True) == t
    frac = der.decode_time(der.GENERALIZED_TIME, b"20250601120005.25Z", strict=True)
    assert frac == t.replace(microsecond=250000) == der.decode_time(der.GENERALIZED_TIME, b"20250601120005.25Z")


@pytest.mark.parametrize("call", [
    lambda: der.read_one(b"\x30\x05\x02"),
    lambda: der.read_one(b"\x30\x80\x02\x01\x05", strict=True),
    lambda: der.decode_integer(b""),
    lambda: der.decode_oid(b"\x2b\x86"),
    lambda: der.decode_time(der.UTC_TIME, b"\xff" * 13, strict=True),
    lambda: der.decode_time(der.UTC_TIME, b"\xff" * 13),
    lambda: der.decode_time(der.INTEGER, b"250601120005Z", strict=True),
    lambda: der.decode_string(b"\x0c\x01\xff", der.read_one(b"\x0c\x01\xff")),
    lambda: der.expect(der.read_one(b"\x02\x01\x00"), der.SEQUENCE, "outer"),
])
def test_one_error_type(call):
    with pytest.raises(der.DERError):
        call()


def test_expect_names_what_it_expected():
    el = der.read_one(b"\x02\x01\x00")
    assert der.expect(el, der.INTEGER, "version") is el
    with pytest.raises(der.DERError, match="version: expected tag 0x30, found 0x02"):
        der.expect(el, der.SEQUENCE, "version")


def test_time_writers_want_aware_values_and_drop_fractions():
    t = datetime(2025, 6, 1, 12, 0, 5, 999999, tzinfo=timezone.utc)
    assert der.encode_time(t) == b"\x17\x0d250601120005Z"
    assert der.encode_generalized_time(t) == b"\x18\x0f20250601120005Z"
    with pytest.raises(ValueError):
        der.encode_generalized_time(datetime(2025, 1, 1))
    assert der.utc_seconds(datetime(2025, 1, 1, 0, 0, 0, 5)) == datetime(2025, 1, 1, tzinfo=timezone.utc)


def _indefinite(tag: int, body: bytes) -> bytes:
    return bytes((tag, 0x80)) + body + b"\x00\x00"


def test_an_indefinite_length_holding_thousands_of_elements_is_refused():
    # finding its end reads every element, again for each value around it that is read: bounded
    with pytest.raises(der.DERError, match="more than 1024 elements"):
        der.read_one(_indefinite(der.SEQUENCE, der.NULL_DER * 20_000))
    nested = _indefinite(der.SEQUENCE, _indefinite(der.SEQUENCE, der.NULL_DER * 1000) + der.NULL_DER * 100)
    with pytest.raises(der.DERError, match="more than 1024 elements"):  # counted through nested ones
        der.read_one(nested)
    fits = _indefinite(der.SEQUENCE, _indefinite(der.SEQUENCE, der.NULL_DER * 900) + der.NULL_DER * 100)
    assert der.read_one(fits)[4] == len(fits)


@pytest.mark.parametrize("data", [
    pytest.param(der.tlv(0x24, der.octet_string(b"") * 20_000), id="definite"),
    pytest.param(_indefinite(0x24, der.tlv(0x24, der.octet_string(b"") * 1000) * 2), id="nested-definite"),
    pytest.param(_indefinite(0x24, _indefinite(0x24, _indefinite(0x24, _indefinite(
        0x24, _indefinite(0x24, der.octet_string(b"x")))))), id="nested-deep"),
])
def test_a_constructed_string_of_thousands_of_segments_or_deeply_nested_is_refused(data):
    with pytest.raises(der.DERError, match="constructed string"):
        der.string_bytes(data, der.read_one(data))


def test_a_constructed_string_in_1000_octet_segments_reads():
    value = bytes(range(256)) * 250  # 64000 octets: 64 segments, as BER streaming encoders write them
    data = _indefinite(0x24, b"".join(der.octet_string(value[i:i + 1000]) for i in range(0, len(value), 1000)))
    assert der.string_bytes(data, der.read_one(data)) == value
