"""A whole sync is bounded in time, not only each call: a peer answering each page just inside `[mdm]
timeout_seconds` kept one sync reading for up to 10,000 pages per listing (about 83 hours at 30 s a page) while
the periodic job's other sources waited, and the sync's claim ran out after one interval, so another process read
the same source at the same time. A sync that has not read the inventory within `sync_timeout_seconds` fails and
changes nothing, as a failed read does; the periodic sync's claim lasts as long as the sync may read."""
from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from aiohttp import web

from scep_server.binding.devices import DeviceStore
from scep_server.config import MdmSettings
from scep_server.mdm.plan import MdmState, Record
from scep_server.mdm.readers import make_reader
from scep_server.mdm.service import MdmService
from tests.binding.conftest import START
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET
from tests.mdm.test_mdm_store import JAMF, FakeMdm
from trustkit.clock import SettableClock

OURS = [f"dev-{i}" for i in range(3)]


class SlowJamf:
    """Jamf Pro listing our devices; once `slow`, a listing of a million other devices, each page answered after
    `delay` seconds (well inside the per-call time-out)."""

    def __init__(self, delay: float = 0.1):
        self.delay = delay
        self.slow = False
        self.pages = 0

    def app(self) -> web.Application:
        async def token(request):
            form = await request.post()
            if form.get("client_secret") != CLIENT_SECRET:
                return web.json_response({"error": "invalid_client"}, status=401)
            return web.json_response({"access_token": "jamf-token", "expires_in": 600})

        def record(i, udid):
            return {"id": str(i), "udid": udid, "general": {"name": udid, "remoteManagement": {"managed": True}},
                    "hardware": {"serialNumber": f"SN{i}"}}

        async def computers(request):
            n = int(request.query["page"])
            if not self.slow:
                items = [record(i, d) for i, d in enumerate(OURS)]
                return web.json_response({"totalCount": len(items), "results": items[n * 100:(n + 1) * 100]})
            self.pages += 1
            await asyncio.sleep(self.delay)
            return web.json_response({"totalCount": 1_000_000, "results": [
                record(n * 100 + i, f"other-{n * 100 + i}") for i in range(100)]})

        async def mobiles(request):
            return web.json_response({"totalCount": 0, "results": []})

        app = web.Application()
        app.router.add_post("/api/oauth/token", token)
        app.router.add_get("/api/v1/computers-inventory", computers)
        app.router.add_get("/api/v2/mobile-devices/detail", mobiles)
        return app


async def test_a_sync_that_reads_too_long_fails_and_changes_nothing(engine, aiohttp_server, monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    jamf = SlowJamf()
    peer = await aiohttp_server(jamf.app(), host="127.0.0.1")
    clock = SettableClock(START)
    devices = DeviceStore(engine, clock=clock)
    svc = MdmService(engine, devices, MdmSettings(timeout_seconds=1, sync_timeout_seconds=1),
                     reader=make_reader(timeout=1), clock=clock)
    await svc.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}", "client_id": CLIENT_ID,
                                         "client_secret": {"env": "MDM_TEST_SECRET"}, "id_field": "udid"}, actor="t")
    for d in OURS:
        await devices.create(d, actor="t")
    assert (await svc.sync("jamf", actor="t")).error is None
    tracked = await svc._tracked("jamf")
    assert set(tracked) == set(OURS)

    jamf.slow = True  # read in full, this listing would take our three devices down
    clock.advance(timedelta(days=30))
    started = time.monotonic()
    report = await asyncio.wait_for(svc.sync("jamf", actor="t"), 10)
    took = time.monotonic() - started
    assert report.error == "the inventory was not read within 1 s ([mdm] sync_timeout_seconds)", report.error
    assert took < 3 and jamf.pages < 30, (took, jamf.pages)
    assert report.changes == [] and report.held is None
    assert {(await devices.get(d)).status for d in OURS} == {"active"}
    assert await svc._tracked("jamf") == tracked
    assert (await svc.source("jamf"))["last_sync_outcome"].startswith("error: the inventory was not read")


async def test_the_periodic_claim_outlasts_the_sync_and_the_period_stays_the_interval(engine):
    clock = SettableClock(START)
    devices = DeviceStore(engine, clock=clock)
    fake = FakeMdm()
    settings = MdmSettings(sync_interval_seconds=900, sync_timeout_seconds=3600)
    svc = MdmService(engine, devices, settings, reader=fake, clock=clock)
    other = MdmService(engine, devices, settings, reader=fake, clock=clock)
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("dev-0", actor="t")
    fake.records = [Record("dev-0", "1", MdmState.MANAGED)]
    reads = []

    async def slow_read():
        reads.append(clock())
        if len(reads) == 1:  # the first sync reads for longer than one interval
            clock.advance(timedelta(seconds=1800))
            await svc.renew_claims()  # alive, it renews its claim all along
            assert await other.periodic_sync("jamf") is None  # still claimed: not read twice at once
            assert len(reads) == 1

    fake.during_read = slow_read
    assert (await svc.periodic_sync("jamf")).error is None
    assert len(reads) == 1
    clock.advance(timedelta(seconds=899))
    assert await other.periodic_sync("jamf") is None  # not due
    clock.advance(timedelta(seconds=1))
    assert (await other.periodic_sync("jamf")).error is None  # due one interval after the last sync
    assert len(reads) == 2
    clock.advance(timedelta(seconds=900))  # a finished sync's claim does not hold the next period back
    assert (await svc.periodic_sync("jamf")).error is None
    assert len(reads) == 3


async def test_a_sync_that_outlasts_its_claim_leaves_the_next_claim_alone(engine):
    """A sync still running when its claim ran out (it applied changes for longer than an interval after reading):
    the process that claimed the source since and reads it now keeps its claim; the first one ending did not
    cut it back to one interval from its own claim (in the past), and a third process read the source at once.
    The first one, its claim taken, applies and records nothing after its read."""
    clock = SettableClock(START)
    devices = DeviceStore(engine, clock=clock)
    fake = FakeMdm()
    settings = MdmSettings(sync_interval_seconds=900, sync_timeout_seconds=3600)
    first, second, third = (MdmService(engine, devices, settings, reader=fake, clock=clock) for _ in range(3))
    await first.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("dev-0", actor="t")
    fake.records = [Record("dev-0", "1", MdmState.MANAGED)]
    reads, tasks = [], []
    second_reading, second_may_end = asyncio.Event(), asyncio.Event()

    async def read():
        reads.append(clock())
        if len(reads) == 1:  # the first sync runs past its claim: the second process claims and reads
            clock.advance(timedelta(seconds=900 + 3600 + 100))
            tasks.append(asyncio.create_task(second.periodic_sync("jamf")))
            await asyncio.wait_for(second_reading.wait(), 10)
        elif len(reads) == 2:
            second_reading.set()
            await asyncio.wait_for(second_may_end.wait(), 10)

    fake.during_read = read
    assert "another sync took this sync's claim" in (await first.periodic_sync("jamf")).error
    clock.advance(timedelta(seconds=900))  # one interval after the first sync ended: the second is still reading
    await second.renew_claims()  # and renews its claim
    try:
        assert await third.periodic_sync("jamf") is None
        assert len(reads) == 2
    finally:
        second_may_end.set()
        second_report = await asyncio.wait_for(tasks[0], 10)
    assert second_report.error is None and len(reads) == 2
