"""HTTP Basic credentials of the challenge endpoint: salted scrypt hashes, constant-time checks.

Failed logins are throttled in the database (throttle.py), shared by every instance."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

from .config import BasicCredentials

# scrypt cost for operator-chosen passwords: n = 2**17, r = 8, p = 1 (128 MiB, a few hundred milliseconds);
# `challenge.scrypt_log2_n` sets it, and a hash of another cost is replaced at the next good login
LOG2_N, R, P = 17, 8, 1
MAX_LOG2_N = 20


def _maxmem(log2_n: int, r: int) -> int:
    return 130 * r * 2 ** log2_n + (1 << 20)  # scrypt needs 128 * r * n bytes, plus a little


def hash_password(password: str, *, log2_n: int = LOG2_N) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** log2_n, r=R, p=P, maxmem=_maxmem(log2_n, R),
                        dklen=32)
    return f"scrypt${log2_n}${R}${P}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def hash_params(encoded: str) -> "tuple[int, int, int] | None":
    """(log2 n, r, p) of a stored hash, None when it is not one of ours."""
    try:
        scheme, log2_n, r, p, _salt, _want = encoded.split("$")
        return (int(log2_n), int(r), int(p)) if scheme == "scrypt" else None
    except ValueError:
        return None


def check_password(password: str, encoded: str) -> bool:
    try:
        scheme, log2_n, r, p, salt, want = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt_b, want_b = base64.b64decode(salt), base64.b64decode(want)
        if not 1 <= int(log2_n) <= MAX_LOG2_N or not 1 <= int(r) <= 32 or not 1 <= int(p) <= 16:
            return False
        got = hashlib.scrypt(password.encode("utf-8"), salt=salt_b, n=2 ** int(log2_n), r=int(r), p=int(p),
                             maxmem=_maxmem(int(log2_n), int(r)) * int(p), dklen=len(want_b))
    except (ValueError, binascii.Error, MemoryError):
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
    except ValueError:  # binascii.Error, UnicodeDecodeError, and text that is not ASCII (b64decode of a str)
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def username_matches(creds: BasicCredentials, user: str) -> bool:
    return hmac.compare_digest(user.encode("utf-8", "surrogatepass"), creds.username.encode("utf-8", "surrogatepass"))


class CredentialChecker:
    """Checks Basic credentials; a verified pair is remembered briefly (keyed by a keyed hash, never in clear),
    so that a scraper fetching many challenges does not pay scrypt every time. The memory slides: each use keeps
    the pair for `remember_seconds` more (a changed password hash is another pair)."""

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
        now = time.monotonic()
        if until is None or until <= now:
            return False
        self._ok[key] = now + self._ttl
        try:
            self._ok.move_to_end(key)
        except KeyError:  # pushed out meanwhile by a check on a hashing thread
            pass
        return True

    def check(self, profile: str, creds: BasicCredentials, user: str, password: str) -> bool:
        """Constant-time for the username; scrypt for the password (run this on the hashing executor)."""
        user_ok = username_matches(creds, user)
        pw_ok = check_password(password, creds.password_hash)
        if user_ok and pw_ok:
            key = self._cache_key(profile, creds, user, password)
            self._ok[key] = time.monotonic() + self._ttl
            self._ok.move_to_end(key)
            while len(self._ok) > self._size:
                self._ok.popitem(last=False)
        return user_ok and pw_ok
