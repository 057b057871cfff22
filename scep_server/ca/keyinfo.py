"""What a public key is, in words an administrator reads: its algorithm and size (a CSR's, a certificate's)."""
from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa


def describe(public_key: Any) -> dict[str, Any]:
    """{"type": "RSA" | "EC" | "Ed25519" | ..., "size": bits, "curve": name or None}."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return {"type": "RSA", "size": public_key.key_size, "curve": None}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"type": "EC", "size": public_key.curve.key_size, "curve": public_key.curve.name}
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return {"type": "Ed25519", "size": 256, "curve": None}
    if isinstance(public_key, ed448.Ed448PublicKey):
        return {"type": "Ed448", "size": 456, "curve": None}
    if isinstance(public_key, dsa.DSAPublicKey):
        return {"type": "DSA", "size": public_key.key_size, "curve": None}
    return {"type": type(public_key).__name__, "size": None, "curve": None}
