"""The CRL publishers of our issuing CAs, wired to the inventory, the CA keys and the revocation service.

How every process of a deployment serves the same CRL (RFC 5280 §5.2.3: one number sequence per CA):
- a CRL Number is allocated atomically in the shared database (`crl.store.CrlStateStore`), and a CRL is
  recorded there only if no higher number was recorded first, so numbers never go backwards;
- the process where a status change happens re-signs after the coalescing delay; every other process looks
  at the recorded CRL Number (the change marker) and adopts a newer CRL after verifying its signature. It
  looks as soon as it learns of a change (`crlwiring.changes`: PostgreSQL LISTEN/NOTIFY, SQLite's
  data_version), and every `crl.poll_interval` as the safety net, so a change made anywhere is served
  everywhere well within a second of the CRL that carries it being recorded;
- a process that changed a status and ends before its publisher ran (a CLI command) publishes on the way out;
- as a safety net, each server process also watches the newest status-change event in the audit log: a change
  newer than the served CRL that no process has published after a grace period makes it re-sign.
"""
from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable

import sqlalchemy as sa
import structlog
from cryptography.hazmat.primitives import hashes

from crl.build import Issuer
from crl.parse import locate_entries, parse_crl
from crl.partitions import PartitionSet, partition_count, record_partitioning, recorded_partitioning
from crl.publish import PublishedCrl, Publisher, PublishError
from crl.signing import CrlSigner, algorithm_for_public_key

from trustkit.clock import aware
from trustkit.problems import ServiceUnavailable

from .. import metrics
from ..ca import inventory
from ..ca.authority import CertificateAuthority, cdp_url, partition_cdp_url
from ..ca.status import LISTED
from ..ca.tbs import digest_for
from ..store.events import STATUS_EVENTS, announce
from ..store.tables import certificates, events

if TYPE_CHECKING:
    from ..runtime import Runtime

log = structlog.get_logger("crl.service")

# seconds past the coalescing delay before an instance signs a change it did not make and nobody published,
# and the most each instance adds to that at random
STEP_IN_MARGIN = 0.4
# a status change's time is taken in its transaction, before it commits: a CRL begun this soon after it may have
# read its entries before the commit (the safety net then looks at the CRL itself)
COMMIT_SLACK = timedelta(seconds=60)
SHOWN_CHANGES = 1_000  # the changes of that minute looked for on a CRL, newest first
STEP_IN_SPREAD = 0.3


def is_command_line(actor: str | None) -> bool:
    """Whether a change was made by `scep-server` on the command line (actor ``cli`` or ``cli:<user>``), a
    process that signs no CRL."""
    return actor is not None and (actor == "cli" or actor.startswith("cli:"))

_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


class CrlNotReady(ServiceUnavailable):
    """SCEP GetCRL for a CA whose CRL this process cannot give yet (HTTP 503, try again)."""

    code = "crl_not_ready"


class CrlError(Exception):
    """A CRL operation the caller asked for is impossible (unknown CA, nothing published yet)."""


def key_ops_signer(ca: CertificateAuthority, hash_name: str | None = None) -> CrlSigner:
    """Sign TBSCertList bytes through the CA's KeyOps (a file or HSM key): sha256WithRSAEncryption for an RSA
    key, ecdsa-with-SHA256 / SHA384 for a P-256 / P-384 key (the hash the CA signs its certificates with)."""
    hash_name = hash_name or digest_for(ca.key.public_key()).name
    algorithm = algorithm_for_public_key(ca.key.public_key(), hash_name)
    digest = _HASHES[hash_name]
    key = ca.key

    def sign(tbs: bytes) -> bytes:
        return key.sign(tbs, digest())

    return CrlSigner(algorithm, sign)


def inventory_source(runtime: Runtime, ca_name: str):
    """The publisher's entry source: held and revoked, unexpired certificates of one CA."""
    engine = runtime.engine

    async def source(now: datetime):
        async with engine.connect() as conn:
            return await inventory.revoked_entries(conn, ca_name, now=now)

    return source


