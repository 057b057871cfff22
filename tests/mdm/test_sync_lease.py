"""A sync's claim of its source is a lease with a heartbeat: a process killed in a sync (out of memory, kill -9, its
node lost) left its claim, and every sync of the source, periodic and asked for, was refused until the claim ran
out (sync_interval_seconds plus sync_timeout_seconds: about two hours by default) while devices deleted or
deactivated in the MDM kept their certificates trusted. The process holding a claim now renews it while its sync
runs; a claim not renewed for SYNC_LEASE_SECONDS is taken by the next sync, which applies. A live sync's claim,
renewed, is not taken, and a refusal names the holder's last renewal. A sync whose claim was taken after it
stalled applies and records nothing. A claim made by a version that does not renew (a rolling upgrade) is
honoured until it runs out. On SQLite and PostgreSQL (the claim is in the database)."""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from scep_server.binding.devices import DeviceStore
from scep_server.binding.tables import mdm_sources
from scep_server.config import MdmSettings
from scep_server.mdm.errors import MdmError
from scep_server.mdm.plan import MdmState, Record
from scep_server.mdm.service import MdmService
from tests.binding.conftest import START
from tests.mdm.test_mdm_store import JAMF, FakeMdm
from trustkit.clock import SettableClock

SETTINGS = MdmSettings()  # the defaults: a claim lasts 900 + 3600 s
HOLD = timedelta(seconds=SETTINGS.sync_interval_seconds + SETTINGS.sync_timeout_seconds)
LEASE = timedelta(seconds=60)  # scep_server.mdm.service.SYNC_LEASE_SECONDS


async def setup(engine, n: int):
    clock = SettableClock(START)
    devices = DeviceStore(engine, clock=clock)
    fake = FakeMdm()
    svcs = [MdmService(engine, devices, SETTINGS, reader=fake, clock=clock) for _ in range(n)]
    await svcs[0].configure("jamf", "jamf", JAMF, actor="t")
    for d in ("d1", "d2"):
        await devices.create(d, actor="t")
    return clock, devices, fake, svcs


def running(exc: BaseException | None, since, renewed=None) -> bool:
    ok = isinstance(exc, MdmError) and exc.code == "mdm_sync_running" and exc.status == 409 \
        and f"a sync of MDM source 'jamf' is running since {since.isoformat()}" in str(exc)
    if renewed is not None:
        ok = ok and f"its holder last renewed its claim at {renewed.isoformat()}" in str(exc) \
            and exc.extra["last_renewed_at"] == renewed.isoformat()
    return ok


async def test_the_claim_of_a_killed_sync_is_taken_once_stale_and_the_next_sync_applies(engine):
    clock, devices, fake, (dead, admin) = await setup(engine, 2)
    assert await dead.claim("jamf", hold=HOLD)  # a periodic sync began, and its process was killed
    fake.records = [Record("d1", "1", MdmState.UNMANAGED), Record("d2", "2", MdmState.MANAGED)]
    clock.advance(LEASE - timedelta(seconds=1))  # not renewed for a little less than the lease: still its
    with pytest.raises(MdmError) as caught:
        await admin.sync("jamf", actor="cli:root")
    assert running(caught.value, START), caught.value
    assert (await devices.get("d1")).status == "active"
    clock.advance(timedelta(seconds=2))  # not renewed for longer than the lease: stale, long before it runs out
    report = await admin.sync("jamf", actor="cli:root")  # formerly refused for 4500 s, until the claim ran out
    assert report.error is None, report
    assert [(c.device_id, c.action) for c in report.changes] == [("d1", "deactivate")]
    assert (await devices.get("d1")).status == "deactivated"
    assert (await admin.source("jamf"))["last_sync_outcome"].startswith("ok: 2 records, 1 changes")
    # the claim was given back: the next sync asked for runs at once
    assert (await dead.sync("jamf", actor="cli:root")).error is None
    # the refusal named the holder's last renewal
    assert running(caught.value, START, renewed=START), caught.value


