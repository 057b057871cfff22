"""Partitioned CRLs of one CA (RFC 5280 §5.2.5): a CRL per partition, each scoped by an Issuing Distribution Point.

A certificate issued while partitioning is on names its partition's URL as its CRL Distribution Point; the
partition is its serial number modulo the CA's partition count (`partition_of`). The count is recorded in the
database when partitioning is first turned on (`record_partitioning`) and never changes afterwards, so every
process, and every later start, puts a serial in the same partition. Serials are random (127 bits), so the
partitions fill evenly.

Each partition is published by a `Publisher` of its own (CRL scope ``<ca>/<partition>``: its own row in
``crl_state``, its own CRL Number sequence, the same allocation and "highest number wins" recording as the full
CRL, hence the same behaviour with several processes on one database). One loop per CA (`PartitionSet`) drives
them all: one query polls every partition's recorded number, a partition is re-signed on its schedule, and
after a status change only the partitions whose certificates changed are re-signed, and only when their
entries differ from what this process signed last. Given a `listed` source, such a re-sign starts from the
partition's CRL signed here last and reads only the changed certificates (Publisher.publish_changes); the
schedule's re-sign reads the whole partition again.
"""
from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import Awaitable, Callable, Iterable, Sequence

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.db import writer

from .build import Entry, Issuer, Scope
from .config import CrlSettings
from .publish import ListedSource, PublishError, Publisher, PublisherHealth, RecordedHook, idle
from .signing import CrlSigner
from .tables import crl_partitioning, crl_state

log = structlog.get_logger("crl.partitions")

# (partition, now) -> the partition's entries (held or revoked, unexpired certificates that name it)
PartitionSource = Callable[[int, datetime], Awaitable[Sequence[Entry]]]
# since -> a row (partition, serial number, updated_at, status) per certificate of a partition changed at or after
# `since`
Change = tuple[int, int, datetime, object]
ChangedSource = Callable[[datetime], Awaitable[Iterable[Change]]]

MAX_PARTITIONS = 10_000
# how far before the previous look a look for changed certificates reaches: a status change carries the time its
# transaction began, which can be earlier than the look that missed its commit (and other instances' clocks
# differ a little); a change already looked at is recognised and not looked at again
LOOKBACK = timedelta(minutes=2)


def partition_count(expected_certificates: int, target_size: int) -> int:
    """Partitions for a CA expected to hold `expected_certificates` unexpired certificates, `target_size` each."""
    return max(1, min(MAX_PARTITIONS, math.ceil(expected_certificates / target_size)))


def partition_of(serial: int, partitions: int) -> int:
    """The partition of a serial number: serial mod partitions (0 .. partitions-1)."""
    return serial % partitions


def scope_name(ca: str, partition: int) -> str:
    """The CRL scope (``crl_state`` row, publisher name) of a partition."""
    return f"{ca}/{partition}"


