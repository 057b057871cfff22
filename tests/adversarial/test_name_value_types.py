"""A Name whose attribute has a value type x509 does not allow for its type (a BIT STRING commonName: only
x500UniqueIdentifier may be one) decodes with a TypeError in cryptography, not the ValueError of other bad
Names. In a CSR's subject, a signer certificate's subject or issuer, it is the protocol's own failure, never a 500.
SQLite and PostgreSQL."""
from __future__ import annotations

import os

import aiohttp
from asn1crypto import csr as acsr, x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID

from scep_server.scep import FailInfo, MessageType, PKIStatus, client
from tests.challenge.conftest import clock, pki, server  # noqa: F401 - fixtures
from tests.factories import rsa_key

UTF8_AB = b"\x0c\x02ab"  # the commonName "ab", UTF8String
BITS_A = b"\x03\x02\x00a"  # the same length: a BIT STRING


def _utf8_name() -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ab", _type=x509.name._ASN1Type.UTF8String)])


def bit_string_csr(key) -> bytes:
    """A CSR whose subject's commonName is a BIT STRING, correctly signed (proof of possession holds)."""
    der = x509.CertificateSigningRequestBuilder().subject_name(_utf8_name()).sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.DER)
    parsed = acsr.CertificationRequest.load(der)
    info = parsed["certification_request_info"].dump().replace(UTF8_AB, BITS_A)
    return acsr.CertificationRequest({
        "certification_request_info": acsr.CertificationRequestInfo.load(info),
        "signature_algorithm": parsed["signature_algorithm"],
        "signature": key.sign(info, padding.PKCS1v15(), hashes.SHA256())}).dump()


def bit_string_signer(key) -> bytes:
    """A self-signed signer certificate whose subject and issuer commonName is a BIT STRING."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    der = (x509.CertificateBuilder().subject_name(_utf8_name()).issuer_name(_utf8_name()).public_key(key.public_key())
           .serial_number(5).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    parsed = ax509.Certificate.load(der)
    tbs = parsed["tbs_certificate"].dump().replace(UTF8_AB, BITS_A)
    return ax509.Certificate({"tbs_certificate": ax509.TbsCertificate.load(tbs),
                              "signature_algorithm": parsed["signature_algorithm"],
                              "signature_value": key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())}).dump()


def _body(srv, key, csr: bytes, signer_der: bytes) -> bytes:
    ca = next(iter(srv.runtime.cas.values()))
    return client.build_request(MessageType.PKCS_REQ, content=csr, signer_cert_der=signer_der, signer_key=key,
                                recipient_cert_der=ca.ra_cert_der, transaction_id="names-1",
                                sender_nonce=os.urandom(16), cek=os.urandom(16), iv=os.urandom(16))


async def test_a_csr_subject_of_a_forbidden_value_type_is_a_failure_not_a_500(server):
    key = rsa_key()
    body = _body(server, key, bit_string_csr(key), client.make_self_signed_signer(key))
    async with aiohttp.ClientSession() as s:
        rep = await pki(s, server, "default", body, key)
    assert rep.status is PKIStatus.FAILURE and rep.fail_info in (FailInfo.BAD_REQUEST, FailInfo.BAD_MESSAGE_CHECK)
    assert not rep.certs


async def test_a_signer_name_of_a_forbidden_value_type_is_a_malformed_message_not_a_500(server):
    key = rsa_key()
    body = _body(server, key, client.make_csr(key, "device", server.challenge(), ()), bit_string_signer(key))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{server.url}/scep/default?operation=PKIOperation", data=body) as resp:
            assert resp.status == 400, (resp.status, await resp.text())
            assert "signer certificate does not parse" in await resp.text()
