"""What one sync holds is bounded by the number of records, not by the size of the answers: a Jamf record's device
id (its UDID or serial number), its Jamf id, a Graph managed device's properties and an Entra device id were kept
whole, so a broken or hostile peer could make one sync hold up to 10,000 pages of 8 MiB. A device id longer than
any of ours (64 characters) names no device of ours and is not kept; Graph's properties are kept cut short; a Jamf
id longer than that makes the listing unreadable (the sync fails and changes nothing)."""
from __future__ import annotations

import gc
import tracemalloc

import aiohttp
import pytest
from aiohttp import web

from scep_server.mdm.clients import GraphClient, JamfClient, MdmUnavailable
from tests.mdm.test_paging_bounds import _token_app

PAGES = 40
LONG = 10_000  # characters of each over-long value: pages of about 1 MB
HELD = 12 << 20  # at most this much more memory at the peak of a read of PAGES such pages (before: over 40 MiB)


async def _peak(coro):
    """The coroutine's result and the most memory it held beyond what was allocated before it."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = await coro
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _jamf_app(udid_of, id_of=str) -> web.Application:
    async def computers(request):
        n = int(request.query["page"])
        return web.json_response({"totalCount": PAGES * 100, "results": [
            {"id": id_of(n * 100 + i), "udid": udid_of(n * 100 + i),
             "general": {"name": "mac", "remoteManagement": {"managed": True}}, "hardware": {"serialNumber": "C02"}}
            for i in range(100)] if n < PAGES else []})

    async def mobiles(request):
        return web.json_response({"totalCount": 0, "results": []})

    app = _token_app()
    app.router.add_get("/api/v1/computers-inventory", computers)
    app.router.add_get("/api/v2/mobile-devices/detail", mobiles)
    return app


async def test_jamf_device_ids_longer_than_ours_are_not_held(aiohttp_server):
    # every record but one names its device with 10,000 characters; the one of 36 is a device that can be ours
    peer = await aiohttp_server(_jamf_app(lambda i: "A" * 36 if i == 7 else f"{i:05}" + "U" * LONG),
                                host="127.0.0.1")
    async with aiohttp.ClientSession() as session:
        client = JamfClient(session, f"http://127.0.0.1:{peer.port}", "c", "s")
        records, peak = await _peak(client.inventory())
    assert peak < HELD, f"{peak / 2 ** 20:.1f} MiB held reading {PAGES} pages"
    assert [r.device_id for r in records] == ["A" * 36]


async def test_a_jamf_id_longer_than_a_device_id_makes_the_listing_unreadable(aiohttp_server):
    peer = await aiohttp_server(_jamf_app(lambda i: f"udid-{i}", id_of=lambda i: f"{i:05}" + "9" * LONG),
                                host="127.0.0.1")
    async with aiohttp.ClientSession() as session:
        client = JamfClient(session, f"http://127.0.0.1:{peer.port}", "c", "s")
        with pytest.raises(MdmUnavailable, match="id"):
            await client.inventory()
    assert client.requests == 1


async def test_graph_properties_and_entra_ids_are_held_cut_short(aiohttp_server):
    per_page = 30  # about 1 MB a page

    async def managed(request):
        n = int(request.query.get("$skiptoken", "0"))
        body = {"value": [{"id": f"intune-{n}-{i}", "azureADDeviceId": f"{n}-{i}" + "a" * LONG,
                           "serialNumber": f"{n}-{i}" + "S" * LONG, "deviceName": "N" * LONG}
                          for i in range(per_page)]}
        if n + 1 < PAGES:
            body["@odata.nextLink"] = f"{request.url.origin()}/v1.0/deviceManagement/managedDevices?$skiptoken={n + 1}"
        return web.json_response(body)

    async def delta(request):
        n = int(request.query.get("$skiptoken", "0"))
        body = {"value": [{"deviceId": f"{n}-{i}" + "a" * LONG, "accountEnabled": False} for i in range(100)]}
        if n + 1 < PAGES:
            body["@odata.nextLink"] = f"{request.url.origin()}/v1.0/devices/delta?$skiptoken={n + 1}"
        else:
            body["@odata.deltaLink"] = f"{request.url.origin()}/v1.0/devices/delta?$deltatoken=1"
        return web.json_response(body)

    app = _token_app()
    app.router.add_get("/v1.0/deviceManagement/managedDevices", managed)
    app.router.add_get("/v1.0/devices/delta", delta)
    peer = await aiohttp_server(app, host="127.0.0.1")
    base = f"http://127.0.0.1:{peer.port}"
    async with aiohttp.ClientSession() as session:
        for id_field in ("serial_number", "azure_ad_device_id"):
            client = GraphClient(session, "tenant", "c", "s", authority_url=base, graph_url=base, id_field=id_field)
            managed_devices, peak = await _peak(client.managed_devices())
            assert len(managed_devices) == PAGES * per_page
            assert peak < HELD, f"{peak / 2 ** 20:.1f} MiB held reading {PAGES} pages of managed devices"
            assert client.records(managed_devices, {}) == []  # ids longer than ours name no device of ours
        (changes, link), peak = await _peak(client.entra_changes(None))
        assert changes == {} and link.endswith("$deltatoken=1")
        assert peak < HELD, f"{peak / 2 ** 20:.1f} MiB held reading {PAGES} pages of Entra devices"
