"""Hostile signers over HTTP: what the SignerInfo, the signer certificate or the signer key ask for that cannot be
done is a CertRep FAILURE or a 400, never a 500 (RFC 8894 §3.3.2)."""
from __future__ import annotations

import os

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from scep_server.scep import FailInfo, MessageType, PKIStatus, client, oids
from scep_server.scep.client import CertRepResult
from scep_server.store.tables import certificates
from tests.challenge.conftest import add_profile, clock, dynamic, server  # noqa: F401 - fixtures
from tests.factories import rsa_key
from trustkit import der

SHA256_ALG = der.seq(der.oid("2.16.840.1.101.3.4.2.1"), der.NULL_DER)


async def post(srv, body: bytes, *, profile: str = "default") -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{srv.url}/scep/{profile}?operation=PKIOperation", data=body) as resp:
            return resp.status, await resp.read()


def cert_rep(srv, data: bytes, key) -> CertRepResult:
    ca = next(iter(srv.runtime.cas.values()))
    return client.parse_cert_rep(data, key, ra_cert_der=ca.ra_cert_der)


def request(srv, key, *, message_type=MessageType.PKCS_REQ, content: bytes | None = None,
            signer_cert_der: bytes | None = None, transaction_id: str = "hostile-signer", **kw) -> bytes:
    ca = next(iter(srv.runtime.cas.values()))
    return client.build_request(
        message_type, content=content if content is not None else client.make_csr(key, "device", srv.challenge()),
        signer_cert_der=signer_cert_der or client.make_self_signed_signer(key), signer_key=key,
        recipient_cert_der=ca.ra_cert_der, transaction_id=transaction_id, sender_nonce=os.urandom(16),
        cek=os.urandom(16), iv=os.urandom(16), **kw)


# ---------------------------------------------------------------- RSASSA-PSS saltLength (RFC 4055 §3.1)

def pss_alg(salt: int) -> bytes:
    """id-RSASSA-PSS with SHA-256, MGF1-SHA-256 and ``salt``."""
    params = der.seq(der.tlv(der.ctx(0), SHA256_ALG), der.tlv(der.ctx(1), der.seq(der.oid(oids.MGF1), SHA256_ALG)),
                     der.tlv(der.ctx(2), der.integer(salt)))
    return der.seq(der.oid(oids.RSASSA_PSS), params)


def pss_signer(key, salt: int):
    def sign(data: bytes, digest) -> bytes:
        return key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt), hashes.SHA256())
    return sign


@pytest.mark.parametrize("salt", [2 ** 200, 2 ** 64, 2 ** 31, 223], ids=["2^200", "2^64", "2^31", "223"])
# 223: one more than a 2048-bit key carries with SHA-256
async def test_a_pss_salt_length_the_key_cannot_carry_is_bad_alg(server, salt):
    key = rsa_key()
    body = request(server, key, signature_alg_der=pss_alg(salt), transaction_id=f"pss-{salt.bit_length()}")
    for _ in range(2):  # the same bytes again: the same answer
        status, data = await post(server, body)
        assert status == 200, data
        rep = cert_rep(server, data, key)
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_ALG, rep.fail_text
        assert "saltLength" in rep.fail_text


@pytest.mark.parametrize("salt", [32, 222])  # the hash length, and the largest a 2048-bit key carries
async def test_a_pss_signature_with_a_salt_that_fits_is_verified(server, salt):
    key = rsa_key()
    body = request(server, key, sign=pss_signer(key, salt), signature_alg_der=pss_alg(salt),
                   transaction_id=f"pss-ok-{salt}")
    status, data = await post(server, body)
    assert status == 200, data
    rep = cert_rep(server, data, key)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text


# ---------------------------------------------------------------- signer certificate Names (RFC 5280 §4.1.2.4)

GOOD_NAME = der.seq(der.tlv(der.SET, der.seq(der.oid("2.5.4.3"), der.utf8("SCEP SIGNER"))))
BAD_NAME = der.seq(der.tlv(der.SET, der.seq(der.oid("2.5.4.3"), der.tlv(der.UTF8_STRING, b"\xff"))))  # not UTF-8


