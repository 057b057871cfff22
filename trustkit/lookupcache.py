"""A per-process cache of database lookups, each answer fresh for a while, that a change made in this process
empties at once, including for the lookups in flight when it was made.

Other processes learn of a change when their cached answer expires. In the process that made it, the change
drops the cached answers; a lookup that read its row before the change committed must not put the stale answer
back afterwards. The cache keeps a generation counter that each change moves on: a lookup remembers the
generation it started in and caches its answer only if no change was made here since.
"""
from __future__ import annotations

import time
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_ENTRIES = 10_000  # beyond this many answers the cache starts again empty


class LookupCache(Generic[K, V]):
    """Answers of ``load`` by key, each kept ``ttl`` seconds (a callable: read at each store, so that a
    setting changed on a live object applies to the next answer). None is an answer like any other (cached:
    "there is no such row")."""

    def __init__(self, ttl: float | Callable[[], float], *, max_entries: int = MAX_ENTRIES,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl if callable(ttl) else (lambda: ttl)
        self._max = max_entries
        self._monotonic = monotonic
        self._entries: dict[K, tuple[float, V]] = {}
        self._generation = 0  # moves on at each change made here: a lookup begun before caches nothing

    @property
    def generation(self) -> int:
        return self._generation

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The answer for `key`: from the cache while it is fresh, else ``await load()`` (cached unless a
        change was made here while it ran; an exception caches nothing)."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] > self._monotonic():
            return hit[1]
        generation = self._generation
        value = await load()
        self.put(key, value, generation)
        return value

    def put(self, key: K, value: V, generation: int) -> bool:
        """Cache `value`, read by a lookup begun in `generation` (:attr:`generation` then), unless a change was
        made here since: True when cached."""
        if generation != self._generation:  # changed here while it was read: it may be stale
            return False
        if len(self._entries) >= self._max and key not in self._entries:
            self._entries.clear()
        self._entries[key] = (self._monotonic() + self._ttl(), value)
        return True

    def changed(self) -> None:
        """A row behind some answers changed here (call it after the change committed): every cached answer
        is dropped, and no lookup in flight caches its own."""
        self._generation += 1
        self._entries.clear()


__all__ = ["MAX_ENTRIES", "LookupCache"]
