"""The admin console over HTTP (no browser): security headers, cookie flags, server-side sessions (expiry,
sign-out, a disabled token), CSRF, the trusted header, and hostile input ending in a 4xx page.
Runs on SQLite and PostgreSQL (the sessions are a table)."""
from __future__ import annotations

import hashlib
import re

import pytest
import sqlalchemy as sa

from scep_server.store.tables import console_sessions, events

from .conftest import CSRF, open_console

PAGES = ("/admin/", "/admin/certificates", "/admin/certificates/1a2b", "/admin/certificates/1a2b/revoke",
         "/admin/certificates/1a2b/hold", "/admin/certificates/1a2b/release", "/admin/nothing-here",
         "/admin/certificates?status=valid", "/admin/enrolments", "/admin/enrolments/confirm", "/admin/devices",
         "/admin/devices/laptop-1", "/admin/devices/laptop-1/suspend")
HEADERS = {"X-Frame-Options": "DENY", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def assert_secure_headers(headers) -> None:
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    for name, value in HEADERS.items():
        assert headers[name] == value, name


async def test_sign_in_sets_a_strict_cookie_and_stores_only_its_digest(console):
    status, headers, text = await console.get("/admin/login")
    assert status == 200 and 'name="token"' in text
    assert_secure_headers(headers)
    cookie, jar = await console.sign_in()
    morsel = jar["console_session"]
    assert morsel["httponly"] is True and morsel["samesite"] == "Strict" and morsel["path"] == "/admin/"
    assert not morsel["secure"]  # plain http from a peer that is no trusted proxy
    status, headers, text = await console.get("/admin/", cookie)
    assert status == 200 and "CA default" in text and f"token:{console.admin_id}:console-admin" in text
    assert_secure_headers(headers)
    async with console.srv.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(console_sessions))).all()
    assert [r.id_sha256 for r in rows] == [hashlib.sha256(cookie.encode()).hexdigest()]
    assert all(cookie not in str(v) for v in rows[0])
    # the style sheet is served to anybody, with the same headers
    status, headers, _ = await console.get("/admin/static/console.css")
    assert status == 200
    assert_secure_headers(headers)
    # a name the file system refuses is a file that is not there, not an unavailable database
    for name in ("a" * 300, "a/" * 2100 + "x"):
        status, headers, _ = await console.get("/admin/static/" + name)
        assert status == 404 and "Retry-After" not in headers, (name[:10], status)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_cookie_is_secure_behind_a_trusted_https_proxy_only(aiohttp_server, tmp_path, db_url):
    proxied = await open_console(aiohttp_server, tmp_path / "a", db_url, server={"trusted_proxies": ["127.0.0.1/32"]})
    direct = await open_console(aiohttp_server, tmp_path / "a", db_url)  # another instance: the same CA directory
    try:
        https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.7"}
        _, jar = await proxied.sign_in(headers=https)
        assert jar["console_session"]["secure"] is True
        _, jar = await proxied.sign_in()
        assert not jar["console_session"]["secure"]
        _, jar = await direct.sign_in(headers=https)  # the header of a peer we do not trust is ignored
        assert not jar["console_session"]["secure"]
    finally:
        await proxied.http.close()
        await direct.http.close()


async def test_anonymous_requests_are_sent_to_sign_in(console):
    for path in PAGES + ("/admin",):
        status, headers, _ = await console.get(path)
        assert status == 303, path
        assert headers["Location"] in ("/admin/login", "/admin/"), path
        assert_secure_headers(headers)
    for path in ("/admin/logout", "/admin/certificates/1a2b/revoke", "/admin/enrolments/decide",
                 "/admin/devices/laptop-1/delete"):
        status, headers, _ = await console.post(path, {"csrf": "0" * 64})
        assert status == 303 and headers["Location"] == "/admin/login", path
    status, headers, _ = await console.get("/admin/", "not-a-session")  # an unknown cookie is no session
    assert status == 303 and headers["Location"] == "/admin/login"


