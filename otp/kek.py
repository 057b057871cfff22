"""The key-encryption key that seals YubiKey AES keys and client API keys at rest (AES-256-GCM).

The KEK lives outside the database (a file or an environment variable); each sealed value is
bound to what it protects through the associated data (a key's public ID, a client's id), so a
ciphertext copied onto another row does not open.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

KEK_SIZE = 32
_NONCE_SIZE = 12
_VERSION = b"\x01"


class KekError(Exception):
    """The KEK is missing or malformed, or a sealed value does not open under it."""


def _parse_kek(raw: bytes, where: str) -> bytes:
    if len(raw) == KEK_SIZE:
        return raw
    text = raw.strip()
    try:
        if len(text) == 2 * KEK_SIZE:
            return bytes.fromhex(text.decode("ascii"))
        value = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise KekError(f"{where}: not a {KEK_SIZE}-byte key (raw, base64 or hex)") from None
    if len(value) != KEK_SIZE:
        raise KekError(f"{where}: the key is {len(value)} bytes, expected {KEK_SIZE}")
    return value


def read_kek_file(path: Path) -> bytes:
    """Read a KEK file (raw 32 bytes, base64 or hex); refuse a world-writable one."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KekError(f"cannot read the OTP key-encryption key {path}: {exc.strerror}") from None
    if mode & stat.S_IWOTH:
        raise KekError(f"{path} is world-writable; fix its permissions (chmod 600)")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("otp.kek.permissions", extra={"path": str(path), "mode": oct(mode & 0o777)})
    return _parse_kek(data, str(path))


def load_or_create_kek(path: Path, *, on_create: Callable[[Path], None] | None = None) -> bytes:
    """The KEK in `path`, creating it (32 random bytes, base64, mode 0600) if it does not exist yet.

    Creation is atomic: the key is written to a private temporary file and linked into place, so
    two processes starting together end up with the same key. `on_create(path)` is called by the
    one process that created it.
    """
    path = Path(path)
    if path.exists():
        return read_kek_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(KEK_SIZE)) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        else:
            if on_create is not None:
                on_create(path)
    finally:
        tmp.unlink(missing_ok=True)
    return read_kek_file(path)


def kek_from_env(name: str, environ: dict[str, str] | None = None) -> bytes:
    """The KEK from environment variable `name` (base64 or hex of 32 bytes)."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if not value:
        raise KekError(f"environment variable {name} (the OTP key-encryption key) is not set")
    return _parse_kek(value.encode("ascii", "replace"), f"environment variable {name}")


class SecretBox:
    """AES-256-GCM sealing under the KEK: `seal`/`open` with associated data; never logs secrets."""

    __slots__ = ("_aead", "kek_id")

    def __init__(self, kek: bytes) -> None:
        if len(kek) != KEK_SIZE:
            raise KekError(f"the key-encryption key must be {KEK_SIZE} bytes")
        self._aead = AESGCM(kek)
        # Identifies the KEK a row was sealed with, so a wrong KEK is reported as such.
        self.kek_id = hashlib.sha256(b"otp-kek-id\x00" + kek).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SecretBox(kek_id={self.kek_id!r})"

    def seal(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        """version || nonce || ciphertext+tag."""
        nonce = secrets.token_bytes(_NONCE_SIZE) if nonce is None else nonce
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext, or KekError if the value was not sealed under this KEK for this `aad`."""
        if len(sealed) < 1 + _NONCE_SIZE + 16 or sealed[:1] != _VERSION:
            raise KekError("sealed value is malformed")
        try:
            return self._aead.decrypt(sealed[1:1 + _NONCE_SIZE], sealed[1 + _NONCE_SIZE:], aad)
        except InvalidTag:
            raise KekError("sealed value does not open under this key-encryption key") from None
