"""Group commit: concurrent callers' writes share one transaction and one durable commit.

`GroupCommit.submit(item)` queues an item and waits for the flush that carries it. A flush receives the
queued items (at most `max_batch`), does their work in one transaction and returns one result per item,
in order, only after the commit: nobody is answered before the commit carrying its write is durable.
While `max_inflight` flushes are running, new items queue up and form the next batch, so the batch size
follows the load and a lone request is flushed at once (no timer).

Distinct-key mode (`key=`): a batch holds at most one item per key and a key is never in two batches in
flight at once, so each item is judged alone, exactly as if it ran by itself (an item whose key is busy
waits in the queue, in order). With `group=`, the items of one batch also share one group value (the
first item's); with `coalesce=True`, an item submitted while an item of the same key is still queued
shares that item's result instead of queueing again (a read asked for by several callers is done once,
by a query issued after every one of them asked).

An observer (`set_observer`, set once by the application that wants metrics; or `observer=` per instance)
hears of every committed batch: the group's name, its number of items and the seconds its flush took. It
must be cheap and never raise (an exception from it is logged and ignored).

If a flush raises, the batch rolled back as a whole; when a `single` function is given, every item of
that batch is then run alone (its own transaction), so one bad item cannot fail the others. Without it,
every caller of the batch receives the exception.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Generic, Hashable, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_Entry = tuple  # (item, future, key or None)

Observer = Callable[[str, int, float], None]
"""Hears of a committed batch: (group name, items in the batch, seconds the flush took)."""

_observer: Observer | None = None


def set_observer(observer: Observer | None) -> Observer | None:
    """The observer of every GroupCommit without one of its own (None: nobody); returns the one it replaces."""
    global _observer
    previous, _observer = _observer, observer
    return previous


def observed(name: str, items: int, seconds: float) -> None:
    """Tell the observer of a batch committed by other means (a group commit of threads, say)."""
    observer = _observer
    if observer is not None:
        try:
            observer(name, items, seconds)
        except Exception:  # noqa: BLE001 - an observer never fails a commit
            log.exception("batch.observer_failed", extra={"batcher": name, "items": items})


class GroupCommit(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R]]], *,
                 single: Callable[[T], Awaitable[R]] | None = None, max_batch: int = 256,
                 max_inflight: int = 1, name: str = "group_commit",
                 key: Callable[[T], Hashable] | None = None, group: Callable[[T], Hashable] | None = None,
                 coalesce: bool = False, observer: Observer | None = None) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        if (group is not None or coalesce) and key is None:
            raise ValueError("group and coalesce need a key")
        self._flush = flush
        self._single = single
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._key = key
        self._group = group
        self._coalesce = coalesce
        self.name = name
        self._observer = observer
        self._queue: list[_Entry] = []
        self._busy: set[Hashable] = set()  # keys in a batch in flight (distinct-key mode)
        self._queued: dict[Hashable, asyncio.Future[R]] = {}  # key -> queued future (coalesce)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0
        self.items = 0
        self.fallbacks = 0

    def enqueue(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future gets its result once the transaction that carried it has committed.

        With ``coalesce``, the future may be shared with other callers: await it through `asyncio.shield`."""
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        k = self._key(item) if self._key is not None else None
        if self._coalesce:
            fut = self._queued.get(k)
            if fut is not None and not fut.done():
                return fut
        fut = asyncio.get_running_loop().create_future()
        if self._coalesce:
            self._queued[k] = fut
        self._queue.append((item, fut, k))
        self._kick()
        return fut

    async def submit(self, item: T) -> R:
        """The item's result, once the transaction that carried it has committed."""
        fut = self.enqueue(item)
        return await (asyncio.shield(fut) if self._coalesce else fut)

    def _kick(self) -> None:
        while self._queue and len(self._tasks) < self._max_inflight:
            batch = self._take() if self._key is not None else self._take_all()
            if batch is None:
                return
            if not batch:
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)

    def _take_all(self) -> list[_Entry]:
        take = self._queue[:self._max_batch]
        del self._queue[:len(take)]
        return [entry for entry in take if not entry[1].done()]  # callers gone before their turn: dropped

    def _take(self) -> list[_Entry] | None:
        """The next batch of distinct, idle keys (None when every queued key is busy)."""
        batch: list[_Entry] = []
        rest: list[_Entry] = []
        first_group = None
        for entry in self._queue:
            item, fut, k = entry
            if fut.done():
                continue  # the caller went away before its turn
            if len(batch) >= self._max_batch or k in self._busy:
                rest.append(entry)
                continue
            if self._group is not None:
                g = self._group(item)
                if not batch:
                    first_group = g
                elif g != first_group:
                    rest.append(entry)
                    continue
            self._busy.add(k)
            batch.append(entry)
            if self._coalesce and self._queued.get(k) is fut:
                del self._queued[k]
        self._queue = rest
        return batch if batch or not rest else None

    async def _run(self, batch: list[_Entry]) -> None:
        items = [entry[0] for entry in batch]
        try:
            try:
                started = time.perf_counter()
                results = await self._flush(items)
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: flush returned {len(results)} results for {len(items)} items")
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                if self._single is None:
                    log.error("batch.failed", extra={"batcher": self.name, "items": len(items)}, exc_info=exc)
                    for _, fut, _ in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    return
                log.info("batch.fallback", extra={"batcher": self.name, "items": len(items),  # one by one, now
                                                  "error": type(exc).__name__})
                self.fallbacks += 1
                for item, fut, _ in batch:
                    try:
                        result = await self._single(item)
                    except Exception as one:  # noqa: BLE001
                        if not fut.done():
                            fut.set_exception(one)
                    else:
                        if not fut.done():
                            fut.set_result(result)
                return
            seconds = time.perf_counter() - started
            self.batches += 1
            self.items += len(items)
            for (_, fut, _), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
            observer = self._observer or _observer  # told after the callers have their results
            if observer is not None:
                try:
                    observer(self.name, len(items), seconds)
                except Exception:  # noqa: BLE001 - an observer never fails a commit
                    log.exception("batch.observer_failed", extra={"batcher": self.name, "items": len(items)})
        except BaseException:
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"{self.name}: batch cancelled"))
            raise
        finally:
            if self._key is not None:
                for _, _, k in batch:
                    self._busy.discard(k)
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._kick()

    async def aclose(self) -> None:
        """Refuse new items; finish the queued and in-flight ones."""
        self._closed = True
        while self._tasks or self._queue:
            if not self._tasks:
                self._kick()
                if not self._tasks:
                    break
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for _, fut, _ in self._queue:  # only callers gone before their turn are left
            if not fut.done():
                fut.set_exception(RuntimeError(f"{self.name} is closed"))
        self._queue.clear()
        self._queued.clear()