async def test_only_an_enabled_admin_token_signs_in(console):
    rt = console.srv.runtime
    signin = (await rt.tokens.create(scope="signin", name="s", now=rt.clock()))[1]
    off_id, off = await rt.tokens.create(scope="admin", name="off", now=rt.clock())
    await rt.tokens.disable(off_id, now=rt.clock())
    for token in (signin, off, "dt_admin_" + "x" * 43, "", "x" * 5000, "é"):
        status, headers, text = await console.post("/admin/login", {"token": token})
        assert status == 403 and "Set-Cookie" not in headers, token[:20]
        assert "not an enabled admin API token" in text
        assert_secure_headers(headers)


async def test_idle_timeout_and_absolute_lifetime(aiohttp_server, tmp_path, db_url, clock):
    console = await open_console(aiohttp_server, tmp_path, db_url, clock,
                                 console={"idle_timeout": 900, "lifetime": 3600})
    try:
        cookie, _ = await console.sign_in()
        for _ in range(4):  # a request every 14 minutes keeps the session alive ...
            clock.advance(minutes=14)
            assert (await console.get("/admin/", cookie))[0] == 200
        clock.advance(minutes=14)  # ... until the absolute lifetime (60 min) ends it
        assert (await console.get("/admin/", cookie))[0] == 303
        cookie, _ = await console.sign_in()
        clock.advance(minutes=15)  # 15 minutes idle: ended
        status, headers, _ = await console.get("/admin/", cookie)
        assert status == 303 and headers["Location"] == "/admin/login"
        clock.advance(minutes=-15)  # ended for good, even if the clock went back
        assert (await console.get("/admin/", cookie))[0] == 303
    finally:
        await console.http.close()


async def test_sign_out_ends_the_session_server_side(console):
    cookie, _ = await console.sign_in()
    csrf = await console.csrf(cookie)
    status, headers, _ = await console.post("/admin/logout", {"csrf": csrf}, cookie)
    assert status == 303 and headers["Location"] == "/admin/login"
    assert "console_session=" in headers["Set-Cookie"]  # the browser forgets it ...
    status, headers, _ = await console.get("/admin/", cookie)  # ... and a copy of it is refused
    assert status == 303 and headers["Location"] == "/admin/login"
    async with console.srv.runtime.engine.connect() as conn:
        assert (await conn.execute(sa.select(console_sessions.c.ended_at))).scalar() is not None


async def test_a_disabled_token_ends_its_sessions(console):
    cookie, _ = await console.sign_in()
    assert (await console.get("/admin/", cookie))[0] == 200
    rt = console.srv.runtime
    assert await rt.tokens.disable(console.admin_id, now=rt.clock())
    status, headers, _ = await console.get("/admin/", cookie)
    assert status == 303 and headers["Location"] == "/admin/login"


async def test_state_changes_need_this_sessions_csrf_token(console):
    serial = await console.issue()
    cookie, _ = await console.sign_in()
    other, _ = await console.sign_in()
    other_csrf = await console.csrf(other)
    status, _, text = await console.get(f"/admin/certificates/{serial}/revoke", cookie)
    assert status == 200
    csrf = CSRF.search(text).group(1)
    assert csrf != other_csrf
    path = f"/admin/certificates/{serial}/revoke"
    for form in ({"reason": "key-compromise"}, {"reason": "key-compromise", "csrf": other_csrf},
                 {"reason": "key-compromise", "csrf": ""}, {"reason": "key-compromise", "csrf": "é" * 64}):
        status, headers, text = await console.post(path, form, cookie)
        assert status == 403 and "CSRF" in text, form
        assert_secure_headers(headers)
    status, _, _ = await console.post("/admin/logout", {}, cookie)
    assert status == 403
    assert (await console.srv.runtime.certificates.get(serial)).status.value == "valid"
    status, headers, _ = await console.post(path, {"reason": "key-compromise", "csrf": csrf}, cookie)
    assert status == 303 and headers["Location"] == f"/admin/certificates/{serial}"
    record = await console.srv.runtime.certificates.get(serial)
    assert record.status.value == "revoked" and record.revocation_reason == 1
    async with console.srv.runtime.engine.connect() as conn:
        actor = (await conn.execute(sa.select(events.c.actor).where(
            events.c.subject == serial, events.c.kind == "pki.cert.revoke"))).scalar()
    assert actor == f"token:{console.admin_id}:console-admin"


