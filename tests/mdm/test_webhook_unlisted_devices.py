"""A Jamf webhook event leaves alone a device another MDM source follows and this source's inventory has not
listed. Such an event (an Intune device, a serial number both MDMs know) was applied and made the device tracked by
the source, so that its next sync found the device "gone": held at once and revoked after the grace period, by an
MDM that never managed it. A device no source follows yet is still the posting source's from its first event."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET, GraphPeer, JamfPeer, jamf_webhook


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


async def test_an_event_about_another_sources_device_changes_nothing(server, api, aiohttp_server, clock,
                                                                      secret_env):
    graph = GraphPeer()
    gpeer = await aiohttp_server(graph.app(), host="127.0.0.1")
    base = f"http://127.0.0.1:{gpeer.port}"
    graph.device("intune-0", "aad-0")
    await api.add_device("intune-0")
    mdm = server.runtime.mdm
    await mdm.configure("intune", "intune", {"tenant": graph.tenant, "client_id": CLIENT_ID,
                                             "client_secret": secret_env, "id_field": "device_id",
                                             "authority_url": base, "graph_url": base}, actor="cli:admin")
    assert (await api.post("/api/v1/mdm/intune/sync", {}, admin=True))["changes"] == []

    jamf = JamfPeer()
    jamf.computer("mac-0")
    await api.add_device("mac-0")
    jpeer = await aiohttp_server(jamf.app(), host="127.0.0.1")
    _, secret = await mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{jpeer.port}", "client_id": CLIENT_ID,
                                                     "client_secret": secret_env, "id_field": "udid"},
                                    actor="cli:admin")
    assert (await api.post("/api/v1/mdm/jamf/sync", {}, admin=True))["changes"] == []
    hook = f"{server.url}/hooks/jamf"
    for event in ("MobileDeviceEnrolled", "MobileDeviceUnEnrolled"):
        status, body = await jamf_webhook(api.session, hook, event, "intune-0", secret=secret)
        assert status == 202 and body["accepted"] is False, body
    assert (await api.get("/api/v1/devices/intune-0"))["status"] == "active"
    for _ in range(2):  # Jamf's syncs leave the device alone, before and after the grace period
        report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
        assert report["changes"] == [], report
        clock.advance(timedelta(days=8))
    assert (await api.get("/api/v1/devices/intune-0"))["status"] == "active"

    # a device Jamf listed is still followed by its events
    status, body = await jamf_webhook(api.session, hook, "MobileDeviceUnEnrolled", "mac-0", secret=secret,
                                      at_ms=int(clock().timestamp() * 1000))
    assert status == 200 and body["change"]["action"] == "deactivate", body


async def test_an_unenrolment_before_the_first_sync_is_not_missed(server, api, aiohttp_server, clock, secret_env):
    """A device enrolled (its certificate issued) and unenrolled, then deleted in Jamf Pro before any sync read
    it: no source follows it yet, so the event is applied and remembered; the next sync, not finding it, keeps it
    held and deletes it after the grace period."""
    jamf = JamfPeer()
    jamf.computer("mac-0")
    jpeer = await aiohttp_server(jamf.app(), host="127.0.0.1")
    _, secret = await server.runtime.mdm.configure("jamf", "jamf", {
        "url": f"http://127.0.0.1:{jpeer.port}", "client_id": CLIENT_ID, "client_secret": secret_env,
        "id_field": "udid"}, actor="cli:admin")
    assert (await api.post("/api/v1/mdm/jamf/sync", {}, admin=True))["changes"] == []
    await api.add_device("new-ipad")  # enrolled since the last sync
    status, body = await jamf_webhook(api.session, f"{server.url}/hooks/jamf", "MobileDeviceUnEnrolled", "new-ipad",
                                      secret=secret, at_ms=int(clock().timestamp() * 1000))
    assert status == 200 and body["change"]["action"] == "deactivate", body
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert report["changes"] == []  # deleted in Jamf: gone, and held already
    clock.advance(timedelta(days=8))
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert [(c["device_id"], c["action"]) for c in report["changes"]] == [("new-ipad", "delete")]
