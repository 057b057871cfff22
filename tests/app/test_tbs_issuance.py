"""Certificates signed from their TBSCertificate bytes (a key that only signs bytes, as an HSM's) are the
certificates the builder makes with an in-process private key (a key file's path)."""
from __future__ import annotations

import dataclasses

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from scep_server.ca import tbs
from scep_server.ca.authority import random_serial
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from tests.factories import NOW, csr, make_ca, rsa_key


class BytesOnly:
    """A signer with no private key object at all: it signs bytes, like an HSM."""

    def __init__(self, file_key):
        self._sign, self._public_key, self.calls = file_key.sign, file_key.public_key(), []

    def public_key(self):
        return self._public_key

    def sign(self, data, digest):
        self.calls.append((data, digest.name))
        return self._sign(data, digest)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


def _policy() -> IssuancePolicy:
    return IssuancePolicy(CertificateTemplate(validity_days=30, san_types=["dns"]))


def test_an_rsa_certificate_is_byte_identical_to_the_builder_signed_one(ca):
    request = csr(rsa_key(), "same", sans=[x509.DNSName("same.example.com")])
    serial = random_serial()
    signer = BytesOnly(ca.key)
    ours = dataclasses.replace(ca, key=signer).issue(request, _policy(), serial=serial, now=NOW)  # the TBS path
    assert len(signer.calls) == 1
    old = ca.issue(request, _policy(), serial=serial, now=NOW)  # the key file's: the builder signs
    # RSA PKCS#1 v1.5 is deterministic: the whole DER is the same, signature included
    assert ours.tbs_certificate_bytes == old.tbs_certificate_bytes
    assert ours.signature_algorithm_oid == old.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256
    assert ours.signature == old.signature
    assert ours.public_bytes(serialization.Encoding.DER) == old.public_bytes(serialization.Encoding.DER)
    # field by field, as a relying party reads them
    for field in ("version", "serial_number", "issuer", "subject", "not_valid_before_utc", "not_valid_after_utc",
                  "signature_hash_algorithm"):
        assert getattr(ours, field) == getattr(old, field), field
    assert list(ours.extensions) == list(old.extensions)
    ours.verify_directly_issued_by(ca.cert)


def test_the_signature_algorithm_field_is_written_twice_and_identically(ca):
    cert = ca.issue(csr(rsa_key()), _policy(), serial=7, now=NOW)
    parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    assert parsed["signature_algorithm"].dump() == parsed["tbs_certificate"]["signature"].dump()
    assert parsed["signature_algorithm"].dump() == bytes.fromhex("300d06092a864886f70d01010b0500")  # NULL params


def test_a_signer_that_only_signs_bytes_issues_and_signs_the_tbs_once(ca):
    signer = BytesOnly(ca.key)
    cert = dataclasses.replace(ca, key=signer).issue(csr(rsa_key(), "hsm"), _policy(), serial=99, now=NOW)
    assert signer.calls == [(cert.tbs_certificate_bytes, "sha256")]
    ca.cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())
    assert ca.issued_by_us(cert)


def test_a_wrong_signature_is_not_taken_for_ours(ca):
    class Liar(BytesOnly):
        def sign(self, data, digest):
            return super().sign(data + b"x", digest)

    cert = dataclasses.replace(ca, key=Liar(ca.key)).issue(csr(rsa_key()), _policy(), serial=5, now=NOW)
    assert not ca.issued_by_us(cert)


def test_digest_follows_the_key():
    assert tbs.digest_for(rsa_key().public_key()).name == "sha256"
    assert tbs.digest_for(ec.generate_private_key(ec.SECP256R1()).public_key()).name == "sha256"
    assert tbs.digest_for(ec.generate_private_key(ec.SECP384R1()).public_key()).name == "sha384"