async def record_partitioning(engine: AsyncEngine, ca: str, partitions: int, now: datetime) -> int:
    """Record `partitions` for `ca` unless a count is recorded already; the recorded count (the first one wins:
    certificates already issued name partitions of it)."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    async with writer(engine).begin() as conn:
        await conn.execute(dialect.insert(crl_partitioning).values(ca=ca, partitions=partitions, since=now)
                           .on_conflict_do_nothing(index_elements=["ca"]))
        return int((await conn.execute(sa.select(crl_partitioning.c.partitions)
                                       .where(crl_partitioning.c.ca == ca))).scalar_one())


async def recorded_partitioning(engine: AsyncEngine) -> dict[str, int]:
    """Every partitioned CA and its partition count."""
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(crl_partitioning.c.ca, crl_partitioning.c.partitions))).all()
    return {r.ca: int(r.partitions) for r in rows}


class PartitionSet:
    """The partition CRLs of one CA: a publisher per partition and one loop for all of them."""

    def __init__(self, ca: str, partitions: int, *, url_for: Callable[[int], str], issuer: Issuer,
                 signer: CrlSigner, source: PartitionSource, changed: ChangedSource, engine: AsyncEngine,
                 settings: "CrlSettings | None" = None, clock: Callable[[], datetime],
                 executor: "Executor | None" = None, listed: "ListedSource | None" = None,
                 on_recorded: "RecordedHook | None" = None, logger=None) -> None:
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"a CA has 1 to {MAX_PARTITIONS} CRL partitions, not {partitions}")
        self.ca = ca
        self.count = partitions
        self.settings = settings or CrlSettings()
        self._clock = clock
        self._engine = engine
        self._changed = changed
        self._listed = listed
        self._log = logger or log
        self.publishers: dict[int, Publisher] = {}
        for p in range(partitions):
            async def partition_source(now: datetime, _p: int = p) -> Sequence[Entry]:
                return await source(_p, now)

            # every certificate we issue is an end-entity certificate: the CRL says so (§5.2.5)
            self.publishers[p] = Publisher(
                scope_name(ca, p), issuer=issuer, signer=signer, source=partition_source, engine=engine,
                settings=self.settings, clock=clock, scope=Scope((url_for(p),), only_user_certs=True),
                executor=executor, logger=logger, on_recorded=on_recorded, encoder_cache=False)
        self._names = {scope_name(ca, p): p for p in range(partitions)}
        # the loop's first look comes right after its first poll: a change made while no process of this set ran
        # (a command-line revocation, a server that stopped before signing) is in no partition CRL yet
        self._dirty_since: "float | None" = time.monotonic()
        self._last_look: "datetime | None" = None
        self._seen: set[Change] = set()  # changes whose partition was read since they were committed
        self._poll_requested = True
        self._wake = asyncio.Event()
        self._task: "asyncio.Task | None" = None
        self.resigned_after_change = 0  # partitions re-signed because their entries changed (tests, bench)

    # ---- what the application calls (on the event loop)

    def publisher(self, partition: int) -> "Publisher | None":
        return self.publishers.get(partition)

    def notify_changed(self) -> None:
        """A certificate of this CA changed status: look for changed partitions after the coalescing delay."""
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self._wake.set()

    def poll_soon(self, partition: "int | None" = None) -> None:
        """Another process may have recorded a partition CRL: look at the recorded numbers now."""
        self._poll_requested = True
        self._wake.set()

    def health(self) -> list[PublisherHealth]:
        return [pub.health() for pub in self.publishers.values()]

    # ---- work

    async def poll(self) -> int:
        """Adopt every partition CRL another process recorded with a higher number (one query); how many."""
        c = crl_state.c
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(c.ca, c.crl_number).where(
                c.ca.in_(list(self._names)), c.crl_number.is_not(None)))).all()
        adopted = 0
        for row in rows:
            pub = self.publishers[self._names[row.ca]]
            if pub.current is None or int(row.crl_number) > pub.current.number:
                adopted += await pub.refresh_from_store()
        return adopted

    async def publish_changed(self) -> list[int]:
        """Re-sign the partitions holding a certificate changed since the last look (a change not looked at
        yet), when their entries differ from what their CRL lists: from the CRL signed here last and the changed
        certificates when there is a `listed` source, else from the whole partition."""
        self._dirty_since = None
        now = self._clock()
        since = (self._last_look or self._first_since(now)) - LOOKBACK
        try:
            changes = [tuple(c) for c in await self._changed(since)]
        except Exception:
            self._dirty_since = time.monotonic()  # look again after the coalescing delay
            raise
        self._last_look = now
        self._seen = {c for c in self._seen if c[2] >= since}
        fresh: dict[int, list[Change]] = {}
        for change in changes:
            if change not in self._seen:
                fresh.setdefault(int(change[0]), []).append(change)
        signed = []
        for p in sorted(fresh):
            pub = self.publishers.get(p)
            if pub is None:
                continue
            before = pub.current
            try:
                if self._listed is None:
                    after = await pub.publish_now(only_if_changed=True)
                else:
                    after = await pub.publish_changes({c[1] for c in fresh[p]}, self._listed)
            except PublishError:
                continue  # logged; looked at again with the next change, and the schedule retries
            self._seen.update(fresh[p])  # committed before the scan, so read by this publication
            if after is not before:
                signed.append(p)
                self.resigned_after_change += 1
        return signed

    def _first_since(self, now: datetime) -> datetime:
        """Where the first look starts: at the oldest partition CRL served (adopted from the database), as far back
        as the schedule leaves it (an older one is re-signed in full as due)."""
        served = [pub.current.this_update for pub in self.publishers.values() if pub.current is not None]
        return max(min([*served, now]), now - self.settings.resign_interval)

    async def publish_due(self) -> list[int]:
        """Sign the partitions without a CRL and re-sign those whose schedule says so."""
        done = []
        for p, pub in self.publishers.items():
            if self._seconds_until(pub) <= 0:
                try:
                    await pub.publish_now()
                    done.append(p)
                except PublishError:
                    pass  # logged, in health(); retried after retry_interval
        return done

    def _seconds_until(self, pub: Publisher) -> float:
        wait = pub._seconds_until_resign()
        if pub._last_failure_mono is not None:
            wait = max(wait, pub._last_failure_mono + self.settings.retry_interval.total_seconds() - time.monotonic())
        return wait

    def _seconds_until_work(self) -> float:
        wait = min((self._seconds_until(pub) for pub in self.publishers.values()), default=3600.0)
        if self._dirty_since is not None:
            wait = min(wait, self._dirty_since + self.settings.coalesce_delay.total_seconds() - time.monotonic())
        return wait

    # ---- the loop

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"crl-partitions-{self.ca}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        poll = self.settings.poll_interval.total_seconds()
        next_poll = time.monotonic()
        while True:
            try:
                if self._poll_requested or time.monotonic() >= next_poll:
                    self._poll_requested = False
                    next_poll = time.monotonic() + poll
                    await self.poll()
                if (self._dirty_since is not None
                        and time.monotonic() >= self._dirty_since + self.settings.coalesce_delay.total_seconds()):
                    await self.publish_changed()
                    continue
                if self._seconds_until_work() <= 0:
                    await self.publish_due()
                    continue
                await idle(self._wake, min(self._seconds_until_work(), next_poll - time.monotonic()),
                           skip=self._poll_requested)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a database hiccup
                self._log.error("crl.partitions.loop_error", ca=self.ca, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(min(poll, self.settings.retry_interval.total_seconds()))
