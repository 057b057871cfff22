"""Answers of an MDM that no earlier check foresaw are never an HTTP 500: a token whose lifetime is an integer of
hundreds of digits is a token used once, and a reading that raises is a failed, recorded sync that changes
nothing."""
from __future__ import annotations

import pytest
from aiohttp import web

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


async def test_a_token_lifetime_too_large_for_a_float_is_no_500(server, api, aiohttp_server, secret_env):
    async def token(request):
        return web.Response(text='{"access_token": "t", "expires_in": 1' + "0" * 400 + "}",
                            content_type="application/json")

    async def empty(request):
        return web.json_response({"totalCount": 0, "results": []})

    app = web.Application()
    app.router.add_post("/api/oauth/token", token)
    app.router.add_get("/api/v1/computers-inventory", empty)
    app.router.add_get("/api/v2/mobile-devices/detail", empty)
    peer = await aiohttp_server(app, host="127.0.0.1")
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": "udid"}, actor="cli:admin")
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert report["error"] is None and report["records"] == 0  # a lifetime it cannot read: the token is used once


async def test_a_sync_whose_reading_raises_is_a_recorded_error(server, api, secret_env):
    async def broken(config, state):
        raise KeyError("value")  # a fault no check foresaw

    mdm = server.runtime.mdm
    await mdm.configure("jamf", "jamf", {"url": "https://jamf.example", "client_id": CLIENT_ID,
                                         "client_secret": secret_env, "id_field": "udid"}, actor="cli:admin")
    mdm.reader = broken
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True, expect=502)
    assert report["changes"] == [] and "KeyError" in report["error"]
    assert (await api.get("/api/v1/mdm/jamf"))["last_sync_outcome"].startswith("error:")
