"""An external CA's name is one the console can show and type back: printable, in Unicode NFC. Names that merely
look like another (an invisible character, another spelling of a letter) or hide a line break or a direction
override are refused by the API (and so by the command line and the console, which add through the same store)."""
from __future__ import annotations

import aiohttp

from tests.app.test_list_paging import external_ca_pem
from tests.server import start_app


async def test_names_that_look_alike_or_hold_controls_are_refused(aiohttp_server, tmp_path, db_url):
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    rt = srv.runtime
    _, token = await rt.tokens.create(scope="admin", name="ops", now=rt.clock())
    made = {}
    async with aiohttp.ClientSession(srv.url, headers={"Authorization": f"Bearer {token}"}) as http:
        for i, name in enumerate(["acme", "caf\u00e9", "acme\u200b", "cafe\u0301", "evil\nline", "\u202eemca"]):
            async with http.post("/api/v1/external-cas",
                                 json={"name": name, "certificate": external_ca_pem(f"x{i}")}) as resp:
                made[name] = resp.status
    assert made == {"acme": 201, "caf\u00e9": 201, "acme\u200b": 400, "cafe\u0301": 400, "evil\nline": 400,
                    "\u202eemca": 400}, made
