"""The MDM clients against peers that misbehave: too slow an answer, a listing that stops short. Either is an
MDM that cannot be read (MdmUnavailable: the sync records an error and changes nothing), never an exception
that escapes the sync, nor a short inventory whose missing devices would look gone."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from scep_server.mdm.clients import JamfClient, MdmUnavailable


def _token(delay: float = 0.0):
    async def token(request):
        await asyncio.sleep(delay)
        return web.json_response({"access_token": "t", "expires_in": 60})
    return token


async def test_an_mdm_slower_than_the_timeout_cannot_be_read(aiohttp_server):
    app = web.Application()
    app.router.add_post("/api/oauth/token", _token(delay=2))
    peer = await aiohttp_server(app, host="127.0.0.1")
    async with aiohttp.ClientSession() as session:
        client = JamfClient(session, f"http://127.0.0.1:{peer.port}", "c", "s", timeout=0.3)
        with pytest.raises(MdmUnavailable, match="token request"):
            await client.inventory()


async def test_a_listing_that_stops_before_its_total_cannot_be_read(aiohttp_server):
    async def computers(request):
        results = [{"id": "1", "udid": "d1", "general": {"remoteManagement": {"managed": True}}}]
        return web.json_response({"totalCount": 3, "results": results if request.query["page"] == "0" else []})

    async def mobiles(request):
        return web.json_response({"totalCount": 0, "results": []})

    app = web.Application()
    app.router.add_post("/api/oauth/token", _token())
    app.router.add_get("/api/v1/computers-inventory", computers)
    app.router.add_get("/api/v2/mobile-devices/detail", mobiles)
    peer = await aiohttp_server(app, host="127.0.0.1")
    async with aiohttp.ClientSession() as session:
        client = JamfClient(session, f"http://127.0.0.1:{peer.port}", "c", "s")
        with pytest.raises(MdmUnavailable, match="an empty page after 1 of 3 devices"):
            await client.inventory()
