"""CRL signatures (RFC 5280 §5.1.1.2, RFC 4055, RFC 5758, RFC 8410): a raw-TBS signer and a verifier."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from asn1crypto import algos
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

# AlgorithmIdentifier DER (RFC 4055 §5: RSA with NULL parameters; RFC 5758 §3.2: ECDSA with absent parameters)
RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")
RSA_SHA384 = bytes.fromhex("300d06092a864886f70d01010c0500")
RSA_SHA512 = bytes.fromhex("300d06092a864886f70d01010d0500")
ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
ECDSA_SHA384 = bytes.fromhex("300a06082a8648ce3d040303")
ECDSA_SHA512 = bytes.fromhex("300a06082a8648ce3d040304")
ED25519 = bytes.fromhex("300506032b6570")
ED448 = bytes.fromhex("300506032b6571")

# hashes accepted in signatures; SHA-1 and MD5 are refused (practical collisions)
_HASHES = {"sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
           "sha512": hashes.SHA512}
_RSA = {"sha256": RSA_SHA256, "sha384": RSA_SHA384, "sha512": RSA_SHA512}
_ECDSA = {"sha256": ECDSA_SHA256, "sha384": ECDSA_SHA384, "sha512": ECDSA_SHA512}


class UnsupportedAlgorithm(ValueError):
    """A signature algorithm this package does not sign or verify with."""


@dataclass(frozen=True)
class CrlSigner:
    """Signs raw TBSCertList bytes with the CA key (file key, HSM, KMS) under `algorithm` (DER AlgorithmIdentifier)."""

    algorithm: bytes
    sign: Callable[[bytes], bytes]

    @classmethod
    def for_private_key(cls, key, hash_name: str | None = None) -> "CrlSigner":
        """A signer backed by an in-process cryptography private key (RSA PKCS#1 v1.5, ECDSA, Ed25519/Ed448)."""
        if isinstance(key, rsa.RSAPrivateKey):
            h = hash_name or "sha256"
            alg, hash_cls = _pick(_RSA, h), _HASHES[h]
            return cls(alg, lambda tbs: key.sign(tbs, padding.PKCS1v15(), hash_cls()))
        if isinstance(key, ec.EllipticCurvePrivateKey):
            h = hash_name or _ec_hash(key.curve)
            alg, hash_cls = _pick(_ECDSA, h), _HASHES[h]
            return cls(alg, lambda tbs: key.sign(tbs, ec.ECDSA(hash_cls())))
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(ED25519, key.sign)
        if isinstance(key, ed448.Ed448PrivateKey):
            return cls(ED448, key.sign)
        raise UnsupportedAlgorithm(f"cannot sign CRLs with a {type(key).__name__}")


def algorithm_for_public_key(public_key, hash_name: str | None = None) -> bytes:
    """The AlgorithmIdentifier a CA with this public key signs CRLs under."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return _pick(_RSA, hash_name or "sha256")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _pick(_ECDSA, hash_name or _ec_hash(public_key.curve))
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(public_key, ed448.Ed448PublicKey):
        return ED448
    raise UnsupportedAlgorithm(f"no CRL signature algorithm for a {type(public_key).__name__}")


def _pick(table: dict[str, bytes], hash_name: str) -> bytes:
    try:
        return table[hash_name]
    except KeyError:
        raise UnsupportedAlgorithm(f"hash {hash_name!r} is not supported for CRL signing") from None


def _ec_hash(curve) -> str:
    """RFC 5480 §4: a hash as strong as the curve."""
    return {"secp384r1": "sha384", "secp521r1": "sha512"}.get(curve.name, "sha256")


def describe(algorithm: bytes) -> str:
    """A readable name for an AlgorithmIdentifier (for logs and errors)."""
    try:
        return algos.SignedDigestAlgorithm.load(algorithm)["algorithm"].native
    except Exception:  # noqa: BLE001 - a name for a log line, never a decision
        return algorithm.hex()


def verify_signature(public_key, algorithm: bytes, data: bytes, signature: bytes) -> bool:
    """True when `signature` over `data` verifies under `public_key` and `algorithm` (RFC 5280 §6.3.3 (g))."""
    try:
        alg = algos.SignedDigestAlgorithm.load(algorithm)
        family = alg.signature_algo
    except Exception as exc:  # noqa: BLE001 - asn1crypto raises several types for unknown or malformed OIDs
        raise UnsupportedAlgorithm(f"unreadable signature algorithm: {exc}") from None
    try:
        if family == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), _hash(alg.hash_algo)())
        elif family == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
            params = alg["parameters"]
            h = _hash(params["hash_algorithm"]["algorithm"].native)
            mgf_h = _hash(params["mask_gen_algorithm"]["parameters"]["algorithm"].native)
            pad = padding.PSS(mgf=padding.MGF1(mgf_h()), salt_length=params["salt_length"].native)
            public_key.verify(signature, data, pad, h())
        elif family == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(_hash(alg.hash_algo)()))
        elif family == "ed25519" and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif family == "ed448" and isinstance(public_key, ed448.Ed448PublicKey):
            public_key.verify(signature, data)
        elif family == "dsa" and isinstance(public_key, dsa.DSAPublicKey):
            public_key.verify(signature, data, _hash(alg.hash_algo)())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _hash(name: str):
    try:
        return _HASHES[name]
    except KeyError:
        raise UnsupportedAlgorithm(f"hash {name!r} is not accepted") from None
