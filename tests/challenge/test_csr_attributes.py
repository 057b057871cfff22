"""A CSR whose attributes or extensions cryptography cannot read (a challengePassword with two values, or with none;
an extension twice; a SAN of a name type it does not read) is one more CSR that does not parse: a CertRep FAILURE,
never a 500, and nothing is issued."""
from __future__ import annotations

import aiohttp
import pytest
from asn1crypto import core, csr as acsr, keys as akeys, x509 as ax509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from scep_server.scep import MessageType, PKIStatus, client
from tests.factories import rsa_key
from trustkit import der

from .conftest import build

CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
SHA256_WITH_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")


def csr_with_challenge_values(key, cn: str, values: list) -> bytes:
    """A CSR signed by `key` whose challengePassword attribute holds the SET of `values` as given."""
    spki = akeys.PublicKeyInfo.load(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    info = acsr.CertificationRequestInfo({"version": 0, "subject": ax509.Name.build({"common_name": cn}),
                                          "subject_pk_info": spki, "attributes": []})
    attr = der.tlv(0x30, core.ObjectIdentifier(CHALLENGE_PASSWORD).dump()
                   + der.tlv(0x31, b"".join(v.dump() for v in values)))
    tbs = der.tlv(0x30, info["version"].dump() + info["subject"].dump() + info["subject_pk_info"].dump()
                  + der.tlv(0xA0, attr))
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return der.tlv(0x30, tbs + SHA256_WITH_RSA + der.tlv(0x03, b"\x00" + signature))


@pytest.mark.parametrize("message_type", [MessageType.PKCS_REQ, MessageType.RENEWAL_REQ])
@pytest.mark.parametrize("count", [2, 0], ids=["two values", "no value"])
async def test_a_challenge_attribute_of_two_values_or_none_is_a_failure(server, message_type, count):
    key = rsa_key()
    values = [core.PrintableString(server.challenge()), core.PrintableString("x")][:count]
    await assert_failure(server, key, build(server, key, challenge=None, message_type=message_type,
                                            content=csr_with_challenge_values(key, "device", values)))


async def assert_failure(server, key, body: bytes) -> None:
    """`body` sent to the default profile is answered 200 with a CertRep FAILURE holding no certificate."""
    ca = next(iter(server.runtime.cas.values()))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/scep/default?operation=PKIOperation", data=body) as resp:
            assert resp.status == 200, await resp.text()
            rep = client.parse_cert_rep(await resp.read(), key, ra_cert_der=ca.ra_cert_der)
    assert rep.status is PKIStatus.FAILURE and not rep.certs


def csr_with_extensions(key, cn: str, challenge: str, extensions: list[bytes]) -> bytes:
    """A CSR signed by `key` whose extensionRequest holds `extensions` (DER Extensions) as given."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    name = der.seq(der.set_of([der.seq(der.oid("2.5.4.3"), der.utf8(cn))]))
    attrs = [der.seq(der.oid(CHALLENGE_PASSWORD), der.set_of([der.utf8(challenge)])),
             der.seq(der.oid("1.2.840.113549.1.9.14"), der.set_of([der.seq(*extensions)]))]
    tbs = der.seq(der.integer(0), name, spki, der.tlv(0xA0, b"".join(sorted(attrs))))
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return der.seq(tbs, SHA256_WITH_RSA, der.tlv(0x03, b"\x00" + signature))


def _san(*general_names: bytes) -> bytes:
    return der.seq(der.oid("2.5.29.17"), der.octet_string(der.seq(*general_names)))


@pytest.mark.parametrize("extensions", [
    [_san(der.tlv(0x82, b"a.example.com")), _san(der.tlv(0x82, b"b.example.com"))],  # one extension twice
    [_san(der.tlv(0xA3, der.seq()))],  # an x400Address, a name type cryptography does not read
], ids=["repeated extension", "x400Address"])
async def test_extensions_cryptography_refuses_are_a_failure(server, extensions):
    key = rsa_key()
    await assert_failure(server, key, build(server, key, challenge=None,
                                            content=csr_with_extensions(key, "device", server.challenge(), extensions)))
