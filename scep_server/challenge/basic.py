"""HTTP Basic credentials of the challenge endpoint: salted scrypt hashes, constant-time checks, throttling."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

from .config import BasicCredentials

# scrypt cost: n = 2**14, r = 8, p = 1 (16 MiB, tens of milliseconds)
LOG2_N, R, P = 14, 8, 1


def hash_password(password: str, *, log2_n: int = LOG2_N) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** log2_n, r=R, p=P, maxmem=64 * 1024 * 1024,
                        dklen=32)
    return f"scrypt${log2_n}${R}${P}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def check_password(password: str, encoded: str) -> bool:
    try:
        scheme, log2_n, r, p, salt, want = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt_b, want_b = base64.b64decode(salt), base64.b64decode(want)
        got = hashlib.scrypt(password.encode("utf-8"), salt=salt_b, n=2 ** int(log2_n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=len(want_b))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want_b)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(username, password) from an ``Authorization: Basic`` header, or None."""
    if not header:
        return None
    kind, _, value = header.strip().partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class CredentialChecker:
    """Checks Basic credentials; a verified pair is remembered briefly (keyed by a keyed hash, never in clear),
    so that a scraper fetching many challenges does not pay scrypt every time."""

    def __init__(self, *, remember_seconds: float = 300.0, size: int = 256):
        self._key = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, float] = OrderedDict()
        self._ttl = remember_seconds
        self._size = size

    def _cache_key(self, profile: str, creds: BasicCredentials, user: str, password: str) -> bytes:
        msg = "\0".join((profile, creds.username, creds.password_hash, user, password)).encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def cached(self, profile: str, creds: BasicCredentials, user: str, password: str) -> bool:
        key = self._cache_key(profile, creds, user, password)
        until = self._ok.get(key)
        return until is not None and until > time.monotonic()

    def check(self, profile: str, creds: BasicCredentials, user: str, password: str) -> bool:
        """Constant-time for the username; scrypt for the password (run this in a thread)."""
        user_ok = hmac.compare_digest(user.encode(), creds.username.encode())
        pw_ok = check_password(password, creds.password_hash)
        if user_ok and pw_ok:
            key = self._cache_key(profile, creds, user, password)
            self._ok[key] = time.monotonic() + self._ttl
            self._ok.move_to_end(key)
            while len(self._ok) > self._size:
                self._ok.popitem(last=False)
        return user_ok and pw_ok


class Throttle:
    """Failed attempts per (profile, client address): after ``limit`` failures within ``window`` seconds the
    client is refused for ``lockout`` seconds (429 with Retry-After)."""

    def __init__(self, *, limit: int = 5, window: float = 300.0, lockout: float = 300.0, size: int = 10000):
        self.limit, self.window, self.lockout, self.size = limit, window, lockout, size
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._locked: dict[tuple[str, str], float] = {}

    def retry_after(self, key: tuple[str, str]) -> int | None:
        until = self._locked.get(key)
        if until is None:
            return None
        remaining = until - time.monotonic()
        if remaining <= 0:
            self._locked.pop(key, None)
            return None
        return max(1, int(remaining + 0.999))

    def failed(self, key: tuple[str, str]) -> None:
        now = time.monotonic()
        recent = [t for t in self._failures.get(key, []) if t > now - self.window]
        recent.append(now)
        if len(recent) >= self.limit:
            self._locked[key] = now + self.lockout
            recent = []
        self._failures[key] = recent
        if len(self._failures) > self.size:  # forget the oldest entries
            for k in list(self._failures)[: len(self._failures) - self.size]:
                del self._failures[k]

    def succeeded(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)
