"""Jamf's totalCount is only a hint of where a listing ends: a total smaller than the listing (a Jamf paging fault,
a count cached by a proxy, records the count leaves out) stopped the read once that many records were in, so the
devices on the later pages looked gone and were held, then revoked after the grace period. The read goes on until
a page comes back short; a listing with more records than its total is unreadable."""
from __future__ import annotations

import pytest
from aiohttp import web

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET
from tests.mdm.test_jamf_records_without_fields import jamf_peer


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


@pytest.mark.parametrize("listed,total", [(105, 100), (105, 104), (3, 2)])
async def test_a_total_smaller_than_the_listing_takes_nothing_down(server, api, aiohttp_server, secret_env,
                                                                   listed, total):
    computers = [f"udid-{i:03d}" for i in range(listed)]
    answer = {"total": None}

    async def inventory(request):
        n, size = int(request.query["page"]), int(request.query["page-size"])
        items = [{"id": str(i), "udid": u, "general": {"remoteManagement": {"managed": True}}}
                 for i, u in enumerate(computers)]
        return web.json_response({"totalCount": answer["total"] or len(items),
                                  "results": items[n * size:(n + 1) * size]})

    peer = await jamf_peer(aiohttp_server, inventory)
    for d in computers:
        await api.add_device(d)
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": "udid"}, actor="cli:admin")
    first = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert first["records"] == listed and first["changes"] == []

    answer["total"] = total
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True, expect=None)
    assert report["changes"] == [] and report["error"], report
    statuses = {(await api.get(f"/api/v1/devices/{d}"))["status"] for d in computers}
    assert statuses == {"active"}


async def test_a_listing_of_exactly_full_pages_is_read_to_its_end(server, api, aiohttp_server, secret_env):
    computers = [f"udid-{i:03d}" for i in range(200)]
    pages = []

    async def inventory(request):
        n, size = int(request.query["page"]), int(request.query["page-size"])
        pages.append(n)
        items = [{"id": str(i), "udid": u, "general": {"remoteManagement": {"managed": True}}}
                 for i, u in enumerate(computers)]
        return web.json_response({"totalCount": len(items), "results": items[n * size:(n + 1) * size]})

    peer = await jamf_peer(aiohttp_server, inventory)
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": "udid"}, actor="cli:admin")
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert report["records"] == 200 and pages == [0, 1, 2]
