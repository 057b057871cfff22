"""The console's OTP clients page over HTTP: the list with cursor pages, add (the API key shown on that answer
only), allow unsigned / require signed, disable; the rules of `scep-server otp-client` and /api/v1/otp-clients
(a name the service refuses, disabling twice); every change an event with the session's principal as actor;
anonymous requests, missing CSRF tokens and hostile values end in a redirect or a 4xx page, never a 500.
Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import base64
import html
import re

import pytest

from otp.service import CLIENT_KEY_BYTES
from trustkit.paging import PageRequest

from .conftest import CSRF

ROW = re.compile(r'<tr class="client" data-client="(\d+)">(.*?)</tr>', re.S)


def ids(text: str) -> list[int]:
    return [int(i) for i, _ in ROW.findall(text)]


async def clients(console) -> dict:
    page = await console.srv.runtime.otp.list_clients(PageRequest(limit=100, after=None))
    return {c.id: c for c in page.items}


async def client_events(console) -> list[tuple]:
    rows = await console.srv.runtime.otp.store.events(kind_prefix="otp.client.")
    return [(e["kind"], e["client_id"], e["actor"]) for e in rows]


def actor(console) -> str:
    return f"token:{console.admin_id}:console-admin"


async def test_anonymous_requests_go_to_the_sign_in_page(console):
    for path in ("/admin/otp-clients", "/admin/otp-clients/new", "/admin/otp-clients/1/disable"):
        status, headers, _ = await console.get(path)
        assert status == 303 and headers["Location"] == "/admin/login", path
    for path in ("/admin/otp-clients/new", "/admin/otp-clients/1/disable"):
        status, headers, _ = await console.post(path, {"csrf": "0" * 64, "name": "x"})
        assert status == 303 and headers["Location"] == "/admin/login", path
    assert await clients(console) == {}


async def test_posts_without_the_sessions_csrf_token_or_from_another_site_are_refused(console):
    info, _ = await console.srv.runtime.otp.add_client("existing")
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie, "/admin/otp-clients/new")
    for form in ({"name": "rp"}, {"name": "rp", "csrf": "0" * 64}):
        status, _, text = await console.post("/admin/otp-clients/new", form, cookie)
        assert status == 403 and "CSRF" in text
        for action in ("disable", "allow-unsigned"):
            status, _, _ = await console.post(f"/admin/otp-clients/{info.id}/{action}", form, cookie)
            assert status == 403, (form, action)
    status, _, _ = await console.post(f"/admin/otp-clients/{info.id}/disable", {"csrf": token}, cookie,
                                      headers={"Origin": "https://evil.example"})
    assert status == 403
    assert list(await clients(console)) == [info.id]
    assert (await clients(console))[info.id].active and not (await clients(console))[info.id].allow_unsigned


async def test_add_shows_the_key_once_then_set_and_disable_are_audited_with_the_session(console):
    cookie, _ = await console.sign_in()
    status, _, text = await console.get("/admin/otp-clients", cookie)
    assert status == 200 and "No OTP client." in text and 'href="/admin/otp-clients"' in text  # in the navigation
    status, _, text = await console.get("/admin/otp-clients/new", cookie)
    assert status == 200 and 'id="add-form"' in text
    token = CSRF.search(text).group(1)
    status, _, text = await console.post("/admin/otp-clients/new", {"csrf": token, "name": "<b>vpn</b>",
                                                                   "allow_unsigned": "1"}, cookie)
    assert status == 201 and "&lt;b&gt;vpn&lt;/b&gt;" in text and "<b>vpn" not in text
    client_id = int(re.search(r'id="client-id">(\d+)<', text).group(1))
    key = re.search(r'id="api-key">([^<]+)<', text).group(1)
    assert len(base64.b64decode(key, validate=True)) == CLIENT_KEY_BYTES
    found = await clients(console)
    assert found[client_id].name == "<b>vpn</b>" and found[client_id].allow_unsigned and found[client_id].active
    # the key is never shown again: not in the list, nor in a confirmation page
    _, _, text = await console.get("/admin/otp-clients", cookie)
    assert ids(text) == [client_id] and key not in text and "unsigned accepted" in text
    _, _, text = await console.get(f"/admin/otp-clients/{client_id}/require-signed", cookie)
    assert key not in text and 'id="confirm"' in text
    status, headers, _ = await console.post(f"/admin/otp-clients/{client_id}/require-signed", {"csrf": token}, cookie)
    assert status == 303 and headers["Location"] == "/admin/otp-clients"
    assert not (await clients(console))[client_id].allow_unsigned
    assert (await console.post(f"/admin/otp-clients/{client_id}/allow-unsigned", {"csrf": token}, cookie))[0] == 303
    assert (await clients(console))[client_id].allow_unsigned
    status, headers, _ = await console.post(f"/admin/otp-clients/{client_id}/disable", {"csrf": token}, cookie)
    assert status == 303 and not (await clients(console))[client_id].active
    _, _, text = await console.get("/admin/otp-clients", cookie)
    assert ">disabled<" in text and f'id="disable-{client_id}"' not in text
    # disabling twice: a conflict, as on the command line and in the API
    status, headers, text = await console.post(f"/admin/otp-clients/{client_id}/disable", {"csrf": token}, cookie)
    assert status == 409 and "already disabled" in text and headers["Content-Type"].startswith("text/html")
    me = actor(console)
    assert await client_events(console) == [("otp.client.added", client_id, me), ("otp.client.changed", client_id, me),
                                            ("otp.client.changed", client_id, me),
                                            ("otp.client.disabled", client_id, me)]


async def test_a_name_the_service_refuses_gives_the_form_again(console):
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie, "/admin/otp-clients/new")
    for form, status_expected in (({"name": "x" * 256}, 400), ({"name": "a\x01b"}, 400),
                                  ({"name": "ok", "allow_unsigned": "maybe"}, 400)):
        status, headers, text = await console.post("/admin/otp-clients/new", {**form, "csrf": token}, cookie)
        assert status == status_expected and 'id="error"' in text and 'id="api-key"' not in text, form
    assert await clients(console) == {} and await client_events(console) == []


async def test_cursor_pages(console):
    made = [(await console.srv.runtime.otp.add_client(f"rp-{i}"))[0].id for i in range(3)]
    cookie, _ = await console.sign_in()
    _, _, text = await console.get("/admin/otp-clients?limit=2", cookie)
    assert ids(text) == made[:2]
    nxt = html.unescape(re.search(r'<a href="([^"]+)" id="next"', text).group(1))
    _, _, text = await console.get(nxt, cookie)
    assert ids(text) == made[2:] and 'id="next"' not in text


@pytest.mark.parametrize("path, expected", [
    ("/admin/otp-clients?limit=0", 400), ("/admin/otp-clients?limit=-1", 400),
    ("/admin/otp-clients?cursor=not-a-cursor", 400), ("/admin/otp-clients?cursor=%00%FF", 400),
    ("/admin/otp-clients/abc/disable", 400), ("/admin/otp-clients/%C2%B2/disable", 400),
    ("/admin/otp-clients/-1/disable", 400), ("/admin/otp-clients/0/disable", 404),
    ("/admin/otp-clients/99999999999/disable", 404), ("/admin/otp-clients/12345/disable", 404),
    ("/admin/otp-clients/1/enable", 404), ("/admin/otp-clients/%3Cscript%3E/disable", 400)])
async def test_hostile_values_are_a_4xx_page(console, path, expected):
    await console.srv.runtime.otp.add_client("one")
    cookie, _ = await console.sign_in()
    status, headers, text = await console.get(path, cookie)
    assert status == expected and headers["Content-Type"].startswith("text/html") and "<script" not in text, path
    if "/admin/otp-clients/" in path:
        token = await console.csrf(cookie)
        status, _, _ = await console.post(path, {"csrf": token}, cookie)
        assert status == expected, path
