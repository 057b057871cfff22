"""The brake: an MDM that answers an empty or cut inventory (an API role that lost its privileges, a paging bug, a
tenant moved) must not take the fleet down. A sync that would take down more than `[mdm] brake_share` of the
source's known devices, and more than `brake_devices`, changes nothing (no device, no tracking, no delta state),
is answered 409 with what it held, logged and kept as the source's last outcome, until an administrator confirms it
with at least that number (`confirm_takedowns`, `mdm sync --confirm-takedowns`)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET, GraphPeer, JamfPeer


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


def brake_holds(what: str) -> float:
    """mdm_brake_holds_total{what} of this process (recording turned on)."""
    from scep_server import metrics

    metrics.activate()
    metrics.flush()
    return metrics._active.own.get_sample_value("mdm_brake_holds_total", {"what": what}) or 0.0


async def _statuses(api, ids):
    return {(await api.get(f"/api/v1/devices/{d}"))["status"] for d in ids}


@pytest.mark.parametrize("kind", ["computers", "mobiles"])
async def test_an_empty_jamf_inventory_is_held_until_confirmed(server, api, aiohttp_server, clock, secret_env,
                                                                kind):
    jamf = JamfPeer()
    peer = await aiohttp_server(jamf.app(), host="127.0.0.1")
    ids = [f"dev-{i}" for i in range(30)]
    for d in ids:
        (jamf.computer if kind == "computers" else jamf.mobile)(d)
        await api.add_device(d)
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": "udid"}, actor="cli:admin")
    assert (await api.post("/api/v1/mdm/jamf/sync", {}, admin=True))["changes"] == []

    getattr(jamf, kind).clear()  # Jamf answers 200 with no devices
    holds = brake_holds("sync")
    for _ in range(2):  # the periodic sync keeps holding it; nothing starts the grace period
        report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True, expect=409)
        assert report["changes"] == [] and report["error"] is None
        assert report["held"]["takedowns"] == 30 and report["held"]["devices"] == 30
        assert report["held"]["limit"] == 10 and len(report["held"]["changes"]) == 30
        assert await _statuses(api, ids) == {"active"}
        assert (await api.get("/api/v1/mdm/jamf"))["last_sync_outcome"].startswith("held: 30 of 30")
        clock.advance(timedelta(days=8))
    dry = await api.post("/api/v1/mdm/jamf/sync", {"dry_run": True}, admin=True)
    assert dry["held"]["takedowns"] == 30 and len(dry["changes"]) == 30
    # a confirmation of fewer than it takes down is no confirmation
    await api.post("/api/v1/mdm/jamf/sync", {"confirm_takedowns": 29}, admin=True, expect=409)
    for bad in (-1, "30", True, 1.5):
        await api.post("/api/v1/mdm/jamf/sync", {"confirm_takedowns": bad}, admin=True, expect=400)

    assert brake_holds("sync") - holds == 3  # counted (not the dry run): /metrics shows an MDM held back
    report = await api.post("/api/v1/mdm/jamf/sync", {"confirm_takedowns": 30}, admin=True)
    assert report["held"] is None and {c["action"] for c in report["changes"]} == {"deactivate"}
    assert await _statuses(api, ids) == {"deactivated"}  # held at once; the grace period starts now
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert report["changes"] == []


async def test_a_few_devices_gone_are_taken_down_without_confirmation(server, api, aiohttp_server, secret_env):
    jamf = JamfPeer()
    peer = await aiohttp_server(jamf.app(), host="127.0.0.1")
    for i in range(30):
        jamf.computer(f"dev-{i}")
        await api.add_device(f"dev-{i}")
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": "udid"}, actor="cli:admin")
    await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    for i in range(10):  # brake_devices: 10
        jamf.computers[f"dev-{i}"]["managed"] = False
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert len(report["changes"]) == 10 and report["held"] is None


async def test_an_intune_tenant_that_answers_no_devices_is_held(server, api, aiohttp_server, secret_env):
    graph = GraphPeer()
    peer = await aiohttp_server(graph.app(), host="127.0.0.1")
    base = f"http://127.0.0.1:{peer.port}"
    for i in range(12):
        graph.device(f"intune-{i}", f"aad-{i}")
        await api.add_device(f"intune-{i}")
    await server.runtime.mdm.configure("intune", "intune", {
        "tenant": graph.tenant, "client_id": CLIENT_ID, "client_secret": secret_env, "id_field": "device_id",
        "authority_url": base, "graph_url": base}, actor="cli:admin")
    assert (await api.post("/api/v1/mdm/intune/sync", {}, admin=True))["changes"] == []
    for i in range(12):
        graph.set_enabled(f"aad-{i}", False)  # every Entra device disabled at once
    report = await api.post("/api/v1/mdm/intune/sync", {}, admin=True, expect=409)
    assert report["held"]["takedowns"] == 12 and report["changes"] == []
    assert await _statuses(api, [f"intune-{i}" for i in range(12)]) == {"active"}
    # the directory's changes were not taken as read: the confirmed sync sees them again
    report = await api.post("/api/v1/mdm/intune/sync", {"confirm_takedowns": 12}, admin=True)
    assert len(report["changes"]) == 12
    assert await _statuses(api, [f"intune-{i}" for i in range(12)]) == {"deactivated"}


async def _synced(engine, count: int, **brake):
    """An MDM service on the store with ``count`` devices, all listed by its fake Jamf and synced once."""
    from scep_server.binding.devices import DeviceStore
    from scep_server.config import MdmSettings
    from scep_server.mdm.plan import MdmState, Record
    from scep_server.mdm.service import MdmService
    from tests.binding.conftest import START
    from tests.mdm.test_mdm_store import JAMF, FakeMdm
    from trustkit.clock import SettableClock

    clock = SettableClock(START)
    devices = DeviceStore(engine, clock=clock)
    fake = FakeMdm()
    svc = MdmService(engine, devices, MdmSettings(**brake), reader=fake, clock=clock)
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    for i in range(count):
        await devices.create(f"d{i:03}", actor="t")
    fake.records = [Record(f"d{i:03}", str(i), MdmState.MANAGED) for i in range(count)]
    await svc.sync("jamf", actor="t")
    return svc, fake


async def test_a_held_sync_remembers_nothing_on_the_store(engine):
    """On SQLite and PostgreSQL: a held sync leaves the tracking as it was, and the settings set the limit."""
    from scep_server.mdm.plan import MdmState, Record

    svc, fake = await _synced(engine, 4, brake_share=0.5, brake_devices=1)
    before = await svc._tracked("jamf")
    fake.records = fake.records[:1]  # three of four gone: more than half
    report = await svc.sync("jamf", actor="t")
    assert report.held["takedowns"] == 3 and report.held["limit"] == 2 and report.changes == []
    assert await svc._tracked("jamf") == before
    fake.records = [Record(f"d{i:03}", str(i), MdmState.MANAGED) for i in range(2)]  # two gone: at the limit
    report = await svc.sync("jamf", actor="t")
    assert report.held is None and sorted(c.device_id for c in report.changes) == ["d002", "d003"]


async def test_the_limit_is_the_configured_share_of_the_devices_exactly(engine):
    """brake_share 0.29 of 100 devices allows 29 take-downs: the share times the count in floating point
    (28.999999999999996) made it 28, and a sync of exactly the share allowed was held."""
    svc, fake = await _synced(engine, 100, brake_share=0.29, brake_devices=0)
    fake.records = fake.records[29:]  # 29 of 100 gone: the share allowed
    report = await svc.sync("jamf", actor="t")
    assert report.held is None and len(report.changes) == 29
