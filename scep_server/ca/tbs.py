"""Certificates signed from their TBSCertificate bytes, for keys that only sign bytes (an HSM).

cryptography's CertificateBuilder needs an in-process private key. For a key that only signs bytes, the builder
signs with a throwaway key of the CA key's family (RSA or EC), which yields the TBSCertificate with the right
`signature` field (RFC 5280 §4.1.2.3); the throwaway signature is discarded, the TBS bytes are signed by the
CA's KeyOps, and the Certificate is assembled around them (§4.1.1). A key held in process memory (a key file)
hands the builder its private key instead (``in_process_key``): one signature, nothing re-parsed. Both give the
same TBSCertificate (tests/app/test_tbs_issuance.py; with RSA PKCS#1 v1.5 the same bytes altogether).
"""
from __future__ import annotations

import threading

from asn1crypto import algos
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

# signatureAlgorithm OIDs by (key family, hash) (RFC 4055 §5, RFC 5758 §3.2)
_ALGORITHMS = {
    ("rsa", "sha256"): "sha256_rsa", ("rsa", "sha384"): "sha384_rsa", ("rsa", "sha512"): "sha512_rsa",
    ("ec", "sha256"): "sha256_ecdsa", ("ec", "sha384"): "sha384_ecdsa", ("ec", "sha512"): "sha512_ecdsa",
}

_throwaway: dict[str, object] = {}
_throwaway_lock = threading.Lock()


def key_family(public_key) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ec"
    raise TypeError(f"a CA key must be RSA or EC, not {type(public_key).__name__}")


def digest_for(public_key) -> hashes.HashAlgorithm:
    """The hash a CA with this key signs with: SHA-256 for RSA and P-256, SHA-384 for P-384 (RFC 5480 §4)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp384r1": hashes.SHA384(), "secp521r1": hashes.SHA512()}.get(public_key.curve.name,
                                                                                 hashes.SHA256())
    key_family(public_key)
    return hashes.SHA256()


def _throwaway_key(family: str):
    """A key of `family` that only gives the builder a signature algorithm; made once per process."""
    with _throwaway_lock:
        key = _throwaway.get(family)
        if key is None:
            key = (rsa.generate_private_key(public_exponent=65537, key_size=1024) if family == "rsa"
                   else ec.generate_private_key(ec.SECP256R1()))
            _throwaway[family] = key
        return key


def _family_for(public_key, digest: hashes.HashAlgorithm) -> str:
    """The key family, once a signature algorithm exists for it with `digest`; ValueError otherwise."""
    family = key_family(public_key)
    if (family, digest.name) not in _ALGORITHMS:
        raise ValueError(f"no {family} signature algorithm with {digest.name}")
    return family


def tbs_certificate(builder: x509.CertificateBuilder, public_key, digest: hashes.HashAlgorithm) -> bytes:
    """The DER TBSCertificate `builder` describes, with the signature algorithm of `public_key` and `digest`."""
    return builder.sign(_throwaway_key(_family_for(public_key, digest)), digest).tbs_certificate_bytes


def assemble(tbs: bytes, signature: bytes) -> bytes:
    """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm (= the TBS signature field), signatureValue }."""
    parsed = asn1_x509.TbsCertificate.load(tbs)
    algorithm = algos.SignedDigestAlgorithm.load(parsed["signature"].dump())
    return asn1_x509.Certificate({"tbs_certificate": parsed, "signature_algorithm": algorithm,
                                  "signature_value": signature}).dump()


def sign_certificate(builder: x509.CertificateBuilder, key, digest: hashes.HashAlgorithm | None = None
                     ) -> x509.Certificate:
    """Sign the certificate `builder` describes with `key` (KeyOps: `public_key()` and `sign(data, digest)`)."""
    public_key = key.public_key()
    digest = digest or digest_for(public_key)
    in_process = getattr(key, "in_process_key", None)
    if in_process is not None:
        _family_for(public_key, digest)
        return builder.sign(in_process(), digest)  # RSA: PKCS#1 v1.5, as KeyOps.sign
    tbs = tbs_certificate(builder, public_key, digest)
    return x509.load_der_x509_certificate(assemble(tbs, key.sign(tbs, digest)))


class SignsCertificates:
    """`sign_certificate` for a KeyOps implementation, through the TBS path above."""

    def sign_certificate(self, builder: x509.CertificateBuilder, digest: hashes.HashAlgorithm | None = None
                         ) -> x509.Certificate:
        return sign_certificate(builder, self, digest)
