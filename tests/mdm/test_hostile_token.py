"""A Jamf (or Graph) token endpoint that answers an access_token with CR/LF (which aiohttp refuses to put in a
header) makes the sync unavailable and recorded as such, not a 500."""
from __future__ import annotations

import pytest
from aiohttp import web

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


async def test_a_token_with_crlf_is_an_unreadable_mdm_not_a_500(server, api, aiohttp_server, secret_env):
    async def token(request):
        await request.post()
        return web.json_response({"access_token": "tok\r\nX-Injected: 1", "expires_in": 60})

    app = web.Application()
    app.router.add_post("/api/oauth/token", token)
    peer = await aiohttp_server(app, host="127.0.0.1")
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": "udid"}, actor="cli:admin")
    async with api.session.post(api.url + "/api/v1/mdm/jamf/sync", json={}, headers=api.admin) as resp:
        status = resp.status
        text = await resp.text()
    assert status == 502, (status, text[:300])  # the documented "MDM could not be read" answer
    shown = await api.get("/api/v1/mdm/jamf")
    assert (shown["last_sync_outcome"] or "").startswith("error:"), shown
