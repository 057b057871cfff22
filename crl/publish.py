"""The CRL publisher of one CA scope (RFC 5280 §5): numbering, scheduled and on-change re-signing, serving copy."""
# CRLs published by other processes on the same database are picked up by a cheap poll, every poll_interval
# and whenever the application calls `poll_soon` (it learnt that something changed); `on_recorded` lets the
# application tell the other processes that a CRL was recorded.
from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import socket
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Awaitable, Callable, Collection, Sequence

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import utcnow
from trustkit.der import utc_seconds
from trustkit.progress import Progress, report

from .build import Entry, EntryEncoder, Issuer, Scope, build_crl, patch_crl
from .config import CrlSettings
from .parse import CrlFormatError, locate_entries, parse_crl, pem_from_der
from .selfcheck import Patched, SelfCheckError, check_crl
from .signing import CrlSigner, UnsupportedAlgorithm, verify_signature
from .store import CrlStateStore

log = structlog.get_logger("crl.publish")

# The application's view of a CA's revocation state: (serial, revoked_at, reason, invalidity_date) tuples of
# the held or revoked, unexpired certificates as of `now` (see scep_server.ca.inventory.revoked_entries).
EntrySource = Callable[[datetime], Awaitable[Sequence[Entry]]]
# (serials, now) -> the entries listed now among the certificates with these serial numbers (held or revoked,
# unexpired): what a re-sign from the previous CRL reads (Publisher.publish_changes)
ListedSource = Callable[[Collection[int], datetime], Awaitable[Sequence[Entry]]]
# Called after a CRL signed here was recorded in the database (e.g. to notify the other processes).
RecordedHook = Callable[["PublishedCrl"], Awaitable[None]]
# a CRL this publisher signed and recorded: (the CRL, its entries, the CRL served before it, seconds from the
# start of the publication to the record, the time of the record); called on the event loop, must be cheap
SignedHook = Callable[["PublishedCrl", Sequence[Entry], "PublishedCrl | None", float, datetime], None]


class PublishError(Exception):
    """A re-sign failed; the previous CRL (if any) is still the one served."""


@dataclass(frozen=True, eq=False)
class PublishedCrl:
    """A signed CRL ready to serve: DER, PEM and the metadata HTTP validators need."""

    ca: str
    number: int
    this_update: datetime
    next_update: datetime
    der: bytes = field(repr=False)
    sha256: str
    entries: int
    # the CRL recorded before it has the same thisUpdate second (two re-signs within one second): a client's
    # If-Modified-Since of that second may name either, so crl.web answers it with this one
    shares_second: bool = False

    @functools.cached_property
    def pem(self) -> bytes:
        """The PEM text, made when first asked for (a third more than the DER: a server with 100 partitions of
        100,000 entries would hold 600 MB of PEM that almost no client reads)."""
        return pem_from_der(self.der)

    @classmethod
    def from_der(cls, ca: str, der: bytes) -> "PublishedCrl":
        """Wrap an existing signed CRL (e.g. one loaded from disk) for serving."""
        crl = parse_crl(der)
        if crl.crl_number is None or crl.next_update is None:
            raise CrlFormatError("a CRL to serve needs a CRL Number and a nextUpdate")
        return _published_from(ca, crl.der, crl.crl_number, crl.this_update, crl.next_update,
                               len(crl.index()))

    @property
    def etag(self) -> str:
        """Strong validator of the DER representation (CRL Number and content hash)."""
        return f'"{self.number:x}-{self.sha256[:16]}"'


async def idle(wake: asyncio.Event, seconds: float, *, skip: bool = False) -> None:
    """A publishing loop's rest: until `wake` is set or `seconds` have passed (at once when there is no time
    left or `skip`, a poll asked for meanwhile)."""
    wake.clear()
    if seconds > 0 and not skip:
        try:
            async with asyncio.timeout(seconds):
                await wake.wait()
        except TimeoutError:
            pass


@dataclass(frozen=True)
class PublisherHealth:
    """Readiness of one publisher: `ready` while a CRL whose nextUpdate is in the future is being served."""

    ca: str
    state: str  # starting | ok | degraded (last re-sign failed, CRL still fresh) | stale (none, or nextUpdate passed)
    ready: bool
    crl_number: "int | None"
    this_update: "datetime | None"
    next_update: "datetime | None"
    last_success_at: "datetime | None"
    last_failure_at: "datetime | None"
    last_error: "str | None"
    consecutive_failures: int


