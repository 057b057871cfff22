"""Unregistering a customer CA: `DELETE /api/v1/external-cas/{name}` and `scep-server ca remove-external NAME`
remove it (a `pki.ca.remove` event naming the caller), the process's CRL checker forgets it, an unknown name
is a 404 problem (exit 1 on the command line). Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
from urllib.parse import quote

import aiohttp
import sqlalchemy as sa

from scep_server.store.tables import events
from tests.server import start_app

from .test_list_paging import cli, external_ca_pem


async def removals(engine) -> list[tuple]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.subject, events.c.actor)
                                   .where(events.c.kind == "pki.ca.remove").order_by(events.c.id))).all()
    return [tuple(r) for r in rows]


async def test_remove_by_api_and_command(aiohttp_server, tmp_path, db_url):
    server = await start_app(aiohttp_server, tmp_path, db_url)
    rt = server.runtime
    token_id, token = await rt.tokens.create(scope="admin", name="ops", now=rt.clock())
    async with aiohttp.ClientSession(server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        for name in ("acme", "beta/two", "gamma"):
            async with http.post("/api/v1/external-cas", json={"name": name, "certificate": external_ca_pem("x" + name[0])}) as r:
                assert r.status == 201, await r.text()
        assert set(rt.binding.external.outcomes()) == {"acme", "beta/two", "gamma"}
        async with http.delete("/api/v1/external-cas/acme") as r:
            assert r.status == 200 and (await r.json())["name"] == "acme"
        async with http.delete("/api/v1/external-cas/" + quote("beta/two", safe="")) as r:
            assert r.status in (200, 404)  # a name with a slash: whatever the router makes of %2F, never a 500
        async with http.delete("/api/v1/external-cas/acme") as r:
            assert r.status == 404 and r.content_type == "application/problem+json"
            assert (await r.json())["code"] == "external_ca_not_found"
    assert "acme" not in rt.binding.external.outcomes()  # the checker forgot it
    out, _ = await asyncio.to_thread(cli, server, db_url, "ca", "remove-external", "gamma")
    assert "external CA 'gamma' removed" in out
    _, err = await asyncio.to_thread(cli, server, db_url, "ca", "remove-external", "gamma", code=1)
    assert "no external CA 'gamma'" in err
    names = [ca.name for ca in await rt.binding.external.list()]
    assert "acme" not in names and "gamma" not in names
    found = await removals(rt.engine)
    assert found[0] == ("acme", f"token:{token_id}:ops") and found[-1][0] == "gamma" and found[-1][1].startswith("cli:")
