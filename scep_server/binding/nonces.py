"""Stateless attestation nonces: issued without a database write, spent once by a constrained INSERT.

A nonce is the URL-safe base64 (no padding) of::

    version (1 byte, 1) | expiry (8 bytes, milliseconds since the epoch, big-endian) | random (16 bytes)
    | tag (16 bytes: HMAC-SHA256 truncated, over a label, the device id and the bytes before it)

41 bytes, 55 characters, 128 random bits. Only that canonical text is read: exactly 55 characters of the
URL-safe alphabet, no padding, the unused low bits of the last character zero, so one nonce has one
spelling; the value spent is the decoded bytes (`nonce_hash`). The HMAC key is one row of ``attestation_keys``, created by
the first process that needs it and read by every other process and instance sharing the database.
Checking a nonce (tag, device, expiry) is pure computation; spending it is an INSERT of its SHA-256
into ``attestation_spent_nonces``, whose primary key lets exactly one use commit. Holding the key lets
one mint nonces, which gives no attestation without a device's private key.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.db import writer
from .tables import attestation_keys, attestation_spent_nonces

VERSION = 1
_HEAD = struct.Struct(">BQ")
_RANDOM = 16
_TAG = 16
LENGTH = _HEAD.size + _RANDOM + _TAG
_LABEL = b"device-trust-attestation-nonce-v1\0"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class NonceState:
    """Outcomes of `NonceKey.check` other than a good nonce."""

    UNKNOWN = "unknown"  # malformed, not ours, or issued for another device
    EXPIRED = "expired"


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


TEXT_LENGTH = -(-LENGTH * 4 // 3)  # 55: unpadded base64 of LENGTH bytes
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(text: str) -> bytes | None:
    """The nonce bytes of a canonical nonce text, None for anything else: no padding, no character outside
    the URL-safe alphabet, exact length, and the text the bytes encode back to (no stray low bits)."""
    if not isinstance(text, str) or len(text) != TEXT_LENGTH or not _ALPHABET.issuperset(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == LENGTH and _encode(raw) == text else None


def nonce_hash(raw: bytes) -> str:
    """What spending records: SHA-256 of the nonce's value (its canonical text, the one spelling it has)."""
    return hashlib.sha256(_encode(raw).encode()).hexdigest()


class NonceKey:
    """Mints and checks nonces under the database-held key (loaded, or created, on first use)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._secret: bytes | None = None
        self._lock = asyncio.Lock()

    async def secret(self) -> bytes:
        if self._secret is None:
            async with self._lock:
                if self._secret is None:
                    self._secret = await self._load_or_create()
        return self._secret

    async def _load_or_create(self) -> bytes:
        query = sa.select(attestation_keys.c.secret).where(attestation_keys.c.id == 1)
        async with self.engine.connect() as conn:
            found = (await conn.execute(query)).scalar()
        if found is not None:
            return bytes(found)
        async with writer(self.engine).begin() as conn:
            if conn.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            await conn.execute(insert(attestation_keys).values(
                id=1, secret=secrets.token_bytes(32), created_at=datetime.now(timezone.utc))
                .on_conflict_do_nothing(index_elements=["id"]))
            return bytes((await conn.execute(query)).scalar_one())  # ours, or a concurrent first start's

    @staticmethod
    def _tag(secret: bytes, device_id: str, body: bytes) -> bytes:
        return hmac.new(secret, _LABEL + device_id.encode() + b"\0" + body, hashlib.sha256).digest()[:_TAG]

    async def issue(self, device_id: str, expires: datetime) -> str:
        secret = await self.secret()
        body = _HEAD.pack(VERSION, _ms(expires)) + secrets.token_bytes(_RANDOM)
        return _encode(body + self._tag(secret, device_id, body))

    async def check(self, nonce: str, device_id: str, now: datetime) -> tuple[str | None, datetime | None]:
        """(None, expiry) for a good nonce of this device; (NonceState.*, expiry or None) otherwise."""
        raw = decode(nonce)
        if raw is None or raw[0] != VERSION:
            return NonceState.UNKNOWN, None
        secret = await self.secret()
        body, tag = raw[:-_TAG], raw[-_TAG:]
        if not hmac.compare_digest(tag, self._tag(secret, device_id, body)):
            return NonceState.UNKNOWN, None
        expires = _EPOCH + timedelta(milliseconds=_HEAD.unpack_from(raw)[1])
        if now >= expires:
            return NonceState.EXPIRED, expires
        return None, expires


async def purge_spent(engine: AsyncEngine, before: datetime) -> int:
    """Delete the spent-nonce rows of nonces that expired before `before`."""
    async with writer(engine).begin() as conn:
        res = await conn.execute(attestation_spent_nonces.delete()
                                 .where(attestation_spent_nonces.c.expires_at < before))
    return res.rowcount or 0
