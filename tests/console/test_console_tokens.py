"""The console's API token pages over HTTP (no browser): the list (never a secret), create with the command line's
expiry grammar (the token shown once, and it works), disable (the token refused from then on), the token store's
refusals as 4xx forms, every change an audit event with the session's principal. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import html
import re
from datetime import timedelta

import sqlalchemy as sa

from scep_server.store.tables import api_tokens, events

SECRET = re.compile(r'<code class="mono secret" id="secret">([^<]+)</code>')
ROW = re.compile(r'<tr class="token" data-token="([0-9a-f]+)">(.*?)</tr>', re.S)


def actor(console) -> str:
    return f"token:{console.admin_id}:console-admin"


async def audit(console, kind: str) -> list[tuple]:
    async with console.srv.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.subject, events.c.actor).where(events.c.kind == kind)
                                   .order_by(events.c.id))).all()
    return [tuple(r) for r in rows]


def error_of(page: str) -> str:
    return html.unescape(re.search(r'id="error">(.*?)</p>', page, re.S).group(1))


async def signed_in(console) -> tuple[str, str]:
    cookie, _ = await console.sign_in()
    return cookie, await console.csrf(cookie, "/admin/tokens")


async def api_status(console, token: str) -> int:
    async with console.http.get(console.url + "/api/v1/tokens", headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status


async def test_anonymous_requests_go_to_the_sign_in_page(console):
    for path in ("/admin/tokens", f"/admin/tokens/{console.admin_id}/disable"):
        status, headers, _ = await console.get(path)
        assert status == 303 and headers["Location"] == "/admin/login", path
    for path, form in (("/admin/tokens", {"scope": "admin", "name": "anon", "csrf": "0" * 64}),
                       (f"/admin/tokens/{console.admin_id}/disable", {"csrf": "0" * 64})):
        status, headers, _ = await console.post(path, form)
        assert status == 303 and headers["Location"] == "/admin/login", path
    tokens = await console.srv.runtime.tokens.list()
    assert [(t.name, t.disabled_at) for t in tokens] == [("console-admin", None)]


async def test_posts_without_this_sessions_csrf_token_are_refused(console):
    rt = console.srv.runtime
    victim, _ = await rt.tokens.create(scope="signin", name="victim", now=rt.clock())
    cookie, _ = await signed_in(console)
    other, _ = await console.sign_in()
    other_csrf = await console.csrf(other)
    for path, form in (("/admin/tokens", {"scope": "admin", "name": "forged"}),
                       (f"/admin/tokens/{victim}/disable", {})):
        for csrf in (None, "", other_csrf):
            data = {**form, **({"csrf": csrf} if csrf is not None else {})}
            status, _, text = await console.post(path, data, cookie)
            assert status == 403 and "CSRF" in text, (path, csrf)
    assert sorted(t.name for t in await rt.tokens.list() if t.disabled_at is None) == ["console-admin", "victim"]


async def test_list_shows_each_token_never_a_secret(console, clock):
    rt = console.srv.runtime
    expiring, _ = await rt.tokens.create(scope="signin", name="<b>portal</b>", now=rt.clock(),
                                         expires_at=rt.clock() + timedelta(days=1))
    gone, _ = await rt.tokens.create(scope="admin", name="old", now=rt.clock())
    await rt.tokens.disable(gone, now=rt.clock())
    cookie, _ = await signed_in(console)
    status, _, text = await console.get("/admin/tokens", cookie)
    assert status == 200
    rows = dict(ROW.findall(text))
    assert set(rows) == {console.admin_id, expiring, gone}
    assert "enabled (this session)" in rows[console.admin_id]
    assert "&lt;b&gt;portal&lt;/b&gt;" in rows[expiring] and "<b>" not in text
    assert 'class="state">enabled' in rows[expiring] and f"/admin/tokens/{expiring}/disable" in rows[expiring]
    assert 'class="state">disabled' in rows[gone] and "/disable" not in rows[gone]
    clock.advance(days=2)
    cookie, _ = await signed_in(console)  # the old session has timed out
    _, _, text = await console.get("/admin/tokens", cookie)
    assert 'class="state">expired' in dict(ROW.findall(text))[expiring]
    async with rt.engine.connect() as conn:
        digests = (await conn.execute(sa.select(api_tokens.c.token_sha256))).scalars().all()
    assert not any(d in text for d in digests) and "dt_admin_" not in text and "dt_signin_" not in text
    assert (await console.get("/admin/tokens?cursor=%00%FF", cookie))[0] == 400
    assert (await console.get("/admin/tokens?limit=1", cookie))[0] == 200


async def test_create_shows_the_token_once_and_is_audited(console):
    rt = console.srv.runtime
    cookie, csrf = await signed_in(console)
    status, headers, text = await console.post("/admin/tokens", {"csrf": csrf, "scope": "admin", "name": "ci",
                                                                 "expires_in": "90d"}, cookie)
    assert status == 201 and headers["Cache-Control"] == "no-store"
    secret = html.unescape(SECRET.search(text).group(1))
    assert secret.startswith("dt_admin_")
    scope, token_id, name = await rt.tokens.identify(secret)
    assert (scope, name) == ("admin", "ci")
    made = await rt.tokens.get(token_id)
    assert abs(made.expires_at - (rt.clock() + timedelta(days=90))) < timedelta(seconds=5)
    assert await api_status(console, secret) == 200
    assert await audit(console, "security.token.create") == [(token_id, actor(console))]
    _, _, listed = await console.get("/admin/tokens", cookie)
    assert token_id in dict(ROW.findall(listed)) and secret not in listed
    # --expires-at's grammar: UTC unless an offset is given
    status, _, text = await console.post("/admin/tokens", {"csrf": csrf, "scope": "signin", "name": "portal",
                                                           "expires_at": "2099-01-31T12:00:00"}, cookie)
    assert status == 201
    signin = await rt.tokens.identify(html.unescape(SECRET.search(text).group(1)))
    assert signin[0] == "signin"
    assert (await rt.tokens.get(signin[1])).expires_at.isoformat() == "2099-01-31T12:00:00+00:00"


async def test_create_refusals_are_4xx_forms(console):
    rt = console.srv.runtime
    cookie, csrf = await signed_in(console)
    past = (rt.clock() - timedelta(days=1)).isoformat()
    cases = [({"scope": "root"}, 422, "scope: unknown scope 'root'"),
             ({"scope": ""}, 422, "scope: unknown scope"),
             ({"scope": "admin", "name": "n" * 256}, 422, "name: at most 255 characters"),
             ({"scope": "admin", "expires_in": "soon"}, 400, "expires_in: a positive number followed by s, m, h or d"),
             ({"scope": "admin", "expires_in": "0d"}, 400, "expires_in: a positive number"),
             ({"scope": "admin", "expires_at": "tomorrow"}, 400, "expires_at: an ISO 8601 time"),
             ({"scope": "admin", "expires_at": past}, 422, "expires_at: a time in the future"),
             ({"scope": "admin", "expires_at": "9999-12-31T23:59:59-05:00"}, 422, "expires_at: out of range"),
             ({"scope": "admin", "expires_in": "1d", "expires_at": "2099-01-01"}, 400, "not both"),
             ({"scope": "admin", "name": "x" * 2000}, 400, "name: at most 1000 characters"),
             ({"scope": "admin", "name": "a\x00b"}, 400, "name: a NUL character")]
    for form, expected, message in cases:
        status, headers, text = await console.post("/admin/tokens", {"csrf": csrf, **form}, cookie)
        assert status == expected, (form, status)
        assert headers["Content-Type"].startswith("text/html") and message in error_of(text), (form, error_of(text))
        assert 'id="secret"' not in text
    assert [t.name for t in await rt.tokens.list()] == ["console-admin"]
    assert await audit(console, "security.token.create") == []


async def test_rotating_a_token_ends_the_sessions_its_old_secret_opened(console):
    """Whoever signed in with a token's secret (a stolen one) is signed out when its owner rotates it, as the
    API refuses the old secret."""
    rt = console.srv.runtime
    spare, stolen = await rt.tokens.create(scope="admin", name="spare", now=rt.clock())
    thief, _ = await console.sign_in(stolen)
    mine, _ = await console.sign_in()
    assert (await console.get("/admin/tokens", thief))[0] == 200
    await rt.tokens.rotate(spare, now=rt.clock(), actor="cli:owner")
    assert await api_status(console, stolen) == 401
    status, headers, _ = await console.get("/admin/tokens", thief)
    assert status == 303 and headers["Location"].startswith("/admin/login")
    assert (await console.get("/admin/tokens", mine))[0] == 200  # a session of another token goes on


async def test_disable_refuses_the_token_and_is_audited(console):
    rt = console.srv.runtime
    target, secret = await rt.tokens.create(scope="admin", name="spare", now=rt.clock())
    assert await api_status(console, secret) == 200
    cookie, csrf = await signed_in(console)
    status, _, text = await console.get(f"/admin/tokens/{target}/disable", cookie)
    assert status == 200 and 'id="confirm"' in text and 'id="own"' not in text
    status, headers, _ = await console.post(f"/admin/tokens/{target}/disable", {"csrf": csrf}, cookie)
    assert status == 303 and headers["Location"] == "/admin/tokens"
    assert (await rt.tokens.get(target)).disabled_at is not None
    assert await api_status(console, secret) == 401
    assert await audit(console, "security.token.disable") == [(target, actor(console))]
    # again: no change, no second event; unknown ids are a 404 page
    assert (await console.post(f"/admin/tokens/{target}/disable", {"csrf": csrf}, cookie))[0] == 303
    assert len(await audit(console, "security.token.disable")) == 1
    for token_id in ("0123456789abcdef", "x" * 300, "%3Cb%3E"):
        assert (await console.get(f"/admin/tokens/{token_id}/disable", cookie))[0] == 404, token_id
        status, headers, text = await console.post(f"/admin/tokens/{token_id}/disable", {"csrf": csrf}, cookie)
        assert status == 404 and headers["Content-Type"].startswith("text/html") and "<b>" not in text
    # the session's own token: warned, then signed out
    status, _, text = await console.get(f"/admin/tokens/{console.admin_id}/disable", cookie)
    assert 'id="own"' in text
    assert (await console.post(f"/admin/tokens/{console.admin_id}/disable", {"csrf": csrf}, cookie))[0] == 303
    status, headers, _ = await console.get("/admin/tokens", cookie)
    assert status == 303 and headers["Location"] == "/admin/login"
