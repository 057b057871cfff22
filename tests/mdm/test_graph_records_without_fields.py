"""Graph managed devices without their id or the field our device ids are read from (a $select Graph did not
honour, an answer of another shape) make the listing unreadable: read as records naming no device, they made every
device look gone (held at once, revoked after the grace period)."""
from __future__ import annotations

import json

import pytest
from aiohttp import web

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET, GraphPeer


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


@pytest.mark.parametrize("id_field,reshape", [
    ("device_id", lambda d: {k: v for k, v in d.items() if k != "id"}),  # no id
    ("device_id", lambda d: {**d, "id": 7}),  # an id of another type
    ("serial_number", lambda d: {k: v for k, v in d.items() if k != "serialNumber"}),  # $select not honoured
    ("azure_ad_device_id", lambda d: {k: v for k, v in d.items() if k != "azureADDeviceId"}),
])
async def test_graph_records_without_their_fields_take_nothing_down(server, api, aiohttp_server, secret_env,
                                                                    id_field, reshape):
    graph = GraphPeer()
    shape = {"fn": lambda d: d}

    @web.middleware
    async def reshaping(request, handler):  # Graph's managed devices, as `shape` makes them
        resp = await handler(request)
        if request.path.endswith("/managedDevices") and resp.status == 200:
            body = json.loads(resp.body)
            return web.json_response({**body, "value": [shape["fn"](d) for d in body["value"]]})
        return resp

    app = graph.app()
    app.middlewares.append(reshaping)
    peer = await aiohttp_server(app, host="127.0.0.1")
    base = f"http://127.0.0.1:{peer.port}"
    for i in range(3):
        graph.device(f"intune-{i}", f"aad-{i}")
        graph.managed[f"intune-{i}"]["serial"] = f"SN{i}"
    ids = {"device_id": [f"intune-{i}" for i in range(3)], "azure_ad_device_id": [f"aad-{i}" for i in range(3)],
           "serial_number": [graph.managed[f"intune-{i}"]["serial"] for i in range(3)]}[id_field]
    for d in ids:
        await api.add_device(d)
    await server.runtime.mdm.configure("intune", "intune", {
        "tenant": graph.tenant, "client_id": CLIENT_ID, "client_secret": secret_env, "id_field": id_field,
        "authority_url": base, "graph_url": base}, actor="cli:admin")
    first = await api.post("/api/v1/mdm/intune/sync", {}, admin=True)
    assert first["records"] == 3 and first["changes"] == []

    shape["fn"] = reshape
    report = await api.post("/api/v1/mdm/intune/sync", {}, admin=True, expect=None)
    statuses = {d: (await api.get(f"/api/v1/devices/{d}"))["status"] for d in ids}
    assert set(statuses.values()) == {"active"}, (statuses, report["changes"])
    assert report["error"] and report["changes"] == []
