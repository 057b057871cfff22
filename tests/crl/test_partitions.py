"""Partition sets on SQLite and PostgreSQL: numbering per partition, re-signing only what changed, two processes."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509

from crl.config import CrlSettings
from crl.partitions import (PartitionSet, partition_count, partition_of, record_partitioning,
                            recorded_partitioning)
from crl.store import CrlStateStore
from trustkit.db import create_engine

UTC = timezone.utc
COUNT = 4


class PartitionedSource:
    """Revoked serials of one CA in memory, split by serial mod COUNT; `changed` answers the partitions touched."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple] = {}
        self.changes: list[tuple] = []  # (partition, serial, updated_at, status)
        self.reads: list[int] = []
        self.listed_reads: list[list[int]] = []
        self.fail_listed = False

    def revoke(self, serial: int, at: datetime, reason=None, invalidity=None) -> None:
        self.rows[serial] = (at, reason, invalidity)
        self.touch(serial, at, "revoked")

    def release(self, serial: int, at: datetime) -> None:
        del self.rows[serial]
        self.touch(serial, at, "valid")

    def touch(self, serial: int, at: datetime, status: str = "valid") -> None:
        self.changes.append((partition_of(serial, COUNT), serial, at, status))

    async def source(self, partition: int, now: datetime):
        self.reads.append(partition)
        return [(s, at, r, inv) for s, (at, r, inv) in self.rows.items() if partition_of(s, COUNT) == partition]

    async def changed(self, since: datetime):
        return [c for c in self.changes if c[2] >= since]

    async def listed(self, serials, now: datetime):
        if self.fail_listed:
            raise ConnectionError("database unreachable")
        self.listed_reads.append(sorted(serials))
        return [(s, at, r, inv) for s, (at, r, inv) in self.rows.items() if s in serials]


def url(p: int) -> str:
    return f"http://127.0.0.1/crl/default/{p}.crl"


def make_set(engine, issuer, signer, src: PartitionedSource, clock, **kw) -> PartitionSet:
    return PartitionSet("default", COUNT, url_for=url, issuer=issuer, signer=signer, source=src.source,
                        changed=src.changed, engine=engine,
                        settings=kw.pop("settings", CrlSettings(coalesce_delay=timedelta(0), poll_interval=0.05)),
                        clock=clock, **kw)


def serials(der: bytes) -> set[int]:
    return {r.serial_number for r in x509.load_der_x509_crl(der)}


def test_partition_count_and_partition_of():
    assert partition_count(1_000_000, 100_000) == 10
    assert partition_count(1_000_001, 100_000) == 11
    assert partition_count(5, 100_000) == 1
    assert partition_count(10**12, 100) == 10_000  # capped
    assert {partition_of(s, 7) for s in range(70)} == set(range(7))


async def test_recorded_count_is_the_first_one(engine, clock):
    assert await record_partitioning(engine, "default", 8, clock.now) == 8
    assert await record_partitioning(engine, "default", 3, clock.now) == 8  # a later setting changes nothing
    assert await record_partitioning(engine, "other", 2, clock.now) == 2
    assert await recorded_partitioning(engine) == {"default": 8, "other": 2}


async def test_each_partition_has_its_scope_and_number_sequence(engine, issuer, signer, clock, rsa_ca):
    src = PartitionedSource()
    src.revoke(0x100, clock.now - timedelta(hours=1), 1)  # partition 0
    src.revoke(0x101, clock.now - timedelta(hours=1))  # partition 1
    parts = make_set(engine, issuer, signer, src, clock)
    assert sorted(await parts.publish_due()) == [0, 1, 2, 3]
    for p, pub in parts.publishers.items():
        crl = x509.load_der_x509_crl(pub.current.der)
        assert crl.is_signature_valid(rsa_ca.cert.public_key())
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical and [n.value for n in idp.value.full_name] == [url(p)]
        assert idp.value.only_contains_user_certs
        assert pub.current.number == 1  # a sequence per partition
        assert (await CrlStateStore(engine, f"default/{p}").load()).number == 1
    assert serials(parts.publishers[0].current.der) == {0x100}
    assert serials(parts.publishers[1].current.der) == {0x101}
    assert serials(parts.publishers[2].current.der) == set()
    assert await parts.publish_due() == []  # nothing due until the schedule says so


