"""A Jamf answer whose records lack the section their id or managed flag is in (a section the API role cannot see,
a Jamf version that renames a field, a proxy that trims the body) is an unreadable inventory, not a verdict: read
as one, it would take every known device down ("no longer managed", or "gone" and deleted after the grace)."""
from __future__ import annotations

import pytest
from aiohttp import web

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


async def jamf_peer(aiohttp_server, computers):
    """A Jamf Pro server whose computers inventory is answered by `computers` (no mobile devices)."""
    async def token(request):
        return web.json_response({"access_token": "t", "expires_in": 60})

    async def mobiles(request):
        return web.json_response({"totalCount": 0, "results": []})

    app = web.Application()
    app.router.add_post("/api/oauth/token", token)
    app.router.add_get("/api/v1/computers-inventory", computers)
    app.router.add_get("/api/v2/mobile-devices/detail", mobiles)
    return await aiohttp_server(app, host="127.0.0.1")


FULL = [{"id": str(i), "udid": f"mac-{i}", "general": {"remoteManagement": {"managed": True}},
         "hardware": {"serialNumber": f"SER{i}"}} for i in range(3)]


@pytest.mark.parametrize("id_field,broken", [
    ("udid", [{"id": str(i), "udid": f"mac-{i}"} for i in range(3)]),  # no GENERAL section
    ("serial_number", [{"id": str(i), "udid": f"mac-{i}", "general": {"remoteManagement": {"managed": True}}}
                       for i in range(3)]),  # no HARDWARE section
])
async def test_records_without_the_fields_read_take_nothing_down(server, api, aiohttp_server, secret_env,
                                                                 id_field, broken):
    answer = {"computers": {"totalCount": 3, "results": FULL}}

    async def computers(request):
        return web.json_response(answer["computers"])

    peer = await jamf_peer(aiohttp_server, computers)
    ids = [f"mac-{i}" if id_field == "udid" else f"SER{i}" for i in range(3)]
    for d in ids:
        await api.add_device(d)
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": id_field}, actor="cli:admin")
    assert (await api.post("/api/v1/mdm/jamf/sync", {}, admin=True))["changes"] == []

    answer["computers"] = {"totalCount": 3, "results": broken}
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True, expect=None)
    statuses = {d: (await api.get(f"/api/v1/devices/{d}"))["status"] for d in ids}
    assert set(statuses.values()) == {"active"}, (statuses, report["changes"])
