"""The codec alone (crl.ocsp): bounds of the request parser, issuer matching, the responses it signs."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from asn1crypto import ocsp as a_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509 import ocsp
from hypothesis import given, settings, strategies as st

from crl.ocsp import (
    Answer,
    IssuerIdentity,
    MalformedRequest,
    ResponseSigner,
    build_response,
    error_response,
    parse_request,
)
from crl.signing import RSA_SHA256
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from tests.factories import NOW, csr, make_ca, rsa_key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = make_ca(tmp_path_factory.mktemp("ca"))
    cert = ca.issue(csr(rsa_key()), IssuancePolicy(CertificateTemplate()), serial=0x1F00D, now=NOW)
    return ca, cert


def _request(cert, issuer, algorithm=hashes.SHA1(), nonce=None) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=["sha1", "sha256"])
def test_parse_and_match_issuer(pki, algorithm):
    ca, cert = pki
    req = parse_request(_request(cert, ca.cert, algorithm, nonce=b"n" * 20))
    assert req.nonce is not None and req.nonce.endswith(b"n" * 20)
    assert not req.cacheable
    (cid,) = req.cert_ids
    assert cid.serial == 0x1F00D and cid.hash_algorithm == algorithm.name
    assert IssuerIdentity.from_certificate(ca.cert_der).names(cid)
    assert not IssuerIdentity.from_certificate(cert.public_bytes(serialization.Encoding.DER)).names(cid)
    assert parse_request(_request(cert, ca.cert, algorithm)).cacheable


def test_unsupported_cert_id_hash_names_no_issuer(pki):
    ca, cert = pki
    (cid,) = parse_request(_request(cert, ca.cert, hashes.SHA384())).cert_ids
    assert cid.hash_algorithm == "2.16.840.1.101.3.4.2.2"
    assert not IssuerIdentity.from_certificate(ca.cert_der).names(cid)


def test_bounds(pki):
    ca, cert = pki
    der = _request(cert, ca.cert)
    with pytest.raises(MalformedRequest, match="more than 100"):
        parse_request(der + b"\x00" * 100, max_bytes=100)
    one = a_ocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]
    three = a_ocsp.OCSPRequest({"tbs_request": {"request_list": [one] * 3}}).dump()
    assert len(parse_request(three, max_cert_ids=3).cert_ids) == 3
    with pytest.raises(MalformedRequest, match="more than 2"):
        parse_request(three, max_cert_ids=2)
    with pytest.raises(MalformedRequest, match="names no certificate"):
        parse_request(a_ocsp.OCSPRequest({"tbs_request": {"request_list": []}}).dump())
    with pytest.raises(MalformedRequest, match="nonce"):
        parse_request(_request(cert, ca.cert, nonce=b"x" * 33))
    with pytest.raises(MalformedRequest):
        parse_request(b"")



def _with_serial(der: bytes, serial: int) -> bytes:
    one = a_ocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]
    cid = dict(one["req_cert"].native, serial_number=serial)
    return a_ocsp.OCSPRequest({"tbs_request": {"request_list": [{"req_cert": cid}]}}).dump()


def test_a_serial_number_beyond_21_octets_is_malformed(pki):
    ca, cert = pki
    der = _request(cert, ca.cert)
    for serial in (2 ** 159 - 1, 2 ** 160 + 5):  # 20 octets; 21, as a 160-bit serial is encoded
        (cid,) = parse_request(_with_serial(der, serial)).cert_ids
        assert cid.serial == serial
    for serial in (2 ** 168, 2 ** 31_000):  # 22 octets; a 3,876-octet one, echoed and cached with its response
        with pytest.raises(MalformedRequest, match="longer than 21 octets"):
            parse_request(_with_serial(der, serial))

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_raises_only_malformed(data):
    try:
        parse_request(data)
    except MalformedRequest:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_requests_raise_only_malformed(pki, data):
    ca, cert = pki
    der = bytearray(_request(cert, ca.cert, nonce=b"z" * 16))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    try:
        parse_request(bytes(der))
    except MalformedRequest:
        pass


def test_response_fields(pki):
    ca, cert = pki
    req = parse_request(_request(cert, ca.cert, nonce=b"q" * 16))
    signer = ResponseSigner(RSA_SHA256, lambda tbs: ca.key.sign(tbs, hashes.SHA256()), ca.cert_der)
    now = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc)
    revoked_at = now - timedelta(days=1)
    der = build_response([Answer(req.cert_ids[0], "revoked", revoked_at, 1)], signer, produced_at=now,
                         this_update=now, next_update=now + timedelta(hours=1), nonce=req.nonce)
    resp = ocsp.load_der_ocsp_response(der)
    ca.cert.public_key().verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), hashes.SHA256())
    assert resp.produced_at_utc == now.replace(microsecond=0)
    assert resp.revocation_time_utc == revoked_at.replace(microsecond=0)
    assert resp.revocation_reason is x509.ReasonFlags.key_compromise
    assert resp.next_update_utc - resp.this_update_utc == timedelta(hours=1)
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"q" * 16
    assert resp.certificates == []
    for status, name in (("malformed_request", "MALFORMED_REQUEST"), ("unauthorized", "UNAUTHORIZED"),
                         ("try_later", "TRY_LATER"), ("internal_error", "INTERNAL_ERROR")):
        assert ocsp.load_der_ocsp_response(error_response(status)).response_status is \
            ocsp.OCSPResponseStatus[name]
    with pytest.raises(ValueError):
        Answer(req.cert_ids[0], "revoked")
