"""CA and RA private keys behind an interface that signs and decrypts raw bytes.

A file key is the default; an HSM key (scep_server.ca.pkcs11) implements the same interface. Certificates are
signed from their TBS bytes (scep_server.ca.tbs), so any key that signs bytes can issue.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Protocol

import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from trustkit.problems import ServiceUnavailable

from .tbs import SignsCertificates

log = structlog.get_logger("ca")

CA_KEY_TYPES = ("rsa", "ec-p256", "ec-p384")
_CURVES = {"ec-p256": ec.SECP256R1, "ec-p384": ec.SECP384R1}


class KeyFailed(ServiceUnavailable):
    """A CA or RA private key failed to sign (any error of cryptography, or of a PKCS#11 token that is not its
    absence): nothing was signed, the failure is logged and counted (:func:`sign_failed`), the client is answered
    503 and tries again; the detail names no internals."""

    code = "ca_key_failed"


def sign_failed(backend: str, key: str, exc: BaseException) -> KeyFailed:
    """Log (``ca.key.sign_failed``) and count (``ca_key_sign_failures_total``) a failed signature of the key
    ``key`` (a key file's name, a token key's label); the KeyFailed to raise."""
    from .. import metrics

    log.error("ca.key.sign_failed", backend=backend, key=key, error=f"{type(exc).__name__}: {exc}".rstrip(": ")[:300])
    metrics.key_sign_failed(backend)
    return KeyFailed("a CA key could not sign now; try again shortly")


class KeyOps(Protocol):
    """What the CA needs from a private key."""

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey: ...

    def sign(self, data: bytes, digest: hashes.HashAlgorithm) -> bytes:
        """Signature over `data` (hashed with `digest` by the key holder): RSA PKCS#1 v1.5, or ECDSA as the
        DER Ecdsa-Sig-Value (RFC 3279 §2.2.3)."""

    def decrypt(self, ciphertext: bytes, scheme: str) -> bytes:
        """RSA key transport: `scheme` is "pkcs1v15" or "oaep-<hash>" (e.g. "oaep-sha1")."""


class KeyStore(Protocol):
    """Keys held outside the CA directory (a PKCS#11 token): found, or with `create`, generated there."""

    def ca_key(self, create: tuple[str, int] | None = None) -> KeyOps:
        """The CA key; `create` = (key type, RSA bits) generates it when absent."""

    def ra_key(self, create: tuple[str, int] | None = None, label: str | None = None) -> KeyOps:
        """The RA key (RSA); ``label``: a renewed RA's key (scep_server.ca.ra), not the first RA's."""

    def renewed_ra_label(self, now: datetime) -> str:
        """A new label for the key of an RA renewed at ``now``, used by no other key."""

    def for_labels(self, labels: tuple[str, str] | None) -> "KeyStore":
        """The store whose CA and RA keys have these labels (a CA made by a rollover:
        scep_server.ca.keylabels); None: the deployment's (the settings' labels)."""

    def labels(self) -> tuple[str, str]:
        """(the CA key's label, the first RA key's label)."""

    def label_taken(self, label: str) -> bool:
        """Whether an object of the store has this label already."""

    def discard_generated(self) -> list[str]:
        """Delete the keys this store generated (a prepare that failed after making some); their labels."""


_OAEP_HASHES = {"sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
                "sha512": hashes.SHA512}


def rsa_decrypt(key: rsa.RSAPrivateKey, ciphertext: bytes, scheme: str) -> bytes:
    if scheme == "pkcs1v15":
        return key.decrypt(ciphertext, padding.PKCS1v15())
    if scheme.startswith("oaep-") and scheme[5:] in _OAEP_HASHES:
        h = _OAEP_HASHES[scheme[5:]]()
        return key.decrypt(ciphertext, padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None))
    raise ValueError(f"unsupported key transport scheme {scheme!r}")


