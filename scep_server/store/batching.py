"""Group commit: concurrent callers' writes share one transaction and one durable commit.

`GroupCommit.submit(item)` queues an item and waits for the flush that carries it. A flush receives the
queued items (at most `max_batch`), does their work in one transaction and returns one result per item
only after the commit: nobody is answered before the commit carrying its write is durable. While a flush
is in flight, new items queue up and form the next batch, so the batch size follows the load and a lone
request is flushed at once (no timer).

If a flush raises, the batch rolled back as a whole; when a `single` function is given, every item of
that batch is then run alone (its own transaction), so one bad item cannot fail the others. Without it,
every caller of the batch receives the exception.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R]]], *,
                 single: Callable[[T], Awaitable[R]] | None = None, max_batch: int = 256,
                 max_inflight: int = 1, name: str = "group_commit") -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        self._flush = flush
        self._single = single
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self.name = name
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0
        self.items = 0
        self.fallbacks = 0

    async def submit(self, item: T) -> R:
        """The item's result, once the transaction that carried it has committed."""
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        while self._queue and len(self._tasks) < self._max_inflight:
            take = self._queue[:self._max_batch]
            del self._queue[:len(take)]
            batch = [entry for entry in take if not entry[1].done()]  # callers gone before their turn: dropped
            if not batch:
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        try:
            try:
                results = await self._flush(items)
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: flush returned {len(results)} results for {len(items)} items")
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                if self._single is None:
                    log.error("%s: batch of %d failed", self.name, len(items), exc_info=exc)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    return
                log.info("%s: batch of %d failed (%s); running its items one by one", self.name, len(items),
                         type(exc).__name__)
                self.fallbacks += 1
                for item, fut in batch:
                    try:
                        result = await self._single(item)
                    except Exception as one:  # noqa: BLE001
                        if not fut.done():
                            fut.set_exception(one)
                    else:
                        if not fut.done():
                            fut.set_result(result)
                return
            self.batches += 1
            self.items += len(items)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
        except BaseException:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"{self.name}: batch cancelled"))
            raise
        finally:
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            if not self._closed or self._queue:
                self._kick()

    async def aclose(self) -> None:
        """Refuse new items; finish the queued and in-flight ones."""
        self._closed = True
        while self._tasks or self._queue:
            if not self._tasks:
                self._kick()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def on_sqlite_thread(engine, fn: Callable[..., R]) -> R:
    """Run `fn(sqlite3_connection)` on the thread of one pooled aiosqlite connection, as one hand-off.

    Each statement through SQLAlchemy and aiosqlite is a hand-off to the connection's thread and back;
    a transaction that needs several statements can run them all in one call this way. `fn` manages its
    own transaction (the engine's connections run in autocommit mode, `isolation_level = None`) and must
    leave none open; it runs off the event loop, so it must not touch asyncio objects.
    """
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection  # aiosqlite.Connection
        return await driver._execute(lambda: fn(driver._conn))
