"""The pure parser and serial index, on OpenSSL's and cryptography's CRLs and on broken input."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, ObjectIdentifier

from crl.build import Issuer, build_crl
from trustkit.der import encode_length, tlv
from crl.parse import (CrlFormatError, UnsupportedCrl, der_from_bytes, oid_dotted, parse_crl, pem_from_der)
from crl.signing import CrlSigner, verify_signature
from tests.crl.pki import make_ca

UTC = timezone.utc
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "crl"
T0 = datetime(2026, 11, 23, 10, tzinfo=UTC)
T1 = datetime(2026, 11, 30, 10, tzinfo=UTC)


def test_openssl_vector_parses_and_indexes():
    der = (FIXTURES / "openssl-gencrl.der").read_bytes()
    ca = x509.load_pem_x509_certificate((FIXTURES / "ca.pem").read_bytes())
    crl = parse_crl(der)
    assert crl.version == 2 and crl.crl_number == 10
    assert crl.this_update == T0 and crl.next_update == T1
    assert crl.issuer == ca.subject.public_bytes()
    assert crl.authority_key_id == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert crl.scope is None and crl.delta_base is None and crl.unknown_critical == ()
    assert verify_signature(ca.public_key(), crl.signature_algorithm, crl.tbs, crl.signature)
    assert not verify_signature(ca.public_key(), crl.signature_algorithm, bytes(crl.tbs)[:-1] + b"\x00",
                                crl.signature)
    index = crl.index()
    assert len(index) == 5 and 0x1234 not in index
    assert index.reason(0x01) == 1 and index.reason(0x42) == 3 and index.reason(0x80) == 5
    assert index.reason(0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF) is None
    assert index.reason(0x999) is False
    e = index.entry(0x01)
    assert e.revoked_at == datetime(2026, 3, 1, 12, tzinfo=UTC) and e.reason == 1
    assert e.invalidity_date == datetime(2026, 2, 28, 9, tzinfo=UTC)
    assert index.entry(0x42).revoked_at == datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_pem_and_der_give_the_same_crl():
    der = (FIXTURES / "openssl-gencrl.der").read_bytes()
    pem = (FIXTURES / "openssl-gencrl.pem").read_bytes()
    assert der_from_bytes(pem) == der
    assert der_from_bytes(pem_from_der(der)) == der
    assert x509.load_pem_x509_crl(pem_from_der(der)).tbs_certlist_bytes == x509.load_der_x509_crl(der).tbs_certlist_bytes
    assert parse_crl(pem).crl_number == 10
    with pytest.raises(CrlFormatError):
        der_from_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CrlFormatError):
        der_from_bytes(b"-----BEGIN X509 CRL-----\n!!!!\n-----END X509 CRL-----\n")


def _crypto_crl(ca, *, exts=(), revoked=(), this_update=T0, next_update=T1):
    b = x509.CertificateRevocationListBuilder(ca.cert.subject, this_update, next_update, list(exts), list(revoked))
    return b.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_idp_delta_and_unknown_critical_extensions_are_reported():
    ca = make_ca(kind="ec")
    idp = x509.IssuingDistributionPoint(full_name=[x509.UniformResourceIdentifier("http://h/a.crl"),
                                                   x509.UniformResourceIdentifier("http://h/b.crl")],
                                        relative_name=None, only_contains_user_certs=False,
                                        only_contains_ca_certs=True, only_some_reasons=None, indirect_crl=False,
                                        only_contains_attribute_certs=False)
    der = _crypto_crl(ca, exts=[
        x509.Extension(ExtensionOID.CRL_NUMBER, False, x509.CRLNumber(7)),
        x509.Extension(ExtensionOID.ISSUING_DISTRIBUTION_POINT, True, idp),
        x509.Extension(ExtensionOID.DELTA_CRL_INDICATOR, True, x509.DeltaCRLIndicator(5)),
        x509.Extension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), True, x509.UnrecognizedExtension(
            ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")),
        x509.Extension(ObjectIdentifier("1.3.6.1.4.1.99999.2"), False, x509.UnrecognizedExtension(
            ObjectIdentifier("1.3.6.1.4.1.99999.2"), b"\x05\x00")),
    ])
    crl = parse_crl(der)
    assert crl.crl_number == 7 and crl.delta_base == 5 and crl.authority_key_id is None
    assert crl.scope.uris == ("http://h/a.crl", "http://h/b.crl") and crl.scope.only_ca_certs
    assert not crl.scope.only_user_certs and not crl.scope.indirect
    assert crl.unknown_critical == ("1.3.6.1.4.1.99999.1",)
    assert crl.extension("2.5.29.28").critical


def test_entry_extensions_unknown_critical_and_indirect_are_unsupported():
    ca = make_ca(kind="ec")

    def revoked(serial, ext):
        return (x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(T0)
                .add_extension(ext, critical=True).build())

    odd = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.3"), b"\x05\x00")
    with pytest.raises(UnsupportedCrl, match="99999.3"):
        parse_crl(_crypto_crl(ca, revoked=[revoked(5, odd)])).index()
    issuer = x509.CertificateIssuer([x509.DNSName("other.example")])
    with pytest.raises(UnsupportedCrl, match="indirect"):
        parse_crl(_crypto_crl(ca, revoked=[revoked(6, issuer)])).index()
    noncritical = (x509.RevokedCertificateBuilder().serial_number(7).revocation_date(T0)
                   .add_extension(odd, critical=False)
                   .add_extension(x509.CRLReason(x509.ReasonFlags.certificate_hold), critical=False).build())
    index = parse_crl(_crypto_crl(ca, revoked=[noncritical])).index()
    assert index.reason(7) == 6


def test_duplicate_serials_and_extensions_are_malformed():
    ca = make_ca(kind="ec")
    rc = x509.RevokedCertificateBuilder().serial_number(5).revocation_date(T0).build()
    with pytest.raises(CrlFormatError, match="twice"):
        parse_crl(_crypto_crl(ca, revoked=[rc, rc])).index()


def _signed(ca, tbs: bytes) -> bytes:
    signer = CrlSigner.for_private_key(ca.key)
    sig = signer.sign(tbs)
    bits = b"\x03" + encode_length(len(sig) + 1) + b"\x00" + sig
    return tlv(0x30, tbs + signer.algorithm + bits)


def test_broken_structures_are_refused():
    ca = make_ca(kind="ec")
    good = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=1,
                     this_update=T0, next_update=T1, entries=[(5, T0, 1, None)])
    parse_crl(good).index()
    for bad in (good[:-1], good + b"\x00", good[:40], b"", b"\x30\x80\x00\x00", b"\x04\x00"):
        with pytest.raises(CrlFormatError):
            parse_crl(bad)
    # a non-minimal length
    with pytest.raises(CrlFormatError):
        parse_crl(b"\x30\x81\x05" + good[2:7])
    # version 3 (value 2) does not exist for CRLs
    crl = parse_crl(good)
    tbs = bytes(crl.tbs)
    v3 = tbs.replace(b"\x02\x01\x01", b"\x02\x01\x02", 1)
    with pytest.raises(CrlFormatError, match="version"):
        parse_crl(_signed(ca, v3))
    # an entry whose serial is not an INTEGER
    pos = tbs.find(b"\x02\x01\x05")
    broken = tbs[:pos] + b"\x04" + tbs[pos + 1:]
    with pytest.raises(CrlFormatError):
        parse_crl(_signed(ca, broken)).index()


def test_oid_dotted():
    assert oid_dotted(bytes.fromhex("551d14")) == "2.5.29.20"
    assert oid_dotted(bytes.fromhex("2a864886f70d01010b")) == "1.2.840.113549.1.1.11"
    with pytest.raises(CrlFormatError):
        oid_dotted(b"\x86")


def test_serials_of_every_length_are_indexed_exactly():
    ca = make_ca(kind="ec")
    rcs = [x509.RevokedCertificateBuilder().serial_number(s).revocation_date(T0 - timedelta(days=1)).build()
           for s in (1, 2**159 - 1, 0x00FF)]
    index = parse_crl(_crypto_crl(ca, revoked=rcs)).index()
    assert set(index.serials()) == {1, 2**159 - 1, 0xFF}


def test_summary_for_crl_show():
    der = (FIXTURES / "openssl-gencrl.der").read_bytes()
    s = parse_crl(der).summary()
    assert s["crl_number"] == 10 and s["entries"] == 5
    assert s["entries_by_reason"] == {"1": 1, "3": 1, "5": 1, "none": 1, "4": 1}
    assert s["this_update"] == "2026-11-23T10:00:00+00:00" and s["next_update"] == "2026-11-30T10:00:00+00:00"
    assert s["bytes"] == len(der) and len(s["sha256"]) == 64 and s["scope"] is None
