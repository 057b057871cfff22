"""A partition set started on a database whose partition CRLs are older than a status change made while no
process of it ran (a command-line revocation during a restart, a change of a server that stopped before signing
its partition) re-signs the changed partition at its first look, not at its next scheduled re-sign
(crl.resign_interval): the CRL the certificate's CDP names lists it as soon as the full CRL does."""
from __future__ import annotations

from datetime import timedelta

from crl.config import CrlSettings
from tests.crl.test_partitions import PartitionedSource, make_set, serials

SETTINGS = CrlSettings(coalesce_delay=timedelta(0), poll_interval=0.05, resign_interval=timedelta(hours=1))


async def test_a_restarted_set_finds_a_change_made_since_its_partition_crls(engine, issuer, signer, clock):
    src = PartitionedSource()
    before = make_set(engine, issuer, signer, src, clock, settings=SETTINGS)
    assert sorted(await before.publish_due()) == [0, 1, 2, 3]
    clock.advance(minutes=10)
    src.revoke(0x301, clock.now)  # partition 1, while no process of the set runs
    clock.advance(minutes=5)
    after = make_set(engine, issuer, signer, src, clock, settings=SETTINGS)  # the restart
    assert await after.poll() == 4  # serves the recorded partition CRLs, which do not list it
    assert 0x301 not in serials(after.publishers[1].current.der)
    assert await after.publish_due() == []  # none is due on the schedule yet
    after.notify_changed()  # as the server's look at the newest change, or its first look, does
    assert await after.publish_changed() == [1]
    assert serials(after.publishers[1].current.der) == {0x301}


async def test_the_loop_looks_for_changes_at_its_start(engine, issuer, signer, clock):
    src = PartitionedSource()
    before = make_set(engine, issuer, signer, src, clock, settings=SETTINGS)
    await before.publish_due()
    number = before.publishers[1].current.number
    clock.advance(minutes=10)
    src.revoke(0x305, clock.now)
    clock.advance(minutes=5)
    after = make_set(engine, issuer, signer, src, clock, settings=SETTINGS)
    await after.start()
    try:
        crl = await after.publishers[1].wait_newer(number, timeout=5)
        assert serials(crl.der) == {0x305}
    finally:
        await after.stop()
