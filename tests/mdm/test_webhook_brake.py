"""The brake holds webhooks too: posts of `MobileDeviceUnEnrolled` for device after device (a leaked webhook
secret, a Jamf bulk action gone wrong, a replay with fresh dates) take down at most what the brake lets one sync
take down ([mdm] brake_share of the source's devices, at least brake_devices) per sync interval; the others are
acknowledged and not applied (202, `accepted: false`), and the next sync reads the devices under its own brake."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET, jamf_webhook
from tests.mdm.test_mdm_store import listed
from tests.mdm.test_sync_brake import brake_holds


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


async def test_webhook_take_downs_are_held_past_the_brake(server, api, clock, secret_env):
    svc = server.runtime.mdm
    _, secret = await svc.configure("jamf", "jamf", {
        "url": "https://jamf.example", "client_id": CLIENT_ID, "client_secret": secret_env, "id_field": "udid"},
        actor="cli:admin")
    ids = [f"dev-{i:02}" for i in range(30)]
    for d in ids:
        await api.add_device(d)
    await listed(svc, "jamf", *ids)
    hook = f"{server.url}/hooks/jamf"
    at_ms = int(clock().timestamp() * 1000)
    holds = brake_holds("event")
    results = await asyncio.gather(*(jamf_webhook(api.session, hook, "MobileDeviceUnEnrolled", d, secret=secret,
                                                  at_ms=at_ms) for d in ids))
    applied = [d for d, (status, body) in zip(ids, results) if status == 200 and body["change"]]
    held = [d for d, (status, body) in zip(ids, results) if status == 202 and body["accepted"] is False]
    assert len(applied) == 10 and len(held) == 20, results  # brake_devices: 10 (10 % of 30 is 3)
    assert brake_holds("event") - holds == 20
    statuses = {d: (await api.get(f"/api/v1/devices/{d}"))["status"] for d in ids}
    assert sorted(d for d, s in statuses.items() if s == "deactivated") == sorted(applied)

    # a later interval may take down as many again; bringing a device back is never held
    status, body = await jamf_webhook(api.session, hook, "MobileDeviceEnrolled", applied[0], secret=secret,
                                      at_ms=at_ms + 1)
    assert status == 200 and body["change"]["action"] == "reactivate", body
    clock.advance(timedelta(seconds=901))
    status, body = await jamf_webhook(api.session, hook, "MobileDeviceUnEnrolled", held[0], secret=secret,
                                      at_ms=int(clock().timestamp() * 1000))
    assert status == 200 and body["change"]["action"] == "deactivate", body


async def test_the_webhook_brake_counts_the_take_downs_of_every_process(engine):
    """The processes and instances of a deployment take webhook events for one source at once (a Jamf bulk action
    posts device after device to whichever worker the load balancer picks): the brake counts the take-downs they
    all applied, not each process its own, so together they take down no more than it allows."""
    from scep_server.binding.devices import DeviceStore
    from scep_server.config import MdmSettings
    from scep_server.mdm.errors import EventHeld
    from scep_server.mdm.plan import MdmState, Record
    from scep_server.mdm.service import MdmService
    from trustkit.clock import SettableClock

    from tests.binding.conftest import START
    from tests.mdm.test_mdm_store import JAMF, FakeMdm

    clock = SettableClock(START)
    devices = DeviceStore(engine, clock=clock)
    processes = [MdmService(engine, devices, MdmSettings(), reader=FakeMdm(), clock=clock) for _ in range(6)]
    await processes[0].configure("jamf", "jamf", JAMF, actor="t")
    ids = [f"dev-{i:02}" for i in range(30)]
    for d in ids:
        await devices.create(d, actor="t")
    await listed(processes[0], "jamf", *ids)

    async def unenrolled(i: int, device_id: str) -> bool:
        try:
            return await processes[i % len(processes)].event("jamf", Record(device_id, "1", MdmState.UNMANAGED),
                                                             at=clock()) is not None
        except EventHeld:
            return False

    applied = await asyncio.gather(*(unenrolled(i, d) for i, d in enumerate(ids)))
    assert sum(applied) == 10  # brake_devices: 10 (10 % of 30 is 3), whichever process took each event