def _published_from(ca: str, der: bytes, number: int, this_update: datetime, next_update: datetime,
                    entries: int, shares_second: bool = False) -> PublishedCrl:
    return PublishedCrl(ca=ca, number=number, this_update=this_update, next_update=next_update, der=der,
                        sha256=hashlib.sha256(der).hexdigest(), entries=entries, shares_second=shares_second)


def entries_fingerprint(entries: Sequence[Entry]) -> tuple[int, int]:
    """What a list of entries holds, whatever their order, as (count, sum of hashes): equal lists give equal
    fingerprints; a different list gives a different one but with a chance of 2^-64 (hash() is seeded per process,
    so a fingerprint is compared only within one process)."""
    return len(entries), sum(map(hash, entries)) & 0xFFFF_FFFF_FFFF_FFFF


# more changed certificates than this and a re-sign reads and encodes every entry again (publish_changes)
PATCH_LIMIT = 1000


class Publisher:
    """Keeps the current CRL of one CA scope, re-signing on schedule and soon after status changes."""

    def __init__(self, ca: str, *, issuer: Issuer, signer: CrlSigner, source: EntrySource, engine: AsyncEngine,
                 settings: "CrlSettings | None" = None, clock: Callable[[], datetime] = utcnow,
                 scope: "Scope | None" = None, number_floor: int = 0, executor: "Executor | None" = None,
                 instance_id: "str | None" = None, logger=None, on_recorded: "RecordedHook | None" = None,
                 on_signed: "SignedHook | None" = None, encoder_cache: bool = True) -> None:
        if issuer.public_key is None:
            raise ValueError("the publisher verifies every CRL it signs: give the issuer's public key")
        self.ca = ca
        self.issuer = issuer
        self.signer = signer
        self.source = source
        self.settings = settings or CrlSettings()
        self.scope = scope
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._clock = clock
        self._log = logger or log
        self._store = CrlStateStore(engine, ca)
        self._floor = number_floor
        self._executor = executor
        # a partition's publisher keeps no entry cache: its CRL is small, and a hundred caches would hold the
        # whole revocation list again
        self._encoder = EntryEncoder(cache=encoder_cache)
        # what the CRL signed here last listed (entries_fingerprint); None after adopting another process's CRL
        self._fingerprint: "tuple[int, int] | None" = None
        # the CRL served was signed here (not adopted): publish_changes may re-sign from it
        self._own_base = False
        self._lock = asyncio.Lock()
        self._current: "PublishedCrl | None" = None
        self._published = asyncio.Event()
        self._wake = asyncio.Event()
        self._poll_requested = False
        self._on_recorded = on_recorded
        self._on_signed = on_signed
        self._dirty_since: "float | None" = None
        self._task: "asyncio.Task | None" = None
        self._last_success_at: "datetime | None" = None
        self._last_failure_at: "datetime | None" = None
        self._last_failure_mono: "float | None" = None
        self._last_error: "str | None" = None
        self._failures = 0
        self.last_build_seconds: "float | None" = None

    # ---- what the application reads

    @property
    def current(self) -> "PublishedCrl | None":
        """The CRL served now (the newest good one)."""
        return self._current

    def health(self) -> PublisherHealth:
        """Readiness for /readyz: ready while the served CRL's nextUpdate is ahead."""
        now = self._clock()
        cur = self._current
        if cur is None:
            state = "starting" if self._failures == 0 else "stale"
        elif now >= cur.next_update:
            state = "stale"
        elif self._failures:
            state = "degraded"
        else:
            state = "ok"
        return PublisherHealth(
            ca=self.ca, state=state, ready=cur is not None and now < cur.next_update,
            crl_number=cur.number if cur else None, this_update=cur.this_update if cur else None,
            next_update=cur.next_update if cur else None, last_success_at=self._last_success_at,
            last_failure_at=self._last_failure_at, last_error=self._last_error,
            consecutive_failures=self._failures)

    def notify_changed(self) -> None:
        """A certificate of this CA changed status: re-sign after the coalescing delay (call on the event loop)."""
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self._wake.set()

    def poll_soon(self) -> None:
        """Another process may have recorded a CRL: look at the database now, not at the next poll_interval
        (call on the event loop; the publisher's loop does the lookup)."""
        self._poll_requested = True
        self._wake.set()

    async def wait_newer(self, than: "int | None", timeout: "float | None" = None) -> PublishedCrl:
        """Wait until a CRL with a number above `than` is current (any CRL when `than` is None)."""
        async def _wait() -> PublishedCrl:
            while self._current is None or (than is not None and self._current.number <= than):
                await self._published.wait()
            return self._current

        async with asyncio.timeout(timeout):
            return await _wait()

    # ---- publishing

    async def publish_now(self, progress: "Progress | None" = None, *, only_if_changed: bool = False) -> PublishedCrl:
        """Allocate a number, read the source, build, sign, self-check and record a new CRL (RFC 5280 §5).

        ``only_if_changed``: when the source lists exactly what the CRL signed here last listed, sign nothing
        and return the CRL served (the allocated number is left unused: numbers only need to grow).

        ``progress(stage, done, total)`` (trustkit.progress) follows the steps: "read" (0 then 1), "sign" (0
        then the number of entries, once built, signed and checked) and "record" (0 then 1)."""
        async with self._lock:
            self._dirty_since = None
            return await self._guarded(self._publish_locked(progress, only_if_changed))

    async def publish_changes(self, serials: Collection[int], listed: ListedSource) -> PublishedCrl:
        """Re-sign after the certificates with these serial numbers changed status.

        When the CRL served was signed here, the new one is that CRL with the entries of `serials` replaced by
        what `listed` reads of them now (crl.build.patch_crl): the other entries are neither read nor encoded
        again, and the self-check walks the whole list and checks the count and every changed serial. Otherwise
        (no CRL yet, one adopted from another process, more than PATCH_LIMIT serials) it is a full build, as
        publish_now(only_if_changed=True). Nothing is signed when the CRL served lists these certificates as they
        are now. A certificate that expired meanwhile leaves the CRL at the next full build (the schedule's)."""
        async with self._lock:
            self._dirty_since = None
            if self._current is None or not self._own_base or len(serials) > PATCH_LIMIT:
                return await self._guarded(self._publish_locked(None, True))
            return await self._guarded(self._patch_locked(frozenset(serials), listed))

    async def _guarded(self, work: Awaitable[PublishedCrl]) -> PublishedCrl:
        started = time.monotonic()
        try:
            published = await work
        except Exception as exc:  # noqa: BLE001 - every failure keeps the last good CRL and is reported
            self._failed(exc)
            raise PublishError(f"CRL for {self.ca} not published: {exc}") from exc
        self.last_build_seconds = time.monotonic() - started
        return published

    async def _patch_locked(self, serials: frozenset[int], listed: ListedSource) -> PublishedCrl:
        started = time.monotonic()
        served = self._current
        assert served is not None
        now = utc_seconds(self._clock())
        number, this_update = await self._store.allocate(now, floor=max(self._floor, served.number))
        if number != served.number + 1:
            # another number was taken since the CRL served here (another process's re-sign, which may list a
            # change this one's look missed): the served CRL is no base to patch, the whole source is read
            return await self._publish_locked(None, False, allocated=(number, this_update))
        this_update = utc_seconds(this_update)
        next_update = this_update + self.settings.validity
        rows = [tuple(e) for e in await listed(serials, now) if e[0] in serials]
        published = await self._run(self._build_patch, served, serials, rows, number, this_update, next_update)
        if published is None:
            return served
        return await self._record(published, rows, served, started, fingerprint=None,
                                  reused=published.entries - len(rows))

    async def _publish_locked(self, progress: "Progress | None" = None, only_if_changed: bool = False, *,
                              allocated: "tuple[int, datetime] | None" = None) -> PublishedCrl:
        report(progress, "read", 0, 1)
        started = time.monotonic()
        served = self._current
        now = utc_seconds(self._clock())
        previous = self._current.number if self._current else None
        # the number is taken before the source is read: a CRL that loses to a higher number never hides a
        # change, because the higher number was allocated later and its source read saw at least as much
        number, this_update = allocated or await self._store.allocate(now, floor=max(self._floor, previous or 0))
        this_update = utc_seconds(this_update)
        next_update = this_update + self.settings.validity
        rows = await self.source(now)
        entries = rows if isinstance(rows, list) and (not rows or type(rows[0]) is tuple) else [tuple(r) for r in rows]
        fingerprint = entries_fingerprint(entries)
        if only_if_changed and served is not None and fingerprint == self._fingerprint:
            report(progress, "read", 1, 1)
            return served
        report(progress, "read", 1, 1)
        report(progress, "sign", 0, len(entries))
        published = await self._run(self._build, number, this_update, next_update, entries, previous)
        report(progress, "sign", len(entries), len(entries))
        return await self._record(published, entries, served, started, fingerprint=fingerprint,
                                  reused=self._encoder.last_reused, progress=progress)

    async def _record(self, published: PublishedCrl, entries: Sequence[Entry], served: "PublishedCrl | None",
                      started: float, *, fingerprint: "tuple[int, int] | None", reused: int,
                      progress: "Progress | None" = None) -> PublishedCrl:
        """Record a CRL signed here and serve it, unless a higher number was recorded meanwhile (adopted then)."""
        number, this_update, next_update = published.number, published.this_update, published.next_update
        report(progress, "record", 0, 1)
        saved = await self._store.save(number=number, this_update=this_update, next_update=next_update,
                                       der=published.der, sha256=published.sha256, entries=published.entries,
                                       published_at=self._clock(), published_by=self.instance_id)
        report(progress, "record", 1, 1)
        if not saved:
            self._log.info("crl.publish.superseded", ca=self.ca, number=number)
            await self.refresh_from_store()
            self._succeeded()
            return self._current or published
        if saved.shares_second:
            published = replace(published, shares_second=True)
        self._install(published)
        self._fingerprint = fingerprint
        self._own_base = True
        self._succeeded()
        if self._on_signed is not None:
            try:
                self._on_signed(published, entries, served, time.monotonic() - started, self._clock())
            except Exception as exc:  # noqa: BLE001 - an observer never fails a publication
                self._log.warning("crl.signed_hook.failed", ca=self.ca, number=number,
                                  error=f"{type(exc).__name__}: {exc}")
        self._log.info("crl.published", ca=self.ca, number=number, entries=published.entries,
                       bytes=len(published.der), this_update=this_update.isoformat(),
                       next_update=next_update.isoformat(), reused_entries=reused)
        if self._on_recorded is not None:
            try:
                await self._on_recorded(published)
            except Exception as exc:  # noqa: BLE001 - the CRL is recorded; the others find it at their next poll
                self._log.warning("crl.recorded_hook.failed", ca=self.ca, number=number,
                                  error=f"{type(exc).__name__}: {exc}")
        return published

    def _build(self, number: int, this_update: datetime, next_update: datetime, entries: list[Entry],
               previous: "int | None") -> PublishedCrl:
        """Worker-thread part: encode, sign once, self-check (profile, signature, entries vs source)."""
        try:
            der = build_crl(issuer=self.issuer, signer=self.signer, number=number, this_update=this_update,
                            next_update=next_update, entries=entries, scope=self.scope, encoder=self._encoder)
            check_crl(der, issuer=self.issuer, number=number, this_update=this_update, next_update=next_update,
                      entries=entries, previous_number=previous, scope=self.scope)
        except Exception:
            self._encoder.clear()
            raise
        return _published_from(self.ca, der, number, this_update, next_update, len(entries))

    def _build_patch(self, served: PublishedCrl, serials: frozenset[int], rows: list[Entry], number: int,
                     this_update: datetime, next_update: datetime) -> "PublishedCrl | None":
        """Worker-thread part of publish_changes: locate the changed serials' entries in the CRL served, and
        unless they already read as `rows` say, splice, sign once and self-check; None when nothing changed."""
        base = parse_crl(served.der)
        spans = locate_entries(served.der, base.entries_start, base.entries_end, serials)
        now_listed = {e[0]: e for e in rows}
        if spans.keys() == now_listed.keys():
            encoded = EntryEncoder(cache=False).encode(list(now_listed.values()))
            if all(served.der[slice(*spans[s])] == d for s, d in zip(now_listed, encoded)):
                return None
        count = served.entries - len(spans) + len(now_listed)
        der = patch_crl(base=served.der, entries_start=base.entries_start, entries_end=base.entries_end,
                        drop=spans.values(), add=list(now_listed.values()), issuer=self.issuer, signer=self.signer,
                        number=number, this_update=this_update, next_update=next_update, scope=self.scope)
        check_crl(der, issuer=self.issuer, number=number, this_update=this_update, next_update=next_update,
                  entries=Patched(count, {s: now_listed.get(s) for s in serials}), previous_number=served.number,
                  scope=self.scope)
        return _published_from(self.ca, der, number, this_update, next_update, count)

    async def refresh_from_store(self) -> bool:
        """Adopt the newest CRL in the database if it is newer than ours (another process published it)."""
        stored = await self._store.load()
        if stored is None or (self._current is not None and stored.number <= self._current.number):
            return False
        try:
            published = await self._run(self._verify_stored, stored)
        except (CrlFormatError, UnsupportedAlgorithm, ValueError) as exc:
            self._log.error("crl.adopt.rejected", ca=self.ca, number=stored.number, error=str(exc))
            return False
        if self._current is not None and published.number <= self._current.number:
            return False
        self._install(published)
        self._fingerprint = None
        self._own_base = False
        self._log.info("crl.adopted", ca=self.ca, number=published.number, published_by=stored.published_by)
        return True

    def _verify_stored(self, stored) -> PublishedCrl:
        crl = parse_crl(stored.der)
        if crl.crl_number != stored.number or crl.issuer != self.issuer.name:
            raise ValueError("stored CRL does not match its row")
        if not verify_signature(self.issuer.public_key, crl.signature_algorithm, crl.tbs, crl.signature):
            raise ValueError("stored CRL signature does not verify")
        return _published_from(self.ca, stored.der, stored.number, crl.this_update, crl.next_update or
                               stored.next_update, stored.entries, stored.shares_second)

    def _install(self, published: PublishedCrl) -> None:
        self._current = published
        event, self._published = self._published, asyncio.Event()
        event.set()

    def _succeeded(self) -> None:
        self._last_success_at = self._clock()
        self._failures = 0
        self._last_error = None
        self._last_failure_mono = None

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        # the changes this attempt was to list may be out of the next look's reach: the next re-sign reads all
        self._own_base = False
        self._last_failure_at = self._clock()
        self._last_failure_mono = time.monotonic()
        self._last_error = f"{type(exc).__name__}: {exc}"
        cur = self._current
        self._log.error("crl.publish.failed", ca=self.ca, error=self._last_error, failures=self._failures,
                        serving=cur.number if cur else None,
                        serving_next_update=cur.next_update.isoformat() if cur else None,
                        problems=getattr(exc, "problems", None) if isinstance(exc, SelfCheckError) else None)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- the schedule

    async def start(self) -> None:
        """Load the last published CRL and start the re-sign / poll loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"crl-publisher-{self.ca}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> "Publisher":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _seconds_until_resign(self) -> float:
        """Scheduled re-sign: every resign_interval, and never later than half-way to nextUpdate; at once after a
        failed one (the loops hold it back until retry_interval has passed), which may have been for a change."""
        cur = self._current
        if cur is None or self._failures:
            return 0.0
        due = min(cur.this_update + self.settings.resign_interval,
                  cur.this_update + (cur.next_update - cur.this_update) / 2)
        return (due - self._clock()).total_seconds()

    def _seconds_until_work(self) -> float:
        """Seconds until the next re-sign is due (scheduled, or changes after the coalescing delay)."""
        wait = self._seconds_until_resign()
        if self._dirty_since is not None:
            wait = min(wait, self._dirty_since + self.settings.coalesce_delay.total_seconds() - time.monotonic())
        if self._last_failure_mono is not None:  # back off after a failure, whatever is due
            wait = max(wait, self._last_failure_mono + self.settings.retry_interval.total_seconds() - time.monotonic())
        return wait

    async def _loop(self) -> None:
        poll = self.settings.poll_interval.total_seconds()
        next_poll = time.monotonic()
        while True:
            try:
                if self._poll_requested or time.monotonic() >= next_poll:
                    self._poll_requested = False
                    next_poll = time.monotonic() + poll
                    await self._poll()
                if self._seconds_until_work() <= 0:
                    try:
                        await self.publish_now()
                    except PublishError:
                        pass  # logged, reflected in health(); retried after retry_interval
                    continue
                await idle(self._wake, min(self._seconds_until_work(), next_poll - time.monotonic()),
                           skip=self._poll_requested)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a database hiccup
                self._log.error("crl.publisher.loop_error", ca=self.ca, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(min(poll, self.settings.retry_interval.total_seconds()))
            self._warn_if_stale()

    async def _poll(self) -> None:
        """Cheap check for a CRL another process published; loads it only when the number moved."""
        number = await self._store.published_number()
        if number is not None and (self._current is None or number > self._current.number):
            await self.refresh_from_store()

    def _warn_if_stale(self) -> None:
        cur = self._current
        if cur is not None and self._clock() >= cur.next_update:
            self._log.error("crl.stale", ca=self.ca, number=cur.number, next_update=cur.next_update.isoformat())

