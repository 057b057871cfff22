"""The console's "Forget stored CRLs" of an external (customer) CA, the console's `ca forget-external-crls` /
POST /api/v1/external-cas/{name}/forget-crls: a link on the CA's row (and a hint beside a rollback or
scope_mismatch failure), a confirmation page saying when to use it, then the CA's recorded last good CRLs are
forgotten through ExternalCas.forget_crls (a `pki.ca.forget_crls` event whose actor is the session's principal)
and a page says how many; the server's checker then takes the CRL it refused as a rollback. Anonymous requests go
to the sign-in page, a POST without the session's CSRF token or from another site is refused (403) and forgets
nothing, hostile or unknown names are a 4xx page, never a 500. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import html
import json
import re
from datetime import timedelta

import sqlalchemy as sa

from crl.check import FailureKind
from crl.config import Policy
from scep_server.store.tables import events
from tests.crl.customer_ca import Ca

from .conftest import CSRF, open_console

URL = "http://127.0.0.1:9/restored.crl"
ROW = re.compile(r'<tr class="external-ca" data-name="([^"]*)">(.*?)</tr>', re.S)


async def forgettings(console) -> list[tuple]:
    async with console.srv.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.subject, events.c.actor, events.c.data)
                                   .where(events.c.kind == "pki.ca.forget_crls").order_by(events.c.id))).all()
    return [(subject, actor, json.loads(data) if isinstance(data, str) else data) for subject, actor, data in rows]


async def restored_ca(console, name: str = "acme & co"):
    """A customer CA registered as `name` whose checker took CRL 50, then refused CRL 40 (the CA restored from a
    backup) as a rollback; returns (the CA's checker, CRL 50, CRL 40)."""
    rt = console.srv.runtime
    external = rt.binding.external
    now = rt.clock()
    ca = Ca("Restored Customer CA", slot=43, cdp=URL)
    await external.add(name, ca.cert, policy=Policy.FAIL_CLOSED, actor="test", now=now)
    await external.reload()
    ahead = ca.crl(number=50, this_update=now - timedelta(hours=3), next_update=now + timedelta(days=7))
    restored = ca.crl(number=40, this_update=now - timedelta(hours=1), next_update=now + timedelta(days=7))
    assert (await external.checker.install(name, URL, ahead)).ok
    # the checker's own first fetch of the URL (refused: not a public address) may end after the refusal and be
    # the last failure shown: refuse the restored CRL again until the rollback is the last word (one fetch only)
    for _ in range(100):
        assert (await external.checker.install(name, URL, restored)).failure is FailureKind.ROLLBACK
        if external.outcomes()[name].last_failure == "rollback":
            break
        await asyncio.sleep(0.05)
    assert external.outcomes()[name].last_failure == "rollback"
    return external.checker, ahead, restored


async def test_forget_stored_crls_from_the_ca_row_with_a_confirmation_audited_with_the_session(console):
    checker, _, restored = await restored_ca(console)
    cookie, _ = await console.sign_in()
    status, _, text = await console.get("/admin/external-cas", cookie)
    assert status == 200
    row = dict((html.unescape(n), body) for n, body in ROW.findall(text))["acme & co"]
    link = "/admin/external-cas/forget-crls?name=acme+%26+co"
    assert "rollback: " in row and f'href="{link}" class="forget-hint"' in row  # the remedy beside the refusal
    assert f'href="{link}" class="forget">Forget stored CRLs</a>' in row
    # the confirmation page: what it does, when to use it, the CA's current refusal
    status, _, text = await console.get(link, cookie)
    assert status == 200 and 'action="/admin/external-cas/forget-crls"' in text
    assert 'name="name" value="acme &amp; co"' in text and 'id="last-failure">rollback: ' in text
    assert "restored from a backup" in text and "scope_mismatch" in text and 'id="no-refusal"' not in text
    assert "<script" not in text and "style=" not in text  # the Content-Security-Policy allows neither inline
    assert await forgettings(console) == []  # a GET changes nothing
    token = CSRF.search(text).group(1)
    status, headers, text = await console.post("/admin/external-cas/forget-crls",
                                               {"csrf": token, "name": "acme & co"}, cookie)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert re.search(r'id="result">1 recorded CRL forgotten', text)
    assert 'href="/admin/external-cas?name=acme+%26+co"' in text
    me = f"token:{console.admin_id}:console-admin"
    assert await forgettings(console) == [("acme & co", me, {"records": 1})]
    # this process's checker was reloaded: the restored CA's CRL is taken now, and recorded as the floor
    assert (await checker.install("acme & co", URL, restored)).ok
    # nothing recorded any more (the refused CRL was taken): forgetting again says so
    status, _, text = await console.post("/admin/external-cas/forget-crls", {"csrf": token, "name": "acme & co"},
                                         cookie)
    assert status == 200 and 'id="result">1 recorded CRL forgotten' in text  # CRL 40's record, taken just now
    # a CA whose last outcome is no rollback: the page warns that whatever is served next becomes the floor
    status, _, text = await console.get(link, cookie)
    assert status == 200 and 'id="no-refusal"' in text
    # unknown and hostile names: a 4xx page, nothing forgotten
    for form in ({"name": "nobody"}, {"name": ""}, {"name": "x" * 300}, {}):
        status, _, _ = await console.post("/admin/external-cas/forget-crls", {**form, "csrf": token}, cookie)
        assert status in (400, 404), form
    for path, expected in (("?name=nobody", 404), ("", 400), ("?name=", 400), ("?name=%00", 400),
                           ("?name=" + "y" * 300, 400), ("?name=%3Cscript%3E", 404)):
        status, headers, text = await console.get("/admin/external-cas/forget-crls" + path, cookie)
        assert status == expected and headers["Content-Type"].startswith("text/html") and "<script" not in text, path
    assert len(await forgettings(console)) == 2


async def test_without_the_sessions_csrf_token_from_another_site_or_anonymous_nothing_is_forgotten(console):
    checker, _, restored = await restored_ca(console, "acme")
    for path in ("/admin/external-cas/forget-crls?name=acme",):
        status, headers, _ = await console.get(path)
        assert status == 303 and headers["Location"] == "/admin/login"
    status, headers, _ = await console.post("/admin/external-cas/forget-crls", {"csrf": "0" * 64, "name": "acme"})
    assert status == 303 and headers["Location"] == "/admin/login"
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie, "/admin/external-cas/forget-crls?name=acme")
    for csrf in (None, "f" * 64):
        form = {"name": "acme", **({"csrf": csrf} if csrf else {})}
        status, _, text = await console.post("/admin/external-cas/forget-crls", form, cookie)
        assert status == 403 and "CSRF" in text
    other, _ = await console.sign_in()  # another session's token is not this one's
    status, _, _ = await console.post("/admin/external-cas/forget-crls", {"name": "acme", "csrf": token}, other)
    assert status == 403
    status, _, _ = await console.post("/admin/external-cas/forget-crls", {"name": "acme", "csrf": token}, cookie,
                                      headers={"Origin": "https://evil.example"})
    assert status == 403
    assert await forgettings(console) == []
    await console.srv.runtime.binding.external.reload()
    assert (await checker.install("acme", URL, restored)).failure is FailureKind.ROLLBACK  # still recorded


async def test_no_external_cas_here_without_the_binding_capability(aiohttp_server, tmp_path, db_url):
    console = await open_console(aiohttp_server, tmp_path, db_url, binding={"enabled": False})
    try:
        cookie, _ = await console.sign_in()
        token = await console.csrf(cookie)
        assert (await console.get("/admin/external-cas/forget-crls?name=acme", cookie))[0] == 404
        status, _, _ = await console.post("/admin/external-cas/forget-crls", {"csrf": token, "name": "acme"}, cookie)
        assert status == 404
    finally:
        await console.http.close()
