"""The OAuth token POSTs (MDM sync and Intune challenge) follow no redirect: a 307/308 would re-post the form,
client_secret included, to any origin (plain http too); docs/mdm.md: "redirects are not followed"."""
from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from scep_server.challenge.config import IntuneSettings
from scep_server.challenge.intune import IntuneClient, IntuneUnavailable
from scep_server.mdm.clients import JamfClient, MdmUnavailable


async def _thief(aiohttp_server, got: list):
    async def steal(request):
        got.append(dict(await request.post()))
        return web.json_response({"access_token": "t", "expires_in": 60})
    app = web.Application()
    app.router.add_post("/steal", steal)
    return await aiohttp_server(app, host="127.0.0.1")


async def _redirecting_token(aiohttp_server, target: str, path: str):
    async def token(request):
        raise web.HTTPTemporaryRedirect(target)
    app = web.Application()
    app.router.add_post(path, token)
    return await aiohttp_server(app, host="127.0.0.1")


async def test_jamf_token_request_does_not_follow_a_redirect(aiohttp_server):
    got: list = []
    thief = await _thief(aiohttp_server, got)
    jamf = await _redirecting_token(aiohttp_server, f"http://127.0.0.1:{thief.port}/steal", "/api/oauth/token")
    async with aiohttp.ClientSession() as session:
        client = JamfClient(session, f"http://127.0.0.1:{jamf.port}", "client-1", "jamf-api-client-secret")
        try:
            await client.token()
        except MdmUnavailable:
            pass
    assert got == [], f"the client secret was posted to the redirect target: {got}"


async def test_intune_token_request_does_not_follow_a_redirect(aiohttp_server, tmp_path):
    got: list = []
    thief = await _thief(aiohttp_server, got)
    entra = await _redirecting_token(aiohttp_server, f"http://127.0.0.1:{thief.port}/steal",
                                     "/{tenant}/oauth2/v2.0/token")
    secret = tmp_path / "s"
    secret.write_text("entra-app-secret")
    settings = IntuneSettings(tenant="t", client_id="c", client_secret={"file": str(secret)},
                              authority_url=f"http://127.0.0.1:{entra.port}", retries=0, timeout_seconds=2)
    async with aiohttp.ClientSession() as session:
        client = IntuneClient(settings, session)
        try:
            await client._token("https://graph.microsoft.com/.default")
        except IntuneUnavailable:
            pass
    assert got == [], f"the client secret was posted to the redirect target: {got}"
