"""Jamf pages by offset: a computer deleted in Jamf Pro while a sync reads shifts every later record one place
forward, so one record is never read and the smaller totalCount hides it. A listing whose total changes between
pages is unreadable (read again at the next sync): the device skipped, managed all along, is not taken down."""
from __future__ import annotations

import pytest
from aiohttp import web

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET
from tests.mdm.test_jamf_records_without_fields import jamf_peer

VICTIM = "udid-100"


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


async def test_a_deletion_during_the_read_does_not_take_down_a_managed_device(server, api, aiohttp_server,
                                                                              secret_env):
    computers = [f"udid-{i:03d}" for i in range(150)]
    delete_after_page0 = {"armed": False}

    async def inventory(request):
        n, size = int(request.query["page"]), int(request.query["page-size"])
        items = [{"id": str(i), "udid": u, "general": {"remoteManagement": {"managed": True}}}
                 for i, u in enumerate(computers)]
        body = {"totalCount": len(items), "results": items[n * size:(n + 1) * size]}
        if n == 0 and delete_after_page0["armed"]:
            computers.remove("udid-000")  # an administrator deletes a computer in Jamf Pro meanwhile
        return web.json_response(body)

    peer = await jamf_peer(aiohttp_server, inventory)
    await api.add_device(VICTIM)
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": "udid"}, actor="cli:admin")
    first = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert first["changes"] == []

    delete_after_page0["armed"] = True
    second = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True, expect=None)
    device = await api.get(f"/api/v1/devices/{VICTIM}")
    assert device["status"] == "active", (device["status"], second)