async def test_the_periodic_sync_takes_a_stale_claim(engine):
    clock, devices, fake, (dead, periodic) = await setup(engine, 2)
    assert await dead.claim("jamf", hold=HOLD)
    fake.records = [Record("d1", "1", MdmState.DISABLED)]
    clock.advance(LEASE - timedelta(seconds=1))
    assert await periodic.periodic_sync("jamf") is None
    clock.advance(timedelta(seconds=1))
    report = await periodic.periodic_sync("jamf")
    assert report is not None and report.error is None, report
    assert (await devices.get("d1")).status == "deactivated"


async def test_a_live_sync_renews_its_claim_and_keeps_it(engine):
    clock, devices, fake, (live, other) = await setup(engine, 2)
    fake.records = [Record("d1", "1", MdmState.UNMANAGED)]
    seen = {}

    async def reading():  # a long read, renewing all along: ten leases and more pass
        if seen:
            return
        for _ in range(20):
            clock.advance(LEASE / 2)
            await live.renew_claims()
        seen["renewed"] = clock()
        clock.advance(LEASE / 2)  # its last renewal half a lease ago
        for attempt in (lambda: other.sync("jamf", actor="cli:other"), lambda: other.periodic_sync("jamf")):
            try:
                seen.setdefault("results", []).append(await attempt())
            except MdmError as exc:
                seen["results"].append(exc)

    fake.during_read = reading
    report = await live.sync("jamf", actor="cli:root")
    assert report.error is None and [(c.device_id, c.action) for c in report.changes] == [("d1", "deactivate")]
    refusal, periodic = seen["results"]
    assert running(refusal, START, renewed=seen["renewed"]), refusal
    assert periodic is None  # the periodic sync, due, waits for the live one


async def test_a_sync_whose_claim_was_taken_after_it_stalled_applies_nothing(engine):
    clock, devices, fake, (stalled, taker) = await setup(engine, 2)
    fake.records = [Record("d1", "1", MdmState.UNMANAGED)]  # what the stalled sync read: d1 taken down
    seen = {}

    async def stall():
        if seen:
            return
        seen["stalled"] = True
        clock.advance(LEASE + timedelta(seconds=1))  # no renewal meanwhile (the process stalled, the database lost)
        fake.records = [Record("d1", "1", MdmState.MANAGED)]  # the MDM manages d1 again
        seen["taker"] = await taker.sync("jamf", actor="cli:other")

    fake.during_read = stall
    report = await stalled.sync("jamf", actor="cli:root")
    assert seen["taker"].error is None and seen["taker"].changes == []
    assert "another sync took this sync's claim" in report.error, report
    assert report.changes == []
    assert (await devices.get("d1")).status == "active"  # not taken down on what the stalled sync read
    assert await stalled._tracked("jamf") == await taker._tracked("jamf")
    assert (await stalled.source("jamf"))["last_sync_outcome"] == "ok: 1 records, 0 changes"  # the taker's
    fake.during_read = None
    clock.advance(timedelta(seconds=1))
    assert (await stalled.sync("jamf", actor="cli:root")).changes == []  # no claim left behind


async def test_a_sync_whose_claim_was_taken_while_it_applies_stops(engine):
    """The claim is checked, and renewed, in each change's own transaction: once another sync took it, no further
    change is applied."""
    clock, devices, fake, (stalled, taker) = await setup(engine, 2)
    fake.records = [Record("d1", "1", MdmState.UNMANAGED), Record("d2", "2", MdmState.UNMANAGED)]
    transition = devices.transition
    calls = []

    async def slow_transition(device_id, action, **kw):
        calls.append(device_id)
        if len(calls) == 2:  # stalls between its first change and its second one
            clock.advance(LEASE + timedelta(seconds=1))
            assert await taker.claim("jamf", hold=HOLD)
        return await transition(device_id, action, **kw)

    stalled.devices = DeviceStoreProxy(devices, slow_transition)
    report = await stalled.sync("jamf", actor="cli:root")
    assert "another sync took this sync's claim" in report.error, report
    assert [c.device_id for c in report.changes] == ["d1"]
    assert (await devices.get("d1")).status == "deactivated" and (await devices.get("d2")).status == "active"