async def test_posts_from_another_origin_are_refused(console):
    serial = await console.issue()
    evil = {"Origin": "http://evil.example"}
    status, headers, _ = await console.post("/admin/login", {"token": console.admin}, headers=evil)
    assert status == 403 and "Set-Cookie" not in headers  # no login CSRF into an attacker's session
    cookie, _ = await console.sign_in(headers={"Origin": console.url})
    csrf = await console.csrf(cookie)
    for origin in ("http://evil.example", "null", console.url + ".evil.example"):
        status, _, text = await console.post(f"/admin/certificates/{serial}/hold", {"csrf": csrf}, cookie,
                                             headers={"Origin": origin})
        assert status == 403 and "another site" in text, origin
    assert (await console.srv.runtime.certificates.get(serial)).status.value == "valid"
    status, _, _ = await console.post(f"/admin/certificates/{serial}/hold", {"csrf": csrf}, cookie,
                                      headers={"Origin": console.url})
    assert status == 303


async def test_sign_in_and_out_are_audit_events(console):
    cookie, _ = await console.sign_in()
    csrf = await console.csrf(cookie)
    await console.post("/admin/logout", {"csrf": csrf}, cookie)
    async with console.srv.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.kind, events.c.subject, events.c.actor).where(
            events.c.kind.like("security.console.%")).order_by(events.c.id))).all()
    actor = f"token:{console.admin_id}:console-admin"
    assert [tuple(r) for r in rows] == [("security.console.signin", console.admin_id, actor),
                                        ("security.console.signout", None, actor)]


async def test_hold_and_release_through_the_forms(console):
    serial = await console.issue()
    cookie, _ = await console.sign_in()
    csrf = await console.csrf(cookie)
    status, _, text = await console.get(f"/admin/certificates/{serial}", cookie)
    assert 'id="action-hold"' in text and 'id="action-release"' not in text
    assert (await console.post(f"/admin/certificates/{serial}/hold", {"csrf": csrf}, cookie))[0] == 303
    status, _, text = await console.get(f"/admin/certificates/{serial}", cookie)
    assert 'id="status">hold' in text and 'id="action-release"' in text
    # releasing twice: the second is a conflict, shown as a page
    assert (await console.post(f"/admin/certificates/{serial}/release", {"csrf": csrf}, cookie))[0] == 303
    status, headers, _ = await console.post(f"/admin/certificates/{serial}/release", {"csrf": csrf}, cookie)
    assert 400 <= status < 500 and headers["Content-Type"].startswith("text/html")


async def test_hostile_input_is_a_4xx_page_and_output_is_escaped(console):
    serial = await console.issue(cn="<script>alert(1)</script>")
    cookie, _ = await console.sign_in()
    csrf = await console.csrf(cookie)
    status, _, text = await console.get(f"/admin/certificates/{serial}", cookie)
    assert status == 200 and "<script" not in text and "&lt;script\\&gt;alert(1)" in text
    cases = [("/admin/certificates?status=bogus", 400), ("/admin/certificates?issued_after=yesterday", 400),
             ("/admin/certificates?cursor=%00%FF", 400), ("/admin/certificates?limit=0", 400),
             ("/admin/certificates?serial_prefix=%3Cb%3E", 400), ("/admin/certificates/zz", 400),
             ("/admin/certificates/abcdef", 404), (f"/admin/certificates/{serial}/suspend", 404),
             ("/admin/certificates?profile=a&profile=b", 400)]
    for path, expected in cases:
        status, headers, text = await console.get(path, cookie)
        assert status == expected, (path, status)
        assert headers["Content-Type"].startswith("text/html") and "<b>" not in text
        assert_secure_headers(headers)
    status, _, text = await console.post(f"/admin/certificates/{serial}/revoke",
                                         {"csrf": csrf, "reason": "<i>never</i>"}, cookie)
    assert status == 400 and "<i>" not in text
    status, _, _ = await console.post("/admin/certificates/abcdef/hold", {"csrf": csrf}, cookie)
    assert status == 404


