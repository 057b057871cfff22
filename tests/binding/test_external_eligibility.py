"""A customer CA's certificate attests only as a device's client certificate: one with an unknown critical extension
(RFC 5280 §4.2), a CA certificate, an extended key usage without clientAuth or a key usage without digitalSignature
is not eligible, whatever the CA's CRL says."""
from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from crl.build import Issuer, build_crl
from crl.config import Policy
from crl.signing import CrlSigner
from scep_server.binding.attestation import signed_bytes
from tests.binding.conftest import api, clock, server  # noqa: F401 - fixtures
from tests.crl.pki import NOW, key, make_ca

URL = "http://127.0.0.1:9/eligible.crl"


def _ku(digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=True,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


CASES = {  # name -> (extensions beyond basicConstraints cA=FALSE, AKI and CDP, eligible)
    "unknown critical extension": ([(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
                                     True)], False),
    "unknown non-critical extension": ([(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                                                    b"\x05\x00"), False)], True),
    "EKU serverAuth only": ([(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)], False),
    "EKU clientAuth": ([(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                         False)], True),
    "EKU anyExtendedKeyUsage": ([(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]), False)], True),
    "keyUsage without digitalSignature": ([(_ku(False), True)], False),
    "keyUsage digitalSignature": ([(_ku(True), True), (x509.SubjectAlternativeName([x509.DNSName("dev.example")]),
                                                       True)], True),
    "CA certificate": ("ca", False),
}


def _leaf(ca, serial: int, extensions) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
         .issuer_name(ca.cert.subject).public_key(key("ec", 9).public_key()).serial_number(serial)
         .not_valid_before(NOW - timedelta(hours=1)).not_valid_after(NOW + timedelta(days=365))
         .add_extension(x509.BasicConstraints(ca=extensions == "ca", path_length=None), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
         .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
             full_name=[x509.UniformResourceIdentifier(URL)], relative_name=None, reasons=None, crl_issuer=None)]),
             critical=False))
    for ext, critical in ([] if extensions == "ca" else extensions):
        b = b.add_extension(ext, critical=critical)
    return b.sign(ca.key, hashes.SHA256())


@pytest.mark.parametrize("case", list(CASES))
async def test_only_client_certificates_of_a_customer_ca_attest(server, api, clock, case):
    extensions, eligible = CASES[case]
    clock.now = NOW + timedelta(minutes=5)
    ca = make_ca("Eligibility Customer CA", kind="ec", slot=8, cdp="http://127.0.0.1:9/root.crl")
    ext = server.runtime.binding.external
    await ext.add("cust", ca.cert, policy=Policy.FAIL_CLOSED, actor="test", now=clock())
    await ext.reload()
    crl = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=1,
                    this_update=NOW, next_update=NOW + timedelta(days=7), entries=[])
    assert (await ext.checker.install("cust", URL, crl)).ok
    cert = _leaf(ca, 0x6161, extensions)

    await api.add_device("dev-1")
    nonce = await api.nonce("dev-1")
    sig = base64.b64encode(key("ec", 9).sign(signed_bytes(nonce, "dev-1"), ec.ECDSA(hashes.SHA256()))).decode()
    res = await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-1", "nonce": nonce, "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "signature": sig, "algorithm": "ecdsa-sha256"})
    assert res["reason"] == ("managed" if eligible else "certificate_not_eligible"), (case, res)