class FileKey(SignsCertificates):
    """An RSA or EC (P-256, P-384) key held in process memory, loaded from an encrypted PEM file."""

    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: str = "generated key"):
        self._key = key
        self._pub = key.public_key()
        self.name = name  # the key file's name, for the log of a failed signature

    @classmethod
    def generate(cls, bits: int, key_type: str = "rsa") -> "FileKey":
        """A new key: RSA of `bits` bits, or an EC key on the curve `key_type` names ("ec-p256", "ec-p384")."""
        if key_type == "rsa":
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=bits))
        if key_type in _CURVES:
            return cls(ec.generate_private_key(_CURVES[key_type]()))
        raise ValueError(f"unknown key type {key_type!r} (one of {', '.join(CA_KEY_TYPES)})")

    @classmethod
    def load(cls, path: Path, passphrase: bytes) -> "FileKey":
        key = cls.from_pem(path.read_bytes(), passphrase, name=str(path))
        key.name = path.name
        return key

    @classmethod
    def from_pem(cls, pem: bytes, passphrase: bytes, *, name: str = "the key") -> "FileKey":
        key = serialization.load_pem_private_key(pem, password=passphrase)
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ("secp256r1", "secp384r1"):
            return cls(key)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{name}: only RSA and EC P-256/P-384 keys are supported for the CA and RA")
        return cls(key)

    def save(self, path: Path, passphrase: bytes, *, replace: bool = False) -> None:
        """Write the encrypted key durably; FileExistsError if ``path`` exists (a key is never overwritten),
        unless ``replace`` (a short-lived key renewed in place, such as the OCSP signer's)."""
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(passphrase))
        _write_private(path, pem, exclusive=not replace)

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        return self._pub

    def in_process_key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        """The private key object, for cryptography's builders (scep_server.ca.tbs.sign_certificate)."""
        return self._key

    def sign(self, data: bytes, digest: hashes.HashAlgorithm) -> bytes:
        try:
            if isinstance(self._key, ec.EllipticCurvePrivateKey):
                return self._key.sign(data, ec.ECDSA(digest))
            return self._key.sign(data, padding.PKCS1v15(), digest)
        except Exception as exc:  # noqa: BLE001 - nothing signed: a 503, logged and counted
            raise sign_failed("file", self.name, exc) from None

    def decrypt(self, ciphertext: bytes, scheme: str) -> bytes:
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise ValueError("an EC key does not decrypt (SCEP key transport needs the RSA RA key)")
        return rsa_decrypt(self._key, ciphertext, scheme)


def durable_write(path: Path, data: bytes, *, mode: int = 0o600, exclusive: bool = False) -> None:
    """Write a file so that a crash leaves the old file or the whole new one, never a torn one.

    The bytes go to a temporary file in the same directory, which is fsynced, then renamed over ``path``
    (or, with ``exclusive``, linked to ``path``, raising FileExistsError if it exists: never an overwrite),
    then the directory is fsynced so that the new name survives a power loss.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    durable_write(path, data, mode=0o600, exclusive=exclusive)


def load_or_create_passphrase(env_name: str, path: Path, *, keys_in: Path) -> bytes:
    """The key passphrase: from the environment if set, else from `path` (created, mode 0600, if absent).

    ``keys_in``: the directory of the CA directories (``Settings.ca_dir().parent``); when one of them holds a CA
    (its encrypted key and its certificate), no passphrase is created (a new random one could not open it):
    ValueError saying where the passphrase is looked for."""
    value = os.environ.get(env_name)
    if value:
        return value.encode()
    if path.exists():
        data = path.read_bytes().strip()
        if not data:
            raise ValueError(f"{path} is empty")
        return data
    if (keys := sorted(k for k in keys_in.glob("*/ca.key") if k.with_suffix(".crt").exists())):
        raise ValueError(f"no CA passphrase: ${env_name} is not set and {path} does not exist, but {keys[0]} is "
                         "encrypted with one; set it (or ca.passphrase_file) to the passphrase of the CA keys")
    data = secrets.token_urlsafe(32).encode()
    try:
        _write_private(path, data + b"\n", exclusive=True)
    except FileExistsError:  # another instance created it first: use theirs, the keys are encrypted with it
        return load_or_create_passphrase(env_name, path, keys_in=keys_in)
    return data


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret file readable by the owner only (durable atomic replace)."""
    _write_private(path, data)