async def test_a_change_resigns_only_the_partitions_whose_entries_changed(engine, issuer, signer, clock):
    src = PartitionedSource()
    parts = make_set(engine, issuer, signer, src, clock)
    await parts.publish_due()
    numbers = {p: pub.current.number for p, pub in parts.publishers.items()}
    clock.advance(10)
    src.revoke(0x202, clock.now)  # partition 2
    src.reads.clear()
    assert await parts.publish_changed() == [2]
    assert src.reads == [2]  # only the changed partition was read
    assert serials(parts.publishers[2].current.der) == {0x202}
    assert parts.publishers[2].current.number == numbers[2] + 1
    assert all(parts.publishers[p].current.number == numbers[p] for p in (0, 1, 3))
    # found again by the look-back: a change already looked at is not read again
    current = parts.publishers[2].current
    src.reads.clear()
    assert await parts.publish_changed() == []
    assert parts.publishers[2].current is current and src.reads == []
    # a change committed late (its time before the last look) is still found, and its partition re-signed
    src.revoke(0x206, clock.now - timedelta(seconds=30))
    assert await parts.publish_changed() == [2]
    assert serials(parts.publishers[2].current.der) == {0x202, 0x206}
    # a partition whose certificate changed without changing its entries (issued, renewed) is read, not re-signed
    src.touch(0x303, clock.now)
    src.reads.clear()
    assert await parts.publish_changed() == []
    assert src.reads == [3] and parts.publishers[3].current.number == numbers[3]
    assert parts.resigned_after_change == 2


async def test_the_loop_publishes_a_change_after_the_coalescing_delay(engine, issuer, signer, clock):
    src = PartitionedSource()
    parts = make_set(engine, issuer, signer, src, clock)
    await parts.start()
    try:
        for pub in parts.publishers.values():
            await pub.wait_newer(None, timeout=10)
        before = parts.publishers[1].current.number
        src.revoke(0x301, clock.now)
        parts.notify_changed()
        crl = await parts.publishers[1].wait_newer(before, timeout=10)
        assert serials(crl.der) == {0x301}
    finally:
        await parts.stop()


async def test_two_processes_share_the_partition_crls(engine, db_url, issuer, signer, clock):
    src = PartitionedSource()
    other_engine = create_engine(db_url)  # a second connection pool, as a second process would have
    try:
        a = make_set(engine, issuer, signer, src, clock)
        b = make_set(other_engine, issuer, signer, src, clock)
        await a.publish_due()
        assert await b.poll() == COUNT  # b adopts a's CRLs instead of signing its own
        assert all(b.publishers[p].current.der == a.publishers[p].current.der for p in range(COUNT))
        assert await b.publish_due() == []

        # both sign the same change at once: numbers never repeat, the highest is served by both
        src.revoke(0x400, clock.now)
        clock.advance(5)
        await asyncio.gather(a.publish_changed(), b.publish_changed())
        await a.poll()
        await b.poll()
        na, nb = a.publishers[0].current, b.publishers[0].current
        assert na.number == nb.number and na.der == nb.der and serials(na.der) == {0x400}
        assert (await CrlStateStore(engine, "default/0").load()).number == na.number

        # a change published by a is adopted by b's loop through its poll
        await b.start()
        try:
            src.revoke(0x403, clock.now)
            clock.advance(5)
            before = b.publishers[3].current.number
            await a.publish_changed()
            b.poll_soon()
            crl = await b.publishers[3].wait_newer(before, timeout=10)
            assert serials(crl.der) == {0x403} and crl.der == a.publishers[3].current.der
        finally:
            await b.stop()
    finally:
        await other_engine.dispose()


@pytest.mark.parametrize("count", [0, 10_001])
def test_partition_count_is_bounded(engine, issuer, signer, clock, count):
    with pytest.raises(ValueError):
        PartitionSet("default", count, url_for=url, issuer=issuer, signer=signer, source=None, changed=None,
                     engine=engine, clock=clock)


def listing(der: bytes) -> dict:
    """serial -> (revocation date, reason name, invalidity date) as cryptography reads the CRL."""
    out = {}
    for r in x509.load_der_x509_crl(der):
        ext = {type(e.value): e.value for e in r.extensions}
        reason = ext.get(x509.CRLReason)
        invalidity = ext.get(x509.InvalidityDate)
        out[r.serial_number] = (r.revocation_date_utc, reason.reason.name if reason else None,
                                invalidity.invalidity_date_utc if invalidity else None)
    return out


def full_listing(src: PartitionedSource, partition: int) -> dict:
    reasons = {1: "key_compromise", 4: "superseded", 6: "certificate_hold", None: None}
    return {s: (at.replace(microsecond=0), reasons[r], inv.replace(microsecond=0) if inv else None)
            for s, (at, r, inv) in src.rows.items() if partition_of(s, COUNT) == partition}


