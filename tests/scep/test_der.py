"""Known-answer tests of the BER reader and DER writer (X.690)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from asn1crypto import core

from trustkit import der


@pytest.mark.parametrize("value, encoding", [
    (0, "020100"), (1, "020101"), (127, "02017f"), (128, "02020080"), (255, "020200ff"), (256, "02020100"),
    (-1, "0201ff"), (-128, "020180"), (-129, "0202ff7f"), (2**63, "0209008000000000000000"),
])
def test_integer_encoding(value, encoding):
    assert der.integer(value).hex() == encoding
    el = der.read_one(bytes.fromhex(encoding), der.INTEGER)
    assert der.decode_integer(der.contents(bytes.fromhex(encoding), el)) == value


@pytest.mark.parametrize("dotted, encoding", [
    ("2.16.840.1.113733.1.9.2", "060a6086480186f845010902"),   # SCEP messageType (RFC 8894 Appendix A)
    ("1.3.6.1.5.5.7.24.1", "06082b06010505071801"),            # id-scep-failInfoText
    ("1.2.840.113549.1.7.2", "06092a864886f70d010702"),         # signedData
    ("1.3.14.3.2.7", "06052b0e030207"),                        # desCBC
    ("2.999.3", "0603883703"),                                  # first arc 2 with a large second arc
])
def test_oid_known_answers(dotted, encoding):
    assert der.oid(dotted).hex() == encoding
    assert der.oid(dotted) == core.ObjectIdentifier(dotted).dump()
    assert der.decode_oid(bytes.fromhex(encoding)[2:]) == dotted


def test_oid_rejects_malformed():
    with pytest.raises(der.DERError):
        der.decode_oid(b"\x2b\x86")       # last octet has the continuation bit
    with pytest.raises(der.DERError):
        der.decode_oid(b"")
    with pytest.raises(der.DERError):
        der.decode_oid(b"\x2b\x80\x01")   # non-minimal arc


@pytest.mark.parametrize("n, encoding", [(0, "00"), (127, "7f"), (128, "8180"), (255, "81ff"), (256, "820100"),
                                         (65536, "83010000")])
def test_length_encoding(n, encoding):
    assert der.encode_length(n).hex() == encoding
    body = bytes(n)
    assert der.tlv(0x04, body) == bytes.fromhex("04" + encoding) + body
    assert der.tlv(0x04, body) == core.OctetString(body).dump()


def test_read_definite_and_children():
    data = bytes.fromhex("3009" "020101" "0404deadbeef")
    el = der.read_one(data, der.SEQUENCE)
    assert el == (0x30, 0, 2, 11, 11)
    kids = der.children(data, el)
    assert [k[0] for k in kids] == [der.INTEGER, der.OCTET_STRING]
    assert der.contents(data, kids[1]) == bytes.fromhex("deadbeef")
    assert der.raw(data, kids[0]) == bytes.fromhex("020101")


def test_read_ber_indefinite_length_and_constructed_string():
    # SEQUENCE (indefinite) { OCTET STRING constructed (indefinite) { "ab", "cd" }, INTEGER 5 }
    data = bytes.fromhex("3080" "2480" "04026162" "04026364" "0000" "020105" "0000")
    el = der.read_one(data, der.SEQUENCE)
    assert el[3] == len(data) - 2 and el[4] == len(data)
    kids = der.children(data, el)
    assert der.string_bytes(data, kids[0]) == b"abcd"
    assert der.decode_integer(der.contents(data, kids[1])) == 5


def test_read_long_form_length():
    body = bytes(300)
    data = b"\x04\x82\x01\x2c" + body
    el = der.read_one(data, der.OCTET_STRING)
    assert der.contents(data, el) == body


def test_high_tag_number_is_skipped_over():
    data = bytes.fromhex("3007" "9f2a0101" "020102")   # [42] IMPLICIT primitive, then INTEGER
    kids = der.children(data, der.read_one(data))
    assert kids[1][0] == der.INTEGER and der.decode_integer(der.contents(data, kids[1])) == 2


@pytest.mark.parametrize("hexdata, why", [
    ("", "truncated"), ("30", "truncated"), ("3005020101", "past the end"), ("0480", "indefinite"),
    ("30800201010000ff", "trailing"), ("3080020101", "end-of-contents"), ("0485ffffffffff", "too large"),
    ("048201", "truncated length"),
])
def test_read_rejects(hexdata, why):
    with pytest.raises(der.DERError, match=why):
        der.read_one(bytes.fromhex(hexdata))


def test_nesting_depth_is_bounded():
    data = b"\x30\x80" * 60 + b"\x00\x00" * 60
    with pytest.raises(der.DERError, match="deep"):
        der.read_one(data)


def test_times():
    t = datetime(2025, 6, 1, 12, 0, 5, tzinfo=timezone.utc)
    assert der.encode_time(t) == b"\x17\x0d250601120005Z"
    late = datetime(2050, 1, 1, tzinfo=timezone.utc)
    assert der.encode_time(late) == b"\x18\x0f20500101000000Z"
    assert der.decode_time(der.UTC_TIME, b"250601120005Z") == t
    assert der.decode_time(der.UTC_TIME, b"990101000000Z").year == 1999
    assert der.decode_time(der.GENERALIZED_TIME, b"20500101000000.25Z") == late.replace(microsecond=250000)
    with pytest.raises(der.DERError):
        der.decode_time(der.UTC_TIME, b"not a time")
    with pytest.raises(ValueError):
        der.encode_time(datetime(2025, 1, 1))


def test_strings():
    data = der.utf8("Zürich") + der.printable("ABC") + der.tlv(der.BMP_STRING, "Ω".encode("utf-16-be"))
    seq = der.seq(data)
    kids = der.children(seq, der.read_one(seq))
    assert [der.decode_string(seq, k) for k in kids] == ["Zürich", "ABC", "Ω"]
    bad = der.tlv(der.UTF8_STRING, b"\xff")
    with pytest.raises(der.DERError):
        der.decode_string(bad, der.read_one(bad))
    with pytest.raises(der.DERError):
        der.decode_string(b"\x02\x01\x00", der.read_one(b"\x02\x01\x00"))


def test_set_of_sorting_and_order_keeping():
    a, b = der.integer(2), der.integer(1)
    assert der.set_of([a, b]) == b"\x31\x06" + b + a
    assert der.set_of([a, b], sort=False) == b"\x31\x06" + a + b


@pytest.mark.parametrize("tag", ["PrintableString", "UTF8String", "BMPString"])
def test_a_kept_csr_has_its_challenge_overwritten_in_place(tag):
    """What a decided transaction keeps: the same CSR (subject, key, length) with its challengePassword
    overwritten by characters its string type allows; a CSR without one, or bytes that are none, as they are."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.name import _ASN1Type
    from cryptography.x509.oid import AttributeOID, NameOID

    from scep_server.enrolment.model import challenge_password
    from scep_server.scep.message import without_challenge_password
    from tests.factories import rsa_key

    key = rsa_key()
    value = "Secret-42" if tag != "BMPString" else "Sécret-42"
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
    plain = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    csr = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, value.encode("utf-16-be" if tag == "BMPString"
                                                                              else "utf-8"),
                                _tag=getattr(_ASN1Type, tag)).sign(key, hashes.SHA256())
    der = csr.public_bytes(serialization.Encoding.DER)
    kept = without_challenge_password(der)
    assert len(kept) == len(der) and kept != der
    loaded = x509.load_der_x509_csr(kept)
    assert loaded.subject == csr.subject and loaded.public_key() == csr.public_key()
    assert set(challenge_password(loaded)) <= {"0", "\x00"}  # BMPString: "0" in UTF-16
    assert value.encode() not in kept and value.encode("utf-16-be") not in kept
    assert without_challenge_password(plain) == plain
    assert without_challenge_password(b"\x30\x03\x02\x01") == b"\x30\x03\x02\x01"
