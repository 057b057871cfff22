"""Admin API input no store takes ends in a 4xx, on both databases: a forged cursor whose row id does not fit the
32-bit id column, a NUL in a report filter, a multipart part header that does not parse."""
from __future__ import annotations

from aiohttp import web

from otp.web import add_routes
from trustkit.paging import encode_cursor

from .test_web import ADMIN, authenticate


async def _api(aiohttp_client, service):
    app = web.Application()
    add_routes(app, service, authenticate=authenticate)
    return await aiohttp_client(app)


async def test_a_cursor_beyond_the_id_column_is_invalid(aiohttp_client, service):
    api = await _api(aiohttp_client, service)
    for path, cursor in (("/api/v1/yubikeys", [1, 2 ** 40]), ("/api/v1/otp-clients", [2 ** 40])):
        resp = await api.get(path, params={"cursor": encode_cursor(cursor)}, headers=ADMIN)
        assert resp.status == 400 and (await resp.json())["code"] == "invalid_cursor", path
    resp = await api.get("/api/v1/yubikeys", params={"cursor": encode_cursor([2 ** 62, 1])}, headers=ADMIN)
    assert resp.status == 200  # a serial is 64 bits


async def test_a_report_filter_no_store_holds_is_refused(aiohttp_client, service):
    api = await _api(aiohttp_client, service)
    for params in ({"user": "a\x00b"}, {"public_id": "\x00"}, {"user": "u" * 256}):
        resp = await api.get("/api/v1/yubikeys", params=params, headers=ADMIN)
        assert resp.status == 400, params


async def test_a_multipart_part_header_that_does_not_parse_is_a_400(aiohttp_client, service):
    api = await _api(aiohttp_client, service)
    resp = await api.post("/api/v1/yubikeys/import", data=b"--xx\r\nBad Header Line\r\n\r\nabc\r\n--xx--\r\n",
                          headers=ADMIN | {"Content-Type": "multipart/form-data; boundary=xx"})
    assert resp.status == 400
