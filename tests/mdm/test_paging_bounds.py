"""A peer that serves the same page forever (Jamf: a constant page and a huge totalCount; Graph: an
@odata.nextLink pointing at itself) or pages larger than asked is unreadable after a few pages, not read 10,000
times with every record kept in memory."""
from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from scep_server.mdm.clients import GraphClient, JamfClient, MdmUnavailable

ITEMS = 2000  # 20x the page size the client asks for


def _token_app() -> web.Application:
    async def token(request):
        return web.json_response({"access_token": "t", "expires_in": 3600})
    app = web.Application()
    app.router.add_post("/api/oauth/token", token)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    return app


async def _drive(coro, served: list, seconds: float = 8.0):
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.wait_for(asyncio.shield(task), seconds)
        outcome = "returned"
    except MdmUnavailable as exc:
        outcome = f"MdmUnavailable: {exc}"
    except asyncio.TimeoutError:
        task.cancel()
        outcome = "still reading"
    return outcome


async def test_jamf_repeating_page_is_not_read_ten_thousand_times(aiohttp_server):
    served: list[int] = []
    page = {"totalCount": 10 ** 9, "results": [
        {"id": str(i), "udid": f"udid-{i}", "general": {"remoteManagement": {"managed": True}}} for i in range(ITEMS)]}

    async def computers(request):
        served.append(int(request.query["page"]))
        return web.json_response(page)

    app = _token_app()
    app.router.add_get("/api/v1/computers-inventory", computers)
    peer = await aiohttp_server(app, host="127.0.0.1")
    async with aiohttp.ClientSession() as session:
        client = JamfClient(session, f"http://127.0.0.1:{peer.port}", "c", "s")
        outcome = await _drive(client.inventory(), served)
    assert len(served) <= 3, (f"{outcome} after {len(served)} identical pages of {ITEMS} devices "
                              f"({len(served) * ITEMS} records held)")


async def test_graph_self_referencing_next_link_is_not_followed_ten_thousand_times(aiohttp_server):
    served: list[str] = []

    async def managed(request):
        served.append(str(request.url))
        return web.json_response({
            "value": [{"id": f"dev-{i}", "azureADDeviceId": f"aad-{i}"} for i in range(ITEMS)],
            "@odata.nextLink": f"{request.url.origin()}/v1.0/deviceManagement/managedDevices?$skiptoken=same"})

    app = _token_app()
    app.router.add_get("/v1.0/deviceManagement/managedDevices", managed)
    peer = await aiohttp_server(app, host="127.0.0.1")
    base = f"http://127.0.0.1:{peer.port}"
    async with aiohttp.ClientSession() as session:
        client = GraphClient(session, "tenant", "c", "s", authority_url=base, graph_url=base)
        outcome = await _drive(client.managed_devices(), served)
    assert len(served) <= 3, (f"{outcome} after {len(served)} pages with the same next link "
                              f"({len(served) * ITEMS} records held)")