def signer_with_names(key, issuer: bytes, subject: bytes) -> bytes:
    """A certificate for ``key`` signed by ``key``, whose Names are written as given (cryptography reads a
    certificate's Names only when asked: the certificate loads and its signature verifies)."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    sig_alg = der.seq(der.oid("1.2.840.113549.1.1.11"), der.NULL_DER)
    validity = der.seq(der.tlv(0x17, b"200101000000Z"), der.tlv(0x17, b"490101000000Z"))
    tbs = der.seq(der.tlv(der.ctx(0), der.integer(2)), der.integer(7), sig_alg, issuer, validity, subject, spki)
    sig = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return der.seq(tbs, sig_alg, der.tlv(der.BIT_STRING, b"\x00" + sig))


@pytest.mark.parametrize("issuer, subject", [(BAD_NAME, GOOD_NAME), (GOOD_NAME, BAD_NAME), (BAD_NAME, BAD_NAME)],
                         ids=["bad-issuer", "bad-subject", "both"])
@pytest.mark.parametrize("message_type", [MessageType.PKCS_REQ, MessageType.CERT_POLL], ids=["PKCSReq", "CertPoll"])
async def test_a_signer_certificate_with_a_name_that_does_not_decode_is_malformed(server, issuer, subject,
                                                                                 message_type):
    key = rsa_key()
    ca = next(iter(server.runtime.cas.values()))
    content = (client.issuer_and_subject(ca.cert.subject, ca.cert.subject)
               if message_type is MessageType.CERT_POLL else None)
    body = request(server, key, message_type=message_type, content=content,
                   signer_cert_der=signer_with_names(key, issuer, subject), transaction_id="bad-name")
    status, data = await post(server, body)
    assert status == 400, data  # as any signer certificate that does not parse: no signer to answer to
    assert b"signer certificate" in data


async def test_a_certificate_whose_issuer_does_not_decode_is_not_issued_by_us(server):
    key = rsa_key()
    ca = next(iter(server.runtime.cas.values()))
    cert = x509.load_der_x509_certificate(signer_with_names(key, BAD_NAME, GOOD_NAME))
    assert ca.issued_by_us(cert) is False


# ---------------------------------------------------------------- a signer key the reply cannot be encrypted to

def small_key():
    return rsa_key(1024)  # k = 128 bytes: OAEP-SHA512 carries at most 128 - 2*64 - 2 < 0 bytes (RFC 8017 §7.1.1)


async def test_get_crl_from_a_signer_key_that_cannot_receive_the_reply_is_bad_alg(server):
    key = small_key()
    ca = next(iter(server.runtime.cas.values()))
    body = request(server, key, message_type=MessageType.GET_CRL, key_transport="oaep-sha512",
                   content=client.issuer_and_serial(ca.cert.subject, ca.cert.serial_number), transaction_id="crl-1024")
    status, data = await post(server, body)
    assert status == 200, data
    rep = cert_rep(server, data, key)
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_ALG, rep.fail_text
    assert "oaep-sha512" in rep.fail_text


async def count_certificates(srv) -> int:
    async with srv.runtime.engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(certificates))).scalar_one()


async def test_an_enrolment_whose_reply_cannot_be_encrypted_issues_nothing_and_spends_no_challenge(server):
    await add_profile(server, "dyn", "dynamic", dynamic())
    issued = await server.runtime.challenges.new_challenge("dyn", source="cli")
    before = await count_certificates(server)
    key, csr_key = small_key(), rsa_key()  # a self-signed signer need not hold the CSR's key (RFC 8894 §2.3)
    csr = client.make_csr(csr_key, "device", issued.challenge)
    body = request(server, key, key_transport="oaep-sha512", transaction_id="enrol-1024", content=csr)
    for _ in range(2):  # and a retry: the same answer
        status, data = await post(server, body, profile="dyn")
        assert status == 200, data
        rep = cert_rep(server, data, key)
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_ALG, rep.fail_text
    assert await count_certificates(server) == before
    # the same key with a key transport it can receive enrols, with the challenge still unused
    body = request(server, key, key_transport="oaep-sha256", transaction_id="enrol-1024-sha256", content=csr)
    status, data = await post(server, body, profile="dyn")
    assert status == 200, data
    rep = cert_rep(server, data, key)
    assert rep.status is PKIStatus.SUCCESS and rep.key_transport == "oaep-sha256", rep.fail_text
    assert await count_certificates(server) == before + 1
