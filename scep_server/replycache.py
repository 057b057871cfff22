"""Signed FAILURE replies kept for a short time by request body, so that a replayed bad message costs no RA
signature (RFC 8894 §3.3.2.2 FAILUREs are signed; verifying and signing again for the same bytes gains nothing)."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict


class FailureReplies:
    """A bounded LRU of CertRep FAILUREs by (profile, SHA-256 of the request body), each kept ``ttl`` seconds.
    The caller hashes the body (once per request: the HTTP layer needs the digest too).

    Only failures decided by the bytes alone belong here (a signature that does not verify, a malformed or
    undecryptable message): the same bytes always get the same answer, so answering from the cache is exact.
    """

    def __init__(self, size: int = 2048, ttl: float = 60.0, clock=time.monotonic):
        self._size, self._ttl, self._clock = size, ttl, clock
        self._entries: OrderedDict[tuple[str, bytes], tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, profile: str, body_sha256: bytes) -> bytes | None:
        key = (profile, body_sha256)
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            if hit[0] <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def put(self, profile: str, body_sha256: bytes, reply: bytes) -> None:
        key = (profile, body_sha256)
        with self._lock:
            self._entries[key] = (self._clock() + self._ttl, reply)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