class DeviceStoreProxy:
    def __init__(self, store, transition):
        self._store = store
        self.transition = transition

    def __getattr__(self, name):
        return getattr(self._store, name)


async def test_a_claim_of_a_version_that_does_not_renew_is_honoured_until_it_runs_out(engine):
    """A rolling upgrade: a process of the former version claims without renewing (sync_renewed_at untouched:
    NULL, or a former claim's renewal, before its start). Taken as stale, its sync, still running, would apply a
    second time: it is honoured until it runs out, as that version honours every claim."""
    clock, devices, fake, (new, admin) = await setup(engine, 2)
    assert (await new.sync("jamf", actor="cli:root")).error is None  # a renewing sync ran
    for renewed in (None, START):
        clock.advance(timedelta(seconds=1))
        started = clock()
        async with engine.begin() as conn:  # what the former version's claim writes
            await conn.execute(mdm_sources.update().where(mdm_sources.c.name == "jamf").values(
                sync_claimed_until=started + HOLD, sync_started_at=started, sync_renewed_at=renewed))
        clock.advance(HOLD - timedelta(seconds=1))
        with pytest.raises(MdmError) as caught:
            await admin.sync("jamf", actor="cli:root")
        assert running(caught.value, started), caught.value
        assert caught.value.extra["last_renewed_at"] is None
        assert f"its claim ends by {(started + HOLD).isoformat()} at the latest" in str(caught.value)
        assert await admin.periodic_sync("jamf") is None
        clock.advance(timedelta(seconds=2))
        assert (await admin.sync("jamf", actor="cli:root")).error is None


def test_the_lease_is_the_documented_one():
    from scep_server.mdm.service import SYNC_LEASE_SECONDS

    assert LEASE == timedelta(seconds=SYNC_LEASE_SECONDS)


async def test_a_dry_run_takes_no_claim(engine):
    clock, devices, fake, (svc,) = await setup(engine, 1)
    assert (await svc.sync("jamf", dry_run=True, actor="cli:root")).error is None
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(mdm_sources).where(mdm_sources.c.name == "jamf"))).first()
    assert row.sync_started_at is None and row.sync_renewed_at is None and row.sync_claimed_until is None


async def test_the_lease_is_the_same_for_every_process_whatever_its_sync_timeout(engine):
    """A process whose sync_timeout_seconds is shorter than the lease judged claims by it (min(lease, timeout)):
    it took the live claim of a process that renews every 20 s, over and over."""
    clock, devices, fake, (holder, _) = await setup(engine, 2)
    short = MdmService(engine, devices, MdmSettings(sync_timeout_seconds=10), reader=fake, clock=clock)
    assert await holder.claim("jamf", hold=HOLD)
    clock.advance(timedelta(seconds=35))  # not renewed for 35 s: within the lease, beyond the other's timeout
    with pytest.raises(MdmError) as caught:
        await short.sync("jamf", actor="cli:root")
    assert running(caught.value, START), caught.value


async def test_a_renewal_never_moves_the_heartbeat_back(engine):
    """A renewal that waited on the row's lock while a long write of the same sync renewed the claim at its end
    keeps the later time: others judge the claim by it as soon as both commit."""
    from scep_server.mdm.service import _Lease

    clock, devices, fake, (holder,) = await setup(engine, 1)
    until = await holder.claim("jamf", hold=HOLD)
    lease = _Lease("jamf", START, until)
    later = START + timedelta(seconds=50)
    async with engine.begin() as conn:
        await conn.execute(mdm_sources.update().where(mdm_sources.c.name == "jamf").values(sync_renewed_at=later))
    clock.advance(timedelta(seconds=10))  # the waiting renewal's own time is earlier than the write's
    assert await holder._renew_one(lease)
    async with engine.connect() as conn:
        renewed = (await conn.execute(sa.select(mdm_sources.c.sync_renewed_at))).scalar_one()
    assert renewed.replace(tzinfo=later.tzinfo) == later