def partition_sources(runtime: Runtime, ca_name: str):
    """A partition set's sources: a partition's entries, the certificates of partitions changed lately, and the
    entries of given certificates."""
    engine = runtime.engine

    async def source(partition: int, now: datetime):
        async with engine.connect() as conn:
            return await inventory.revoked_entries(conn, ca_name, now=now, partition=partition)

    async def changed(since: datetime):
        async with engine.connect() as conn:
            return await inventory.partition_changes(conn, ca_name, since=since)

    async def listed(serials, now: datetime):
        async with engine.connect() as conn:
            return await inventory.listed_entries(conn, ca_name, serials, now=now)

    return source, changed, listed


class CrlService:
    """One Publisher per issuing CA, plus what the application needs around them."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.crl
        self.publishers: dict[str, Publisher] = {name: self._publisher(name, ca) for name, ca in runtime.cas.items()}
        # the partition CRLs of the CAs that have a recorded partition count (crl.partitions), and the mapping
        # the endpoint serves them from (CA -> partition -> publisher): both grow when another instance records
        # a CA's count after this one started (refresh_partitioning)
        self.partitions: dict[str, PartitionSet] = {}
        self.partition_publishers: dict[str, dict[int, Publisher]] = {}
        for name, count in runtime.crl_partitions.items():
            self._add_partitions(name, count)
        # CA name -> CRL Number served when a change was announced here (None: no CRL yet)
        self._pending: dict[str, int | None] = {}
        # CAs with a status change made here: their partition sets look for unsigned changes on the way out (flush)
        self._changed_here: set[str] = set()
        self._shown: dict[tuple[str, int, datetime], bool] = {}  # (ca, CRL number, change): whether it shows it
        self._marker_seen: datetime | None = None
        # when the safety net should look again because another process announced a change (monotonic time)
        self.check_due: float | None = None
        # a spread over the instances of one database, so that one of them signs a change nobody published
        # (a command-line process signs nothing) and the others adopt its CRL instead of signing too
        self._spread = random.uniform(0.0, STEP_IN_SPREAD)
        self.watch_wake = asyncio.Event()
        self.running = False
        # also told of every change the feed reports (the OCSP responder's cache), with the same payloads
        self.remote_listeners: list[Callable[[str], None]] = []
        runtime.revocation.subscribe(self.on_status_change)

    def _publisher(self, name: str, ca) -> Publisher:
        return Publisher(name, issuer=Issuer.from_certificate(ca.cert), signer=key_ops_signer(ca),
                         source=inventory_source(self.runtime, name), engine=self.runtime.engine,
                         settings=self.settings, clock=self.runtime.clock, on_recorded=self._announce_recorded,
                         on_signed=metrics.crl_signed)

    def _add_partitions(self, name: str, count: int) -> PartitionSet:
        base = self.runtime.settings.server.public_base_url()
        source, changed, listed = partition_sources(self.runtime, name)
        parts = self.partitions[name] = PartitionSet(
            name, count, url_for=lambda p, _name=name: partition_cdp_url(base, _name, p),
            issuer=self.publishers[name].issuer, signer=self.publishers[name].signer, source=source,
            changed=changed, listed=listed, engine=self.runtime.engine, settings=self.settings,
            clock=self.runtime.clock, on_recorded=self._announce_recorded)
        self.partition_publishers[name] = parts.publishers
        self.runtime.crl_partitions[name] = count
        return parts

    async def refresh_partitioning(self) -> list[str]:
        """Publish the partition CRLs of the CAs whose partition count was recorded after this process started
        (another instance started with ``crl.partitioning`` on: its certificates name them), running if the
        others run; the CAs whose partitions were added. One query, and only while a CA has none."""
        if not any(name not in self.partitions for name in self.publishers):
            return []
        recorded = await recorded_partitioning(self.runtime.engine)
        added = []
        for name, count in recorded.items():
            if name in self.partitions or name not in self.publishers:  # added meanwhile; not our CA
                continue
            parts = self._add_partitions(name, count)
            if self.running:
                await parts.start()
            added.append(name)
        return added

    async def add_ca(self, name: str) -> None:
        """A CA loaded after the start (scep_server.ca.lifecycle.pick_up_cas): its publisher, and its partition
        CRLs when it has a recorded partition count (recorded now with ``crl.partitioning`` on, as at the
        start), running if the others run (the endpoint serves from the same mappings)."""
        if name in self.publishers:
            return
        ca = self.runtime.cas[name]
        pub = self.publishers[name] = self._publisher(name, ca)
        if self.running:
            await pub.start()
        try:
            if self.settings.partitioning:
                count = partition_count(self.settings.partition_expected_certificates,
                                        self.settings.partition_target_size)
                ca.crl_partitions = await record_partitioning(self.runtime.engine, name, count, self.runtime.clock())
            await self.refresh_partitioning()
        except Exception as exc:  # noqa: BLE001 - the change watcher's next poll adds the partitions
            log.error("crl.partitions.loop_error", ca=name, error=f"{type(exc).__name__}: {exc}")

    # ---- status changes and the schedule

    def on_status_change(self, ca: str) -> None:
        """A certificate of `ca` changed status in this process: re-sign soon (coalesced)."""
        pub = self.publishers.get(ca)
        if pub is None:
            return
        if ca not in self._pending:
            self._pending[ca] = pub.current.number if pub.current else None
        self._changed_here.add(ca)
        pub.notify_changed()
        parts = self.partitions.get(ca)
        if parts is not None:
            parts.notify_changed()

    async def _announce_recorded(self, published: PublishedCrl) -> None:
        """Tell the other processes that a CRL was recorded (PostgreSQL; SQLite's listeners see the commit)."""
        if self.runtime.engine.dialect.name != "postgresql":
            return
        async with self.runtime.engine.begin() as conn:
            await announce(conn, f"crl:{published.ca}")

    def on_remote_change(self, payload: str) -> None:
        """Another process (or connection) changed something (see crlwiring.changes): ``crl:<ca>`` a CRL was
        recorded; ``status`` a certificate status changed; ``any`` something was committed; ``resync``
        notifications may have been missed. Publishers look at the database now; after a status change the
        safety net looks again once the grace period has passed. The `remote_listeners` hear the same payload."""
        for listener in self.remote_listeners:
            listener(payload)
        if payload.startswith("crl:"):
            name = payload[4:]
            pub = self.publishers.get(name)
            if pub is not None:
                pub.poll_soon()
            elif "/" in name:  # a partition CRL: <ca>/<partition>
                parts = self.partitions.get(name.split("/", 1)[0])
                if parts is not None:
                    parts.poll_soon()
            return
        if payload != "status":
            for pub in self.publishers.values():
                pub.poll_soon()
            for parts in self.partitions.values():
                parts.poll_soon()
        # a quick look: a change made by a command-line process is signed at once; the safety net looks again
        # when the grace of a change made by a server has passed (check_marker)
        self._look_again_in(self.grace(from_command_line=True).total_seconds())

    def _look_again_in(self, seconds: float) -> None:
        """Have the safety net look in `seconds` (or sooner, if it already will)."""
        due = time.monotonic() + seconds
        if self.check_due is None or due < self.check_due:
            self.check_due = due
            self.watch_wake.set()

    async def start_publishing(self) -> None:
        """Run each publisher's loop: adopt the recorded CRL (or sign the first one), re-sign on schedule."""
        for pub in self.publishers.values():
            await pub.start()
        for parts in self.partitions.values():
            await parts.start()
        self.running = True

    async def stop_publishing(self) -> None:
        self.running = False
        for pub in self.publishers.values():
            await pub.stop()
        for parts in self.partitions.values():
            await parts.stop()

    async def flush(self) -> list[PublishedCrl]:
        """Publish now for every CA whose status changed here and has no CRL signed since, and its partitions whose
        changes are not signed yet (before exiting)."""
        for ca in sorted(self._changed_here):
            parts = self.partitions.get(ca)
            if parts is not None:  # the partition a certificate's CDP names: nobody else signs it (the full CRL
                try:  # shows the change); a change already signed here is not signed again
                    await parts.publish_changed()
                except Exception as exc:  # noqa: BLE001 - a partition re-sign failing is logged (crl.publish.failed)
                    log.error("crl.flush.failed", ca=ca, error=f"{type(exc).__name__}: {exc}")
        self.forget_published()
        done = []
        for ca in list(self._pending):
            try:
                done.append(await self.publishers[ca].publish_now())
            except PublishError as exc:  # the server processes' safety net re-signs after the grace period
                log.error("crl.flush.failed", ca=ca, error=str(exc))
                continue
            self._pending.pop(ca, None)
        return done

    def forget_published(self) -> None:
        """Drop pending marks whose CA has published since the change (called from the server's watcher)."""
        for ca, number_then in list(self._pending.items()):
            cur = self.publishers[ca].current
            if cur is not None and (number_then is None or cur.number > number_then):
                del self._pending[ca]

    # ---- the safety net

    async def newest_status_change(self) -> datetime | None:
        """The time of the newest status-change event in the audit log (one index lookup per kind)."""
        c = events.c
        cols = [sa.select(sa.func.max(c.at)).where(c.kind == kind).scalar_subquery() for kind in STATUS_EVENTS]
        async with self.runtime.engine.connect() as conn:
            row = (await conn.execute(sa.select(*cols))).one()
        found = [aware(v) for v in row if v is not None]
        return max(found) if found else None

    async def _shows(self, ca: str, crl: PublishedCrl, marker: datetime) -> bool:
        """Whether `crl` is known to hold the status change recorded at `marker`, the newest.

        A CRL begun at least COMMIT_SLACK after the change does. One begun sooner may have read its entries
        before the change committed (its time is taken before its UPDATE, which may wait on a lock; PostgreSQL
        does not make the CRL's read wait for it): then the CRL must list as they are now the certificates of
        every change in the COMMIT_SLACK before it, not only the newest (an older one may commit last)."""
        if marker >= crl.this_update:
            return False
        if crl.this_update - marker >= COMMIT_SLACK:
            return True
        key = (ca, crl.number, marker)
        known = self._shown.get(key)
        if known is None:
            known = await self._lists_as_now(ca, crl, marker)
            if len(self._shown) > 64:
                self._shown.clear()
            self._shown[key] = known
        return known

    async def _lists_as_now(self, ca: str, crl: PublishedCrl, marker: datetime) -> bool:
        """Whether `crl` lists as they are now the certificates of the changes recorded in the COMMIT_SLACK before
        it (the newest SHOWN_CHANGES): held or revoked and unexpired when it was begun, or else not listed."""
        c, cert = events.c, certificates.c
        since = crl.this_update - COMMIT_SLACK
        async with self.runtime.engine.connect() as conn:
            serials = set((await conn.execute(
                sa.select(c.subject).where(c.kind.in_(STATUS_EVENTS), c.at > since, c.at <= marker)
                .order_by(c.at.desc()).limit(SHOWN_CHANGES))).scalars())
            serials.discard(None)
            rows = (await conn.execute(sa.select(cert.serial, cert.status, cert.not_after).where(
                cert.serial.in_(sorted(serials)), cert.ca == ca))).all() if serials else []
        if not rows:
            return True  # not a certificate of this CA
        base = parse_crl(crl.der)
        listed_statuses = {s.value for s in LISTED}
        expected = {int(r.serial, 16): r.status in listed_statuses and aware(r.not_after) > crl.this_update
                    for r in rows}
        listed = locate_entries(crl.der, base.entries_start, base.entries_end, expected)
        return all((n in listed) == on_crl for n, on_crl in expected.items())

    async def _actor_of(self, marker: datetime) -> str | None:
        """Who made the status change recorded at `marker` (the newest one)."""
        c = events.c
        async with self.runtime.engine.connect() as conn:
            return (await conn.execute(sa.select(c.actor).where(c.kind.in_(STATUS_EVENTS), c.at == marker)
                                       .limit(1))).scalar_one_or_none()

    def grace(self, *, from_command_line: bool = False) -> timedelta:
        """How long the process that made a change has to publish it before the others step in.

        A server publishes its own changes after its coalescing delay: its grace is that delay and a margin for
        signing and recording. A command-line process signs no CRL: its changes are signed by the first instance
        whose spread ends. Either way the others adopt that CRL when it is announced, and if two sign, the higher
        number wins everywhere."""
        if from_command_line:
            return timedelta(seconds=0.05 + self._spread)
        return self.settings.coalesce_delay + timedelta(seconds=STEP_IN_MARGIN + self._spread)

    async def check_marker(self) -> list[str]:
        """Re-sign where a status change is newer than the served CRL and nobody published it in time."""
        self.forget_published()
        marker = await self.newest_status_change()
        if marker is None:
            return []
        now = self.runtime.clock()
        woken = []
        from_command_line: bool | None = None  # read once, when a CA's CRL is older than the change
        for ca, pub in self.publishers.items():
            cur = pub.current
            if cur is None or await self._shows(ca, cur, marker):
                continue
            if from_command_line is None:
                from_command_line = is_command_line(await self._actor_of(marker))
            grace = self.grace(from_command_line=from_command_line)
            if now - marker < grace:  # the process that made it may still publish: look again then
                self._look_again_in((grace - (now - marker)).total_seconds() + 0.05)
                continue
            if ca in self._pending:
                continue  # already announced here, the publisher is on it
            if await pub.refresh_from_store() and await self._shows(ca, pub.current, marker):
                continue  # another instance has recorded a CRL with the change: adopted, not signed again
            woken.append(ca)
            if from_command_line:
                parts = self.partitions.get(ca)
                if parts is not None:  # the partition CRL the certificate's CDP names looks for the change too
                    parts.notify_changed()
                try:  # nobody else will: sign now (the change is already past any coalescing)
                    await pub.publish_now()
                except PublishError as exc:  # the publisher's own loop retries on its schedule
                    log.error("crl.step_in.failed", ca=ca, error=str(exc))
                    self.on_status_change(ca)
                continue
            if marker != self._marker_seen:
                log.warning("crl.change_not_published", ca=ca, change_at=marker.isoformat(), serving=cur.number,
                            this_update=cur.this_update.isoformat())
            self.on_status_change(ca)
        self._marker_seen = marker
        return woken

    # ---- what the rest of the application reads

    def publisher(self, ca: str | None) -> Publisher:
        if ca is None:
            if len(self.publishers) != 1:
                raise CrlError(f"several CAs publish CRLs here ({', '.join(self.publishers)}): name one")
            return next(iter(self.publishers.values()))
        try:
            return self.publishers[ca]
        except KeyError:
            raise CrlError(f"no CA named {ca!r} (known: {', '.join(self.publishers) or 'none'})") from None

    async def current(self, ca: str) -> PublishedCrl:
        """The CRL served for `ca`: the newest one in memory or in the database, signing one if none exists."""
        pub = self.publisher(ca)
        await pub.refresh_from_store()
        if pub.current is None:
            return await pub.publish_now()
        return pub.current

    async def status(self, ca: str) -> dict:
        """The state of `ca`'s CRL for administrators (`GET /api/v1/cas`, `ca list`): the CRL served, after a
        look at the database (a CRL another process recorded is adopted), and the outcome of this process's
        re-signs (`Publisher.health`). CrlError for an unknown CA."""
        pub = self.publisher(ca)
        await pub.refresh_from_store()
        h = pub.health()
        cur = pub.current

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {"state": h.state, "number": h.crl_number, "this_update": iso(h.this_update),
                "next_update": iso(h.next_update), "entries": cur.entries if cur else None,
                "sha256": cur.sha256 if cur else None, "url": cdp_url(self.runtime.settings.server.public_base_url(), ca),
                "last_success_at": iso(h.last_success_at), "last_failure_at": iso(h.last_failure_at),
                "last_error": h.last_error, "consecutive_failures": h.consecutive_failures,
                **self._partition_status(ca)}

    def _partition_status(self, ca: str) -> dict:
        parts = self.partitions.get(ca)
        if parts is None:
            return {}
        states = [h.state for h in parts.health()]
        return {"partitions": {"count": parts.count, "ok": states.count("ok"),
                               "url": partition_cdp_url(self.runtime.settings.server.public_base_url(), ca, 0)
                               .removesuffix("/0.crl") + "/{partition}.crl"}}

    async def publish(self, ca: str) -> PublishedCrl:
        """Sign and record a new CRL of `ca` now (an administrator's request); CrlError for an unknown CA,
        PublishError when signing or recording fails (the previous CRL is still served)."""
        pub = self.publisher(ca)
        await pub.refresh_from_store()  # number after the newest recorded anywhere
        return await pub.publish_now()

    async def crl_source(self, ca: str) -> bytes:
        """SCEP GetCRL (RFC 8894 §3.3.4): the same DER bytes as /crl/{ca}.crl. CrlNotReady (try again) while this
        process has none to give: a CA just picked up (a rollover activated elsewhere) whose publisher is not made
        yet, or a first CRL that could not be signed."""
        pub = self.publishers.get(ca)
        if pub is None:
            raise CrlNotReady(f"the CRL of CA {ca!r} is not published by this process yet; try again")
        cur = pub.current
        if cur is None:
            try:
                cur = await self.current(ca)
            except PublishError:  # logged by the publisher
                raise CrlNotReady(f"the CRL of CA {ca!r} could not be signed; try again") from None
        return cur.der

    def readiness(self) -> str:
        """For /readyz: "ok" while every CA serves a fresh CRL and its last re-sign succeeded."""
        problems = []
        for ca, pub in self.publishers.items():
            h = pub.health()
            if h.state == "ok":
                continue
            if h.state == "starting":
                problems.append(f"{ca}: no CRL yet")
            elif h.state == "degraded":
                problems.append(f"{ca}: re-sign failing ({h.consecutive_failures}x: {h.last_error}); serving CRL "
                                f"#{h.crl_number} until {h.next_update:%Y-%m-%dT%H:%M:%SZ}")
            else:
                what = f"CRL #{h.crl_number} expired at {h.next_update:%Y-%m-%dT%H:%M:%SZ}" if h.crl_number \
                    else "no CRL"
                problems.append(f"{ca}: stale ({what}; last error: {h.last_error})")
        for ca, parts in self.partitions.items():
            stale = [h for h in parts.health() if not h.ready]
            if stale:
                problems.append(f"{ca}: {len(stale)} of {parts.count} CRL partitions without a fresh CRL "
                                f"(partition {stale[0].ca}: {stale[0].state})")
        return "ok" if not problems else "error: " + "; ".join(problems)


def describe(crl: PublishedCrl) -> dict:
    return {"ca": crl.ca, "number": crl.number, "this_update": crl.this_update.isoformat(),
            "next_update": crl.next_update.isoformat(), "entries": crl.entries, "bytes": len(crl.der),
            "sha256": crl.sha256}

