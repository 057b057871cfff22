"""A sync asked for by an administrator (`mdm sync`, POST /api/v1/mdm/{source}/sync) takes the source's claim, the
one the periodic sync takes: it took none, so it ran at the same time as the periodic sync or as another
administrator's (in a second process or instance), two syncs read the source at once, counted the brake apart and
interleaved their take-downs. While another sync holds the claim it is refused (409 mdm_sync_running, the CLI one
line and exit 1), naming the source and since when the other sync runs. A dry run changes nothing: it takes no
claim and runs alongside. On SQLite and PostgreSQL (the claim is in the database)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from structlog.testing import capture_logs

from scep_server.binding.devices import DeviceStore
from scep_server.config import MdmSettings
from scep_server.mdm.errors import MdmError
from scep_server.mdm.plan import MdmState, Record
from scep_server.mdm.service import SYNC_LEASE_SECONDS, MdmService
from tests.binding.conftest import START, api, clock, server  # noqa: F401
from tests.mdm.test_mdm_store import JAMF, FakeMdm
from trustkit.clock import SettableClock

SETTINGS = MdmSettings(sync_interval_seconds=900, sync_timeout_seconds=600)


def services(engine, n: int):
    clock = SettableClock(START)
    devices = DeviceStore(engine, clock=clock)
    fake = FakeMdm()
    return clock, devices, fake, [MdmService(engine, devices, SETTINGS, reader=fake, clock=clock) for _ in range(n)]


def refused(exc: BaseException | None, since) -> bool:
    return isinstance(exc, MdmError) and exc.code == "mdm_sync_running" and exc.status == 409 \
        and "a sync of MDM source 'jamf' is running since " + since.isoformat() in str(exc)


async def test_syncs_asked_for_at_once_run_one_at_a_time(engine):
    """Three processes (of one instance or several) asked to sync one source at the same moment: one reads and
    applies, the others are refused at once; once it has ended, the next one asked for runs (no period to wait)."""
    clock, devices, fake, svcs = services(engine, 3)
    await svcs[0].configure("jamf", "jamf", JAMF, actor="t")
    for d in ("d1", "d2"):
        await devices.create(d, actor="t")
    fake.records = [Record("d1", "1", MdmState.UNMANAGED), Record("d2", "2", MdmState.DISABLED)]
    reads, tasks = [], []

    async def read():
        reads.append(clock())
        # a reading sync waits until the other ones have ended (refused) -- or, read at once, for a while
        await asyncio.wait([t for t in tasks if t is not asyncio.current_task()], timeout=5)

    fake.during_read = read
    tasks.extend(asyncio.create_task(s.sync("jamf", actor=f"cli:admin{i}")) for i, s in enumerate(svcs))
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    reports = [r for r in results if not isinstance(r, BaseException)]
    assert len(reads) == 1 and len(reports) == 1, results
    assert all(refused(r, START) for r in results if isinstance(r, BaseException)), results
    assert sorted((c.device_id, c.action) for c in reports[0].changes) == [("d1", "deactivate"), ("d2", "deactivate")]
    fake.during_read = None
    clock.advance(timedelta(seconds=1))
    assert (await svcs[1].sync("jamf", actor="cli:admin1")).error is None  # the claim was given back


async def test_an_administrators_sync_and_the_periodic_sync_never_run_at_once(engine):
    clock, devices, fake, (periodic, admin) = services(engine, 2)
    await periodic.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("d1", actor="t")
    fake.records = [Record("d1", "1", MdmState.MANAGED)]
    seen = {}

    async def during_periodic():
        if "admin" in seen:
            return
        seen["admin"] = "reading"
        clock.advance(timedelta(seconds=30))
        try:
            await admin.sync("jamf", actor="cli:root")
        except MdmError as exc:
            seen["admin"] = exc
        else:
            seen["admin"] = None
        seen["dry"] = await admin.sync("jamf", dry_run=True, actor="cli:root")  # a dry run runs alongside

    fake.during_read = during_periodic
    assert (await periodic.periodic_sync("jamf")).error is None
    assert refused(seen["admin"], START), seen["admin"]
    assert seen["dry"].error is None and seen["dry"].dry_run
    # the periodic sync has ended: an administrator's sync runs at once, though the next period has not begun
    fake.during_read = None
    clock.advance(timedelta(seconds=60))
    assert (await admin.sync("jamf", actor="cli:root")).error is None

    # and the periodic sync, due while an administrator's sync runs, waits for its end
    admin_started = clock()

    async def during_admin():
        if "periodic" in seen:
            return
        seen["periodic"] = "reading"
        clock.advance(timedelta(seconds=1000))  # the periodic sync is due (an interval is 900 s)
        await admin.renew_claims()  # the administrator's sync, alive, renews its claim all along
        seen["periodic"] = await periodic.periodic_sync("jamf")
        try:
            await periodic.sync("jamf", actor="cli:other")
        except MdmError as exc:
            seen["other"] = exc
        else:
            seen["other"] = None

    fake.during_read = during_admin
    assert (await admin.sync("jamf", actor="cli:root")).error is None
    assert seen["periodic"] is None
    assert refused(seen["other"], admin_started), seen["other"]
    fake.during_read = None
    assert (await periodic.periodic_sync("jamf")) is None  # the administrator's sync just ended: not due
    clock.advance(timedelta(seconds=SETTINGS.sync_interval_seconds))
    assert (await periodic.periodic_sync("jamf")).error is None


async def test_the_claim_of_a_sync_whose_process_died_runs_out(engine):
    """Once not renewed for the lease (tests/mdm/test_sync_lease.py), long before it would end."""
    clock, devices, fake, (dead, admin) = services(engine, 2)
    await admin.configure("jamf", "jamf", JAMF, actor="t")
    hold = timedelta(seconds=SETTINGS.sync_interval_seconds + SETTINGS.sync_timeout_seconds)
    assert await dead.claim("jamf", hold=hold)  # a periodic sync began, and its process died
    clock.advance(timedelta(seconds=SYNC_LEASE_SECONDS - 1))
    with pytest.raises(MdmError) as caught:
        await admin.sync("jamf", actor="cli:root")
    assert refused(caught.value, START), caught.value
    assert f"ends by {(START + hold).isoformat()} at the latest" in str(caught.value)
    clock.advance(timedelta(seconds=2))
    assert (await admin.sync("jamf", actor="cli:root")).error is None
    # an administrator's sync that ends gives the claim back: the next one is not refused
    assert (await dead.sync("jamf", actor="cli:root")).error is None


async def test_the_api_answers_409_problem_while_a_sync_runs(server, api):  # noqa: F811 - SQLite's server
    mdm = server.runtime.mdm
    await mdm.configure("jamf", "jamf", {**JAMF, "url": "https://127.0.0.1:1"}, actor="t")
    started = mdm.clock()
    assert await mdm.claim("jamf", hold=timedelta(hours=1))  # another process's periodic sync runs
    async with api.session.post(api.url + "/api/v1/mdm/jamf/sync", json={}, headers=api.admin) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 409, body
        assert resp.content_type == "application/problem+json"
    assert body["code"] == "mdm_sync_running" and body["running_since"] == started.isoformat(), body
    assert f"a sync of MDM source 'jamf' is running since {started.isoformat()}" in body["detail"]
    # a dry run changes nothing and is not refused (this MDM cannot be reached: 502, the dry run's report)
    report = await api.post("/api/v1/mdm/jamf/sync", {"dry_run": True}, admin=True, expect=502)
    assert report["dry_run"] and report["error"]


def test_the_command_says_in_one_line_that_a_sync_runs(cli, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    with capture_logs():
        cli("mdm", "configure", "jamf", "--url", "https://127.0.0.1:1", "--client-id", "c",
            "--client-secret-file", str(secret))

    async def hold():
        from trustkit.db import create_engine

        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'scep.db'}")
        try:
            svc = MdmService(engine, DeviceStore(engine), MdmSettings(), reader=FakeMdm())
            started = svc.clock()
            assert await svc.claim("jamf", hold=timedelta(hours=1))
            return started
        finally:
            await engine.dispose()

    started = asyncio.run(hold())
    with capture_logs():
        out = cli("mdm", "sync", "jamf", code=1)
    assert len(out.strip().splitlines()) == 1, out
    assert out.startswith("Error: a sync of MDM source 'jamf' is running since "), out
    since = out.split("running since ", 1)[1].split(";", 1)[0]
    assert abs((datetime.fromisoformat(since) - started).total_seconds()) < 1, (since, started)
