"""Signed FAILURE replies kept for a short time by request body, so that a replayed bad message costs no RA
signature (RFC 8894 §3.3.2.2 FAILUREs are signed; verifying and signing again for the same bytes gains nothing)."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict


class FailureReplies:
    """A bounded LRU of CertRep FAILUREs by (profile, SHA-256 of the request body), each kept ``ttl`` seconds,
    within ``size`` replies and ``max_bytes`` bytes of them (a FAILURE echoes the request's transactionID and
    senderNonce: a hostile request makes its reply as long as its own body, 35 times a real one's).
    The caller hashes the body (once per request: the HTTP layer needs the digest too).

    Only failures decided by the bytes alone belong here (a signature that does not verify, a malformed or
    undecryptable message): the same bytes always get the same answer, so answering from the cache is exact.
    """

    def __init__(self, size: int = 2048, ttl: float = 60.0, clock=time.monotonic, max_bytes: int = 8 << 20):
        self._size, self._ttl, self._clock, self._max_bytes = size, ttl, clock, max_bytes
        self._entries: OrderedDict[tuple[str, bytes], tuple[float, bytes]] = OrderedDict()
        self._bytes = 0  # of the replies held
        self._lock = threading.Lock()

    def get(self, profile: str, body_sha256: bytes) -> bytes | None:
        key = (profile, body_sha256)
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            if hit[0] <= self._clock():
                del self._entries[key]
                self._bytes -= len(hit[1])
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def put(self, profile: str, body_sha256: bytes, reply: bytes) -> None:
        key = (profile, body_sha256)
        if len(reply) > self._max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._entries[key] = (self._clock() + self._ttl, reply)
            self._bytes += len(reply)
            while len(self._entries) > self._size or self._bytes > self._max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)
