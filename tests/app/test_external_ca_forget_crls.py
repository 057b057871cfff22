"""Forgetting the CRLs recorded for a customer CA: `POST /api/v1/external-cas/{name}/forget-crls` and
`scep-server ca forget-external-crls NAME` delete its records (a `pki.ca.forget_crls` event naming the caller) and
the server's checker takes the next valid CRL of each URL whatever its age: the way out for a CA restored from a
backup, whose CRLs are otherwise refused as a rollback for good. The command reaches a running server at its next
reload; an unknown name is a 404 problem (exit 1 on the command line). Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

from crl.check import FailureKind
from scep_server.store.tables import events
from tests.crl.customer_ca import Ca
from tests.server import start_app

from .test_list_paging import cli

URL = "http://127.0.0.1:9/restored.crl"


async def forgettings(engine) -> list[tuple]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.subject, events.c.actor, events.c.data)
                                   .where(events.c.kind == "pki.ca.forget_crls").order_by(events.c.id))).all()
    return [tuple(r) for r in rows]


async def test_forget_by_api_and_command(aiohttp_server, tmp_path, db_url):
    server = await start_app(aiohttp_server, tmp_path, db_url)
    rt = server.runtime
    now = rt.clock()
    ca = Ca("Restored Customer CA", slot=41, cdp=URL)
    ahead = ca.crl(number=50, this_update=now - timedelta(hours=3), next_update=now + timedelta(days=7))
    restored = ca.crl(number=40, this_update=now - timedelta(hours=1), next_update=now + timedelta(days=7))
    token_id, token = await rt.tokens.create(scope="admin", name="ops", now=now)
    checker = rt.binding.external.checker
    async with aiohttp.ClientSession(server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        pem = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
        async with http.post("/api/v1/external-cas", json={"name": "acme", "certificate": pem}) as r:
            assert r.status == 201, await r.text()
        assert (await checker.install("acme", URL, ahead)).ok
        # the customer restored its CA from a backup: every CRL it signs now goes backwards
        assert (await checker.install("acme", URL, restored)).failure is FailureKind.ROLLBACK
        async with http.post("/api/v1/external-cas/acme/forget-crls") as r:
            assert r.status == 200, await r.text()
            assert await r.json() == {"name": "acme", "forgotten": 1}
        assert (await checker.install("acme", URL, restored)).ok
        async with http.post("/api/v1/external-cas/nobody/forget-crls") as r:
            assert r.status == 404 and r.content_type == "application/problem+json"
            assert (await r.json())["code"] == "external_ca_not_found"
    # the command, from another process: the server follows at its next reload
    out, _ = await asyncio.to_thread(cli, server, db_url, "ca", "forget-external-crls", "acme")
    assert "external CA 'acme': 1 recorded CRL(s) forgotten" in out
    await rt.binding.external.reload()
    assert (await checker.install("acme", URL, ahead)).ok  # the highest number again, whatever its thisUpdate
    _, err = await asyncio.to_thread(cli, server, db_url, "ca", "forget-external-crls", "nobody", code=1)
    assert "no external CA 'nobody'" in err
    found = await forgettings(rt.engine)
    assert [(s, a) for s, a, _ in found][0] == ("acme", f"token:{token_id}:ops")
    assert found[-1][0] == "acme" and found[-1][1].startswith("cli:") and len(found) == 2
