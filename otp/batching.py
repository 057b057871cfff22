"""Batching of the verification hot path: key look-ups and counter commits shared by concurrent requests.

`CounterCommitter` is a group commit: many keys' compare-and-sets share one durable transaction.
A verification waits for the commit that carries its update before it may answer OK, so batching
never weakens durability; a batch holds at most one update per key (and a key is never in two
batches in flight at once), so each compare-and-set is judged alone, exactly as if it ran by itself.

`MaterialLoader` coalesces the look-ups of keys by public ID into one query per round trip.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Callable, Generic, Hashable, Sequence, TypeVar

from .store import CounterUpdate, KeyMaterial, OtpStore

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class _Batcher(Generic[K, R]):
    """Queue of keyed jobs flushed in batches of distinct keys, `max_inflight` batches at a time."""

    def __init__(self, max_batch: int, max_inflight: int) -> None:
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: list[tuple[K, object, asyncio.Future[R]]] = []
        self._busy: set[K] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0
        self.items = 0

    def _enqueue(self, key: K, payload: object) -> asyncio.Future[R]:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((key, payload, fut))
        self._kick()
        return fut

    def _compatible(self, first: object, other: object) -> bool:
        return True

    def _kick(self) -> None:
        while self._queue and len(self._tasks) < self._max_inflight:
            batch = self._take()
            if not batch:
                return
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)

    def _take(self) -> list[tuple[K, object, asyncio.Future[R]]]:
        batch: list[tuple[K, object, asyncio.Future[R]]] = []
        rest: list[tuple[K, object, asyncio.Future[R]]] = []
        for item in self._queue:
            key, payload, fut = item
            if fut.done():
                continue  # the caller went away before its turn
            if len(batch) >= self._max_batch or key in self._busy or (
                    batch and not self._compatible(batch[0][1], payload)):
                rest.append(item)
                continue
            self._busy.add(key)
            batch.append(item)
        self._queue = rest
        return batch

    async def _flush(self, batch: list[tuple[K, object, asyncio.Future[R]]]) -> dict[K, R]:
        raise NotImplementedError

    async def _run(self, batch: list[tuple[K, object, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush(batch)
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about the failure
            log.error("otp.batch.failed", exc_info=exc)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        except BaseException:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(RuntimeError("batch cancelled"))
            raise
        else:
            self.batches += 1
            self.items += len(batch)
            for key, _, fut in batch:
                if not fut.done():
                    fut.set_result(results[key])
        finally:
            for key, _, _ in batch:
                self._busy.discard(key)
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._kick()

    async def aclose(self) -> None:
        """Refuse new jobs; finish the queued and in-flight ones."""
        self._closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for _, _, fut in self._queue:
            if not fut.done():
                fut.set_exception(RuntimeError(f"{type(self).__name__} is closed"))
        self._queue.clear()


class CounterCommitter(_Batcher[int, bool]):
    """Group commit of compare-and-sets (docs/otp.md "Counters": one atomic CAS per OTP)."""

    def __init__(self, store: OtpStore, clock: Callable[[], datetime], *, max_batch: int = 256,
                 max_inflight: int = 2) -> None:
        super().__init__(max_batch, max_inflight)
        self._store = store
        self._clock = clock

    async def submit(self, update: CounterUpdate, statuses: Sequence[str]) -> bool:
        """True once the update is durably committed; False if the stored counters were not lower."""
        return await self._enqueue(update.key_id, (update, tuple(statuses)))

    def _compatible(self, first: object, other: object) -> bool:
        return first[1] == other[1]  # type: ignore[index]

    async def _flush(self, batch) -> dict[int, bool]:
        updates = [p[0] for _, p, _ in batch]
        accepted = await self._store.compare_and_set_batch(updates, batch[0][1][1], self._clock())
        return {u.key_id: u.key_id in accepted for u in updates}


class MaterialLoader(_Batcher[str, "KeyMaterial | None"]):
    """Look-ups of live keys by public ID, many per query; identical queued look-ups share one answer."""

    def __init__(self, store: OtpStore, *, max_batch: int = 500, max_inflight: int = 2) -> None:
        super().__init__(max_batch, max_inflight)
        self._store = store
        self._pending: dict[str, asyncio.Future[KeyMaterial | None]] = {}

    async def load(self, public_id: str) -> KeyMaterial | None:
        """The live key with this public ID, read by a query issued after this call."""
        fut = self._pending.get(public_id)
        if fut is None or fut.done():
            fut = self._enqueue(public_id, None)
            self._pending[public_id] = fut
        return await asyncio.shield(fut)

    def _take(self):
        batch = super()._take()
        for key, _, fut in batch:
            if self._pending.get(key) is fut:
                del self._pending[key]
        return batch

    async def _flush(self, batch) -> dict[str, KeyMaterial | None]:
        ids = [key for key, _, _ in batch]
        found = await self._store.key_materials(ids)
        return {key: found.get(key) for key in ids}
