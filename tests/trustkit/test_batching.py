"""Group commit: shared flushes, the distinct-key mode, coalescing, failures and closing."""
from __future__ import annotations

import asyncio

import pytest

from trustkit.batching import GroupCommit


class Recorder:
    """A flush that records its batches and can be held open until released."""

    def __init__(self, fail_on=None) -> None:
        self.batches: list[list] = []
        self.open = 0
        self.most_open = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on = fail_on

    async def flush(self, items):
        self.batches.append(list(items))
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.gate.wait()
            if self.fail_on is not None and self.fail_on in items:
                raise ValueError("bad item")
            return [("done", i) for i in items]
        finally:
            self.open -= 1


async def settle() -> None:
    """Let every ready task run until it waits."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_items_share_a_flush_and_get_their_own_results():
    rec = Recorder()
    rec.gate.clear()
    gc = GroupCommit(rec.flush, max_batch=3)
    first = asyncio.ensure_future(gc.submit(0))
    await settle()
    rest = [asyncio.ensure_future(gc.submit(i)) for i in range(1, 6)]
    await settle()
    rec.gate.set()
    assert await asyncio.gather(first, *rest) == [("done", i) for i in range(6)]
    assert rec.batches == [[0], [1, 2, 3], [4, 5]]
    assert (gc.batches, gc.items) == (3, 6)
    await gc.aclose()


async def test_distinct_key_mode_never_puts_one_key_twice_in_flight():
    rec = Recorder()
    rec.gate.clear()
    gc = GroupCommit(rec.flush, key=lambda item: item[0], max_inflight=2)
    jobs = [asyncio.ensure_future(gc.submit(item)) for item in [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("c", 1)]]
    await settle()
    rec.gate.set()
    results = await asyncio.gather(*jobs)
    assert results == [("done", item) for item in [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("c", 1)]]
    for batch in rec.batches:
        keys = [k for k, _ in batch]
        assert len(keys) == len(set(keys))
    # a key's items are flushed in the order they were submitted, each batch after the previous one's
    assert [item for batch in rec.batches for item in batch if item[0] == "a"] == [("a", 1), ("a", 2), ("a", 3)]
    # a lone item is flushed at once; ("a", 2) waits for ("a", 1) while ("b", 1) takes the second slot
    assert rec.batches == [[("a", 1)], [("b", 1)], [("a", 2), ("c", 1)], [("a", 3)]]
    assert rec.most_open == 2
    await gc.aclose()


async def test_without_keys_one_key_may_be_in_one_batch_twice():
    rec = Recorder()
    rec.gate.clear()
    gc = GroupCommit(rec.flush)
    first = asyncio.ensure_future(gc.submit(("x", 0)))
    await settle()
    jobs = [asyncio.ensure_future(gc.submit(("a", n))) for n in (1, 2)]
    await settle()
    rec.gate.set()
    await asyncio.gather(first, *jobs)
    assert rec.batches[1] == [("a", 1), ("a", 2)]


async def test_group_keeps_one_group_value_per_batch():
    rec = Recorder()
    rec.gate.clear()
    gc = GroupCommit(rec.flush, key=lambda item: item[0], group=lambda item: item[1])
    jobs = [asyncio.ensure_future(gc.submit((0, "z")))]  # flushed at once, alone; the others queue behind it
    await settle()
    jobs += [asyncio.ensure_future(gc.submit(item)) for item in [(1, "x"), (2, "y"), (3, "x"), (4, "y")]]
    await settle()
    rec.gate.set()
    await asyncio.gather(*jobs)
    assert rec.batches == [[(0, "z")], [(1, "x"), (3, "x")], [(2, "y"), (4, "y")]]


async def test_coalesce_shares_a_queued_item_but_not_one_already_flushing():
    rec = Recorder()
    rec.gate.clear()
    gc = GroupCommit(rec.flush, key=lambda item: item, coalesce=True)
    first = asyncio.ensure_future(gc.submit("k"))   # flushed at once: its query is under way
    await settle()
    second = asyncio.ensure_future(gc.submit("k"))  # queued behind it
    third = asyncio.ensure_future(gc.submit("k"))   # shares the second's queued look-up
    await settle()
    rec.gate.set()
    assert await asyncio.gather(first, second, third) == [("done", "k")] * 3
    assert rec.batches == [["k"], ["k"]]
    await gc.aclose()


async def test_a_cancelled_caller_does_not_cancel_a_coalesced_look_up():
    rec = Recorder()
    rec.gate.clear()
    gc = GroupCommit(rec.flush, key=lambda item: item, coalesce=True)
    busy = asyncio.ensure_future(gc.submit("k"))
    await settle()
    a = asyncio.ensure_future(gc.submit("k"))
    b = asyncio.ensure_future(gc.submit("k"))
    await settle()
    a.cancel()
    rec.gate.set()
    assert await b == ("done", "k") and await busy == ("done", "k")
    assert a.cancelled()


async def test_a_failed_batch_fails_every_caller_without_single():
    rec = Recorder(fail_on=2)
    rec.gate.clear()
    gc = GroupCommit(rec.flush, key=lambda item: item)
    blocker = asyncio.ensure_future(gc.submit(0))
    await settle()
    jobs = [asyncio.ensure_future(gc.submit(i)) for i in (1, 2, 3)]
    await settle()
    rec.gate.set()
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert await blocker == ("done", 0) and rec.batches == [[0], [1, 2, 3]] and gc.batches == 1


async def test_a_failed_batch_falls_back_to_single_items():
    rec = Recorder(fail_on=2)
    rec.gate.clear()

    async def single(item):
        if item == 2:
            raise ValueError("bad item")
        return ("alone", item)

    gc = GroupCommit(rec.flush, single=single)
    blocker = asyncio.ensure_future(gc.submit(0))
    await settle()
    jobs = [blocker] + [asyncio.ensure_future(gc.submit(i)) for i in (1, 2, 3)]
    await settle()
    rec.gate.set()
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert results[0] == ("done", 0) and rec.batches == [[0], [1, 2, 3]]
    assert results[1] == ("alone", 1) and isinstance(results[2], ValueError) and results[3] == ("alone", 3)
    assert gc.fallbacks == 1


async def test_a_short_result_list_is_an_error_for_every_caller():
    async def flush(items):
        return items[:-1]

    gc = GroupCommit(flush, key=lambda item: item)
    with pytest.raises(RuntimeError, match="results"):
        await gc.submit(1)


async def test_aclose_finishes_queued_items_and_refuses_new_ones():
    rec = Recorder()
    rec.gate.clear()
    gc = GroupCommit(rec.flush, key=lambda item: item[0])
    jobs = [asyncio.ensure_future(gc.submit(("a", n))) for n in range(3)]
    await settle()
    closing = asyncio.ensure_future(gc.aclose())
    await settle()
    with pytest.raises(RuntimeError, match="closed"):
        await gc.submit(("b", 0))
    rec.gate.set()
    await closing
    assert [r for r in await asyncio.gather(*jobs)] == [("done", ("a", n)) for n in range(3)]
    assert len(rec.batches) == 3


def test_group_and_coalesce_need_a_key():
    with pytest.raises(ValueError):
        GroupCommit(Recorder().flush, coalesce=True)
    with pytest.raises(ValueError):
        GroupCommit(Recorder().flush, group=len)
    with pytest.raises(ValueError):
        GroupCommit(Recorder().flush, max_batch=0)


async def test_the_observer_hears_of_each_committed_batch_only():
    heard: list[tuple[str, int, float]] = []
    rec = Recorder(fail_on=99)
    rec.gate.clear()
    gc = GroupCommit(rec.flush, max_batch=3, name="test.store", observer=lambda *a: heard.append(a))
    first = asyncio.ensure_future(gc.submit(0))
    await settle()
    rest = [asyncio.ensure_future(gc.submit(i)) for i in range(1, 4)]
    await settle()
    rec.gate.set()
    await asyncio.gather(first, *rest)
    assert [(name, n) for name, n, _ in heard] == [("test.store", 1), ("test.store", 3)]
    assert all(seconds >= 0 for _, _, seconds in heard)
    with pytest.raises(ValueError):
        await gc.submit(99)  # a batch that failed is not a committed batch
    assert len(heard) == 2
    await gc.aclose()


async def test_the_module_observer_serves_every_group_and_may_fail_without_harm():
    from trustkit import batching

    heard: list[str] = []

    def observer(name: str, items: int, seconds: float) -> None:
        heard.append(name)
        raise RuntimeError("observer bug")

    previous = batching.set_observer(observer)
    try:
        gc = GroupCommit(Recorder().flush, name="module.observed")
        assert await gc.submit(1) == ("done", 1)  # the observer's exception never reaches the caller
        assert heard == ["module.observed"]
        await gc.aclose()
    finally:
        assert batching.set_observer(previous) is observer