async def test_bodies_that_are_no_form_are_refused_not_500(console):
    garbage = [({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\nnot a part"),
               ({"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, b"token=%FF%FE\xff\xfe"),
               ({"Content-Type": "application/json"}, b'{"token": "x"}'), ({}, b"\x00" * 100)]
    cookie, _ = await console.sign_in()
    for path, jar in (("/admin/login", None), ("/admin/logout", cookie), ("/admin/certificates/1a/hold", cookie)):
        for headers, body in garbage:
            if jar:
                headers = {**headers, "Cookie": f"console_session={jar}"}
            async with console.http.post(console.url + path, data=body, headers=headers,
                                         allow_redirects=False) as r:
                assert r.status == 403, (path, headers, r.status)
    assert (await console.get("/admin/", cookie))[0] == 200


async def test_certificate_filters_and_pages(console, clock):
    first = await console.issue(cn="first")
    clock.advance(1)
    second = await console.issue(cn="second")
    cookie, _ = await console.sign_in()
    _, _, text = await console.get("/admin/certificates?limit=1", cookie)
    assert f'data-serial="{second}"' in text and f'data-serial="{first}"' not in text  # newest first
    href = re.search(r'href="([^"]+)" id="next"', text).group(1).replace("&amp;", "&")
    assert "cursor=" in href and "limit=1" in href
    _, _, text = await console.get(href, cookie)
    assert f'data-serial="{first}"' in text and f'data-serial="{second}"' not in text and 'id="next"' not in text
    _, _, text = await console.get(f"/admin/certificates?serial_prefix={first[:8]}", cookie)
    assert f'data-serial="{first}"' in text and f'data-serial="{second}"' not in text
    _, _, text = await console.get("/admin/certificates?status=revoked", cookie)
    assert "data-serial" not in text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_trusted_header_sign_in_from_a_trusted_peer(aiohttp_server, tmp_path, db_url):
    console = await open_console(aiohttp_server, tmp_path, db_url, console={
        "trusted_header": "X-Auth-Request-Email", "trusted_header_networks": ["127.0.0.0/8"]})
    try:
        who = {"X-Auth-Request-Email": "alice@example.com"}
        status, headers, text = await console.get("/admin/", headers=who)
        assert status == 200 and "proxy:alice@example.com" in text
        cookie = headers["Set-Cookie"].split(";")[0].partition("=")[2]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        assert (await console.get("/admin/", cookie, headers=who))[0] == 200
        # the proxy no longer vouches for alice (or names another user): her session ends
        assert (await console.get("/admin/", cookie, headers={"X-Auth-Request-Email": "mallory@example.com"}))[0] == 200
        assert (await console.get("/admin/", cookie))[0] == 303
        assert (await console.get("/admin/", headers={"X-Auth-Request-Email": ""}))[0] == 303
    finally:
        await console.http.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_trusted_header_from_an_untrusted_peer_is_ignored(aiohttp_server, tmp_path, db_url):
    console = await open_console(aiohttp_server, tmp_path, db_url, console={
        "trusted_header": "X-Auth-Request-Email", "trusted_header_networks": ["10.0.0.0/8"]},
        server={"trusted_proxies": ["127.0.0.1/32"]})
    try:
        # even forwarded "from" an address inside the header's networks by a trusted proxy: the TCP peer counts
        status, headers, _ = await console.get("/admin/", headers={"X-Auth-Request-Email": "alice@example.com",
                                                                   "X-Forwarded-For": "10.1.2.3"})
        assert status == 303 and headers["Location"] == "/admin/login" and "Set-Cookie" not in headers
    finally:
        await console.http.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_console_can_be_switched_off(aiohttp_server, tmp_path, db_url):
    console = await open_console(aiohttp_server, tmp_path, db_url, console={"enabled": False})
    try:
        assert (await console.get("/admin/login"))[0] == 404
        assert console.srv.runtime.console is None
    finally:
        await console.http.close()


async def _pending(console, txid: str, cn: str) -> None:
    from cryptography.hazmat.primitives import serialization

    from scep_server.store.tables import scep_transactions
    from tests.factories import csr

    der = csr(console.key, cn).public_bytes(serialization.Encoding.DER)
    now = console.srv.runtime.clock()
    async with console.srv.runtime.engine.begin() as conn:
        await conn.execute(scep_transactions.insert().values(
            profile="default", transaction_id=txid, state="pending", message_type=19, csr_der=der,
            public_key_sha256="0" * 64, created_at=now, updated_at=now))


async def test_pending_enrolments_are_approved_and_rejected_through_forms(console):
    await _pending(console, "tx-approve", "pending-1")
    await _pending(console, "tx <b>&reject", "pending-2")
    cookie, _ = await console.sign_in()
    status, _, text = await console.get("/admin/enrolments", cookie)
    assert status == 200 and 'data-transaction="tx-approve"' in text and "tx &lt;b&gt;&amp;reject" in text
    href = re.search(r'href="(/admin/enrolments/confirm\?[^"]*tx-approve[^"]*decision=approve)"', text).group(1)
    status, _, page = await console.get(href.replace("&amp;", "&"), cookie)
    assert status == 200 and 'name="transaction_id" value="tx-approve"' in page
    csrf = CSRF.search(page).group(1)
    form = {"profile": "default", "transaction_id": "tx-approve", "decision": "approve"}
    assert (await console.post("/admin/enrolments/decide", form, cookie))[0] == 403  # no CSRF token
    status, headers, _ = await console.post("/admin/enrolments/decide", {**form, "csrf": csrf}, cookie)
    assert status == 303 and headers["Location"] == "/admin/enrolments?state=all"
    reject = {"profile": "default", "transaction_id": "tx <b>&reject", "decision": "reject", "reason": "unknown",
              "csrf": csrf}
    assert (await console.post("/admin/enrolments/decide", reject, cookie))[0] == 303
    _, _, text = await console.get("/admin/enrolments?state=all", cookie)
    actor = f"token:{console.admin_id}:console-admin"
    assert text.count(actor) >= 2 and ">issued<" in text and ">rejected<" in text
    # deciding again, or something that does not exist: a 4xx page
    for bad, expected in (({**form, "csrf": csrf}, 404), ({**form, "profile": "nope", "csrf": csrf}, 404),
                          ({**form, "decision": "maybe", "csrf": csrf}, 400),
                          ({**form, "transaction_id": "", "csrf": csrf}, 400),
                          ({**form, "transaction_id": "x" * 300, "csrf": csrf}, 400)):
        status, headers, _ = await console.post("/admin/enrolments/decide", bad, cookie)
        assert status == expected and headers["Content-Type"].startswith("text/html"), bad
    for path in ("/admin/enrolments?state=bogus", "/admin/enrolments?cursor=%FF", "/admin/enrolments/confirm",
                 "/admin/enrolments/confirm?profile=default&transaction_id=t&decision=x"):
        assert (await console.get(path, cookie))[0] == 400, path
    assert (await console.get("/admin/enrolments")) [0] == 303  # anonymous


async def test_devices_list_and_lifecycle_through_forms(console):
    from scep_server.binding.service import services

    devices = services(console.srv.runtime).devices
    await devices.create("laptop-1", name="<b>Ann's</b> laptop", actor="test")
    await devices.create("laptop-2", name="spare", actor="test")
    await devices.transition("laptop-2", "suspend", actor="test")
    cookie, _ = await console.sign_in()
    _, _, text = await console.get("/admin/devices?status=active", cookie)
    assert 'data-device="laptop-1"' in text and 'data-device="laptop-2"' not in text
    assert "&lt;b&gt;Ann&#39;s&lt;/b&gt; laptop" in text
    _, _, text = await console.get("/admin/devices?limit=1", cookie)
    assert 'id="next"' in text
    status, _, text = await console.get("/admin/devices/laptop-1", cookie)
    assert status == 200 and 'id="action-suspend"' in text and 'id="action-reactivate"' not in text
    status, _, page = await console.get("/admin/devices/laptop-1/suspend", cookie)
    csrf = CSRF.search(page).group(1)
    assert (await console.post("/admin/devices/laptop-1/suspend", {"reason": "lost"}, cookie))[0] == 403
    status, headers, _ = await console.post("/admin/devices/laptop-1/suspend", {"csrf": csrf, "reason": "lost"}, cookie)
    assert status == 303 and headers["Location"] == "/admin/devices/laptop-1"
    device = await devices.get("laptop-1")
    assert device.status.value == "suspended" and device.status_changed_by == f"token:{console.admin_id}:console-admin"
    _, _, text = await console.get("/admin/devices/laptop-1", cookie)
    assert 'id="status">suspended' in text and 'id="action-unsuspend"' in text
    # an action the state does not allow, an unknown device or action, a bad id or filter: a 4xx page
    status, headers, _ = await console.post("/admin/devices/laptop-1/reactivate", {"csrf": csrf}, cookie)
    assert 400 <= status < 500 and headers["Content-Type"].startswith("text/html")
    for path, expected in (("/admin/devices/nobody", 404), ("/admin/devices/laptop-1/explode", 404),
                           ("/admin/devices/%2Fetc", 400), ("/admin/devices/-x", 400),
                           ("/admin/devices?status=gone", 400), ("/admin/devices?cursor=%FF", 400)):
        status, _, _ = await console.get(path, cookie)
        assert status == expected, (path, status)
    assert (await console.post("/admin/devices/nobody/delete", {"csrf": csrf}, cookie))[0] == 404


async def test_a_devices_certificate_is_removed_through_a_confirmation_form(console):
    """As `device remove-cert`: the current certificate is retired and ours revoked; offered only while there is one."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from scep_server.binding.attestation import signed_bytes
    from scep_server.binding.service import services
    from scep_server.ca import inventory

    rt = console.srv.runtime
    profile = await rt.profiles.get("default")
    await rt.profiles.update("default", now=rt.clock(),
                             settings=profile.settings.model_copy(update={"device_trust": True}))
    svc = services(rt)
    await svc.devices.create("laptop-9", actor="test")
    serial = await console.issue("laptop-9")
    async with rt.engine.connect() as conn:
        der = (await inventory.get(conn, serial)).der
    nonce = (await svc.attestation.challenge("laptop-9"))["nonce"]
    signature = console.key.sign(signed_bytes(nonce, "laptop-9"), padding.PKCS1v15(), hashes.SHA256())
    verdict = await svc.attestation.verify(device_id="laptop-9", nonce=nonce, certificate=der, signature=signature,
                                           algorithm="rsa-pkcs1v15-sha256")
    assert verdict.managed, verdict

    cookie, _ = await console.sign_in()
    _, _, text = await console.get("/admin/devices/laptop-9", cookie)
    assert 'id="action-remove-cert"' in text
    status, _, page = await console.get("/admin/devices/laptop-9/remove-cert", cookie)
    assert status == 200 and "never accepted again" in page
    assert (await console.post("/admin/devices/laptop-9/remove-cert", {}, cookie))[0] == 403  # no CSRF token
    csrf = await console.csrf(cookie)
    status, headers, _ = await console.post("/admin/devices/laptop-9/remove-cert", {"csrf": csrf, "reason": "stolen"},
                                            cookie)
    assert status == 303 and headers["Location"] == "/admin/devices/laptop-9"
    [binding] = await svc.devices.bindings("laptop-9")
    assert (binding.current, binding.state, binding.retired_reason) == (False, "retired", "removed")
    async with rt.engine.connect() as conn:
        assert (await inventory.get(conn, serial)).status == "revoked"
    history = await svc.devices.history("laptop-9")
    assert history[-1]["kind"] == "device.cert.remove" and history[-1]["actor"].startswith("token:")
    # nothing left to remove: not offered, and a post is a conflict
    _, _, text = await console.get("/admin/devices/laptop-9", cookie)
    assert 'id="action-remove-cert"' not in text
    assert (await console.post("/admin/devices/laptop-9/remove-cert", {"csrf": csrf}, cookie))[0] == 409