async def test_a_change_is_signed_from_the_crl_signed_here_reading_only_the_changed_certificates(
        engine, issuer, signer, clock, rsa_ca):
    src = PartitionedSource()
    for i, s in enumerate(range(0x1000, 0x1000 + 200, COUNT)):  # 50 entries in partition 0
        src.revoke(s, clock.now - timedelta(days=1, seconds=i), (None, 1, 4, 6)[i % 4])
    parts = make_set(engine, issuer, signer, src, clock, listed=src.listed)
    await parts.publish_due()
    first = parts.publishers[0].current
    clock.advance(10)
    src.reads.clear()
    src.revoke(0x2000, clock.now, 1, invalidity=clock.now - timedelta(days=2))  # a new entry
    src.release(0x1000 + 4 * 3, clock.now)  # a held certificate released: its entry leaves
    src.revoke(0x1000 + 4 * 7, clock.now, 1)  # held, now revoked: its entry changes
    assert await parts.publish_changed() == [0]
    assert src.reads == []  # the partition was not read again, only the three certificates
    assert src.listed_reads == [sorted([0x2000, 0x100C, 0x101C])]
    crl = parts.publishers[0].current
    assert crl.number == first.number + 1 and crl.entries == 50
    assert x509.load_der_x509_crl(crl.der).is_signature_valid(rsa_ca.cert.public_key())
    assert listing(crl.der) == full_listing(src, 0)
    # the schedule's re-sign reads the whole partition and lists the same
    clock.advance(CrlSettings().resign_interval.total_seconds())
    assert 0 in await parts.publish_due()
    assert src.reads.count(0) == 1 and listing(parts.publishers[0].current.der) == full_listing(src, 0)
    # a change that leaves the entries as they are signs nothing
    src.listed_reads.clear()
    served = parts.publishers[0].current
    src.touch(0x2000, clock.now + timedelta(seconds=1), "revoked")
    assert await parts.publish_changed() == []
    assert src.listed_reads == [[0x2000]] and parts.publishers[0].current is served


async def test_a_crl_adopted_from_another_process_or_a_failed_resign_means_a_full_read(
        engine, db_url, issuer, signer, clock):
    src = PartitionedSource()
    src.revoke(0x100, clock.now - timedelta(hours=1))
    other_engine = create_engine(db_url)
    try:
        a = make_set(engine, issuer, signer, src, clock, listed=src.listed)
        b = make_set(other_engine, issuer, signer, src, clock, listed=src.listed)
        await a.publish_due()
        assert await b.poll() == COUNT  # b serves a's CRLs: it reads a partition in full before patching one
        clock.advance(5)
        src.revoke(0x104, clock.now)
        src.reads.clear()
        assert await b.publish_changed() == [0]
        assert src.reads == [0] and set(listing(b.publishers[0].current.der)) == {0x100, 0x104}
        clock.advance(5)
        src.revoke(0x108, clock.now)
        src.reads.clear()
        assert await b.publish_changed() == [0]
        assert src.reads == [] and set(listing(b.publishers[0].current.der)) == {0x100, 0x104, 0x108}

        # after a re-sign that failed, the next one reads the whole partition (whatever went wrong)
        clock.advance(5)
        src.revoke(0x10C, clock.now)
        src.fail_listed = True
        assert await b.publish_changed() == []
        assert b.publishers[0].health().state == "degraded"
        src.fail_listed = False
        clock.advance(5)
        src.revoke(0x110, clock.now)
        src.reads.clear()
        assert await b.publish_changed() == [0]
        assert src.reads == [0]
        assert set(listing(b.publishers[0].current.der)) == {0x100, 0x104, 0x108, 0x10C, 0x110}
    finally:
        await other_engine.dispose()


async def test_a_patch_is_not_built_on_a_crl_another_process_has_overtaken(engine, db_url, issuer, signer, clock):
    """Process A's look finds Y changed; X changes just after it, and process B re-signs the partition (a full
    read: X and Y) as #2. A's re-sign, #3, must list X too: built as a patch of A's #1 with Y only, it would be
    recorded over #2 without X, and nothing would look at X again until the schedule's re-sign."""
    X, Y = 0x408, 0x404  # both in partition 0 of 4
    src = PartitionedSource()
    other_engine = create_engine(db_url)
    try:
        a = make_set(engine, issuer, signer, src, clock, listed=src.listed)
        b = make_set(other_engine, issuer, signer, src, clock, listed=src.listed)
        await a.publish_due()
        await b.poll()
        clock.advance(5)
        src.revoke(Y, clock.now)

        a_changed = a._changed

        async def a_look(since):
            found = await a_changed(since)  # A's look: Y only
            # just after A's look, X is revoked and B's schedule re-signs partition 0 (a full read: X and Y)
            clock.advance(1)
            src.revoke(X, clock.now)
            await b.publishers[0].publish_now()
            assert serials(b.publishers[0].current.der) == {X, Y}
            return found

        a._changed = a_look
        await a.publish_changed()
        await a.poll()
        await b.poll()
        stored = await CrlStateStore(engine, "default/0").load()
        assert stored.number == 3 and serials(stored.der) == {X, Y}
        assert X in serials(b.publishers[0].current.der)
    finally:
        await other_engine.dispose()
