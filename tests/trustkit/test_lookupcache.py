"""trustkit.lookupcache: answers fresh for a while, emptied by a change made here, never refilled by a lookup
that began before the change."""
from __future__ import annotations

import asyncio

import pytest

from trustkit.lookupcache import LookupCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def loader(values: list):
    calls = []

    async def load():
        calls.append(1)
        return values[0]
    return load, calls


async def test_an_answer_is_kept_for_its_period_then_read_again():
    clock = Clock()
    cache: LookupCache[str, str | None] = LookupCache(5.0, monotonic=clock)
    values = ["a"]
    load, calls = loader(values)
    assert await cache.get("k", load) == "a"
    values[0] = "b"
    clock.now += 4.9
    assert await cache.get("k", load) == "a" and len(calls) == 1
    clock.now += 0.2
    assert await cache.get("k", load) == "b" and len(calls) == 2


async def test_none_is_an_answer_and_the_period_is_read_at_each_store():
    clock = Clock()
    ttl = [5.0]
    cache: LookupCache[str, str | None] = LookupCache(lambda: ttl[0], monotonic=clock)
    load, calls = loader([None])
    assert await cache.get("k", load) is None and await cache.get("k", load) is None and len(calls) == 1
    ttl[0] = 0
    cache.changed()
    await cache.get("k", load)
    await cache.get("k", load)
    assert len(calls) == 3  # a period of 0: never served from the cache


async def test_a_change_here_drops_every_answer():
    cache: LookupCache[str, int] = LookupCache(60)
    values = [1]
    load, _ = loader(values)
    assert await cache.get("a", load) == 1 and await cache.get("b", load) == 1
    values[0] = 2
    cache.changed()
    assert len(cache) == 0
    assert await cache.get("a", load) == 2 and await cache.get("b", load) == 2


async def test_a_lookup_in_flight_during_a_change_caches_nothing():
    cache: LookupCache[str, str] = LookupCache(60)
    read, gate = asyncio.Event(), asyncio.Event()

    async def slow_stale():
        read.set()
        await gate.wait()
        return "enabled"

    in_flight = asyncio.create_task(cache.get("k", slow_stale))
    await read.wait()
    cache.changed()                     # the row changed (and committed) while the lookup held the old one
    gate.set()
    assert await in_flight == "enabled"  # its own caller gets what it read
    assert "k" not in cache

    async def fresh():
        return "disabled"
    assert await cache.get("k", fresh) == "disabled"


async def test_a_failed_lookup_caches_nothing():
    cache: LookupCache[str, str] = LookupCache(60)

    async def fails():
        raise RuntimeError("down")
    with pytest.raises(RuntimeError):
        await cache.get("k", fails)
    assert "k" not in cache


async def test_put_refuses_an_answer_of_an_older_generation_and_the_size_is_bounded():
    cache: LookupCache[int, int] = LookupCache(60, max_entries=3)
    started = cache.generation
    cache.changed()
    assert not cache.put(1, 1, started)
    for i in range(3):
        assert cache.put(i, i, cache.generation)
    assert len(cache) == 3
    cache.put(2, 20, cache.generation)  # a key it holds: replaced in place
    assert len(cache) == 3
    cache.put(9, 9, cache.generation)   # a fourth key: starts again empty
    assert len(cache) == 1 and 9 in cache
