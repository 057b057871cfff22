"""Graph managed devices with every property, not only the ones asked for ($select not honoured: a real managed
device has a hundred properties, kilobytes of them): the sync keeps what it reads records from, not the whole
answer, so the memory a reading holds follows the number of devices, not what the peer chose to send."""
from __future__ import annotations

import tracemalloc

import aiohttp
from aiohttp import web

from scep_server.mdm.clients import GraphClient
from tests.mdm.peers import CLIENT_SECRET, GraphPeer

DEVICES, PAGE, EXTRA = 2000, 100, 10_000  # 20 MB of properties nobody asked for


async def test_properties_not_selected_are_not_kept(aiohttp_server):
    graph = GraphPeer(page_size=PAGE)
    for i in range(DEVICES):
        graph.device(f"intune-{i:05d}", f"aad-{i:05d}")
    app = graph.app()

    @web.middleware
    async def every_property(request, handler):
        resp = await handler(request)
        if request.path.endswith("/managedDevices"):
            import json

            body = json.loads(resp.body)
            body["value"] = [{**d, "notes": "x" * EXTRA} for d in body["value"]]
            return web.json_response(body)
        return resp

    app.middlewares.append(every_property)
    peer = await aiohttp_server(app, host="127.0.0.1")
    url = f"http://127.0.0.1:{peer.port}"
    async with aiohttp.ClientSession() as session:
        client = GraphClient(session, graph.tenant, "client", CLIENT_SECRET, authority_url=url, graph_url=url)
        tracemalloc.start()
        try:
            managed = await client.managed_devices()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(managed) == DEVICES
    records = client.records(managed, {})
    assert [r.device_id for r in records[:2]] == ["intune-00000", "intune-00001"]
    assert held < DEVICES * EXTRA / 4, f"{held} bytes held after reading {DEVICES} devices"
