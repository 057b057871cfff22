"""The console's profile pages over HTTP (no browser): the list, the detail page with the SCEP URL, create and edit
through the admin API's own checks (a refusal is a 4xx form with the API's message, never a 500), rotating a static
secret (shown once, the old one refused), every change an audit event with the session's principal.
Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import html
import json
import re

import sqlalchemy as sa

from scep_server.store.tables import events

from .conftest import CSRF

SECRET = re.compile(r'<code class="mono secret" id="secret">([^<]+)</code>')


def textarea(page: str) -> str:
    """What the form's settings field holds."""
    return html.unescape(re.search(r'<textarea name="settings"[^>]*>(.*?)</textarea>', page, re.S).group(1))


def actor(console) -> str:
    return f"token:{console.admin_id}:console-admin"


async def audit(console, kind: str) -> list[tuple]:
    async with console.srv.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.subject, events.c.actor).where(events.c.kind == kind)
                                   .order_by(events.c.id))).all()
    return [tuple(r) for r in rows]


async def signed_in(console) -> tuple[str, str]:
    cookie, _ = await console.sign_in()
    return cookie, await console.csrf(cookie, "/admin/profiles")


async def test_anonymous_requests_go_to_the_sign_in_page(console):
    for path in ("/admin/profiles", "/admin/profiles/default", "/admin/profiles/default/edit",
                 "/admin/profiles/default/rotate-secret"):
        status, headers, _ = await console.get(path)
        assert status == 303 and headers["Location"] == "/admin/login", path
    before = await console.srv.runtime.profiles.get("default")
    for path, form in (("/admin/profiles", {"name": "anon", "csrf": "0" * 64}),
                       ("/admin/profiles/default/edit", {"settings": '{"require_approval": true}', "csrf": "0" * 64}),
                       ("/admin/profiles/default/rotate-secret", {"csrf": "0" * 64})):
        status, headers, _ = await console.post(path, form)
        assert status == 303 and headers["Location"] == "/admin/login", path
    rt = console.srv.runtime
    assert [p.name for p in await rt.profiles.list()] == ["default"]
    assert await rt.profiles.static_secret_ok("default", console.srv.challenge())
    assert (await rt.profiles.get("default")).settings == before.settings


async def test_posts_without_this_sessions_csrf_token_are_refused(console):
    cookie, _ = await signed_in(console)
    other, _ = await console.sign_in()
    other_csrf = await console.csrf(other)
    rt = console.srv.runtime
    for path, form in (("/admin/profiles", {"name": "forged"}),
                       ("/admin/profiles/default/edit", {"settings": '{"require_approval": true}'}),
                       ("/admin/profiles/default/rotate-secret", {})):
        for csrf in (None, "", other_csrf):
            data = {**form, **({"csrf": csrf} if csrf is not None else {})}
            status, _, text = await console.post(path, data, cookie)
            assert status == 403 and "CSRF" in text, (path, csrf)
    assert [p.name for p in await rt.profiles.list()] == ["default"]
    assert await rt.profiles.static_secret_ok("default", console.srv.challenge())
    assert not (await rt.profiles.get("default")).settings.require_approval


async def test_list_and_detail_show_the_scep_url_and_settings(console):
    rt = console.srv.runtime
    cookie, _ = await signed_in(console)
    status, _, text = await console.get("/admin/profiles", cookie)
    assert status == 200 and 'data-profile="default"' in text
    base = rt.settings.server.public_base_url()
    status, _, text = await console.get("/admin/profiles/default", cookie)
    assert status == 200
    assert f'id="scep-url">{base}/scep/default</code>' in text
    assert 'id="challenge">static' in text and 'id="action-rotate"' in text
    assert 'data-setting="validity_days"><th>validity_days</th><td class="mono">365' in text
    assert 'data-setting="renewal_sans"><th>renewal_sans</th><td class="mono">subset' in text
    assert '<script src="/admin/static/copy.js" defer></script>' in text and "<script>" not in text
    assert console.srv.challenge() not in text  # the secret is never shown again
    status, _, text = await console.get("/admin/profiles/nothing-here", cookie)
    assert status == 404 and "nothing-here" in html.unescape(text)
    status, _, _ = await console.get("/admin/profiles?cursor=%00%FF", cookie)
    assert status == 400
    status, headers, text = await console.get("/admin/static/copy.js")
    assert status == 200 and "navigator.clipboard" in text and "javascript" in headers["Content-Type"]


async def test_create_static_shows_the_secret_once_and_is_audited(console):
    rt = console.srv.runtime
    cookie, csrf = await signed_in(console)
    settings = json.dumps({"template": {"validity_days": 30}, "require_approval": True})
    status, headers, text = await console.post("/admin/profiles", {"csrf": csrf, "name": "laptops",
                                                                   "challenge": "static", "settings": settings}, cookie)
    assert status == 201 and headers["Cache-Control"] == "no-store"
    secret = html.unescape(SECRET.search(text).group(1))
    profile = await rt.profiles.get("laptops")
    assert profile.challenge_kind == "static" and profile.settings.template.validity_days == 30
    assert profile.settings.require_approval
    assert await rt.profiles.static_secret_ok("laptops", secret)
    assert await audit(console, "pki.profile.create") == [("laptops", actor(console))]
    status, _, text = await console.get("/admin/profiles/laptops", cookie)
    assert status == 200 and secret not in text
    # a dynamic profile: no secret, straight to its page
    status, headers, _ = await console.post("/admin/profiles", {"csrf": csrf, "name": "mdm", "challenge": "dynamic",
                                                                "settings": ""}, cookie)
    assert status == 303 and headers["Location"] == "/admin/profiles/mdm"
    assert (await rt.profiles.get("mdm")).challenge_kind == "dynamic"
    status, _, text = await console.get("/admin/profiles/mdm", cookie)
    assert 'id="action-rotate"' not in text and "scep-server challenge configure mdm" in text


async def test_create_refusals_are_the_apis_messages_on_the_form(console):
    rt = console.srv.runtime
    cookie, csrf = await signed_in(console)
    cases = [
        ({"name": "bad name!", "challenge": "static", "settings": "{}"}, 422, "invalid profile name"),
        ({"name": "default", "challenge": "static", "settings": "{}"}, 409, "already exists"),
        ({"name": "p1", "challenge": "magic", "settings": "{}"}, 422, "challenge: one of static, dynamic, delegated"),
        ({"name": "p1", "challenge": "static", "settings": "{not json"}, 400, "settings: the text is not JSON"),
        ({"name": "p1", "challenge": "static", "settings": "[1]"}, 400, "settings: the text must be a JSON object"),
        ({"name": "p1", "challenge": "static", "settings": "[" * 60000}, 400, "settings: the text is nested"),
        ({"name": "p1", "challenge": "static", "settings": '{"template": {"max_sans": 1}, "template": {}}'}, 400,
         "settings: the text repeats a key"),
        ({"name": "p1", "challenge": "static", "settings": '{"a":' * 100 + "1" + "}" * 100}, 400,
         "settings: the text is nested deeper"),
        ({"name": "p1", "challenge": "static", "settings": '{"template": {"validity_days": 0}}'}, 422,
         "settings.template.validity_days"),
        ({"name": "p1", "challenge": "static", "settings": '{"colour": "red"}'}, 422,
         "settings.colour: not a profile setting"),
        ({"name": "p1", "challenge": "dynamic", "settings": '{"challenge": {"x": 1}}'}, 422,
         "scep-server challenge configure"),
        ({"name": "p1", "challenge": "delegated", "settings": '{"require_approval": true}'}, 422,
         "cannot require approval"),
        ({"name": "p1", "challenge": "static", "settings": "x" * 70000}, 400, "settings: at most"),
    ]
    for form, expected, message in cases:
        status, headers, text = await console.post("/admin/profiles", {"csrf": csrf, **form}, cookie)
        assert status == expected, (form["settings"][:40], status)
        assert headers["Content-Type"].startswith("text/html")
        error = html.unescape(re.search(r'id="error">(.*?)</p>', text, re.S).group(1))
        assert message in error, (error, message)
        if len(form["settings"]) < 100:  # what was typed comes back in the form
            assert textarea(text) == form["settings"]
    assert [p.name for p in await rt.profiles.list()] == ["default"]
    assert await audit(console, "pki.profile.create") == []
    # the API says the same of the same body
    async with console.http.post(console.url + "/api/v1/profiles", json={"name": "p1", "settings": {
            "template": {"validity_days": 0}}}, headers={"Authorization": f"Bearer {console.admin}"}) as r:
        assert r.status == 422 and (await r.json())["field"] == "settings.template.validity_days"


async def test_edit_applies_a_merge_patch_and_refuses_bad_settings(console):
    rt = console.srv.runtime
    cookie, csrf = await signed_in(console)
    status, _, text = await console.get("/admin/profiles/default/edit", cookie)
    assert status == 200
    shown = json.loads(textarea(text))
    assert shown["template"]["validity_days"] == 365 and "challenge" not in shown
    shown["template"]["validity_days"] = 90
    shown["renewal_window_days"] = 10
    status, headers, _ = await console.post("/admin/profiles/default/edit",
                                            {"csrf": csrf, "settings": json.dumps(shown)}, cookie)
    assert status == 303 and headers["Location"] == "/admin/profiles/default"
    profile = await rt.profiles.get("default")
    assert profile.settings.template.validity_days == 90 and profile.settings.renewal_window_days == 10
    assert await audit(console, "pki.profile.update") == [("default", actor(console))]
    # null returns a setting to its default
    status, _, _ = await console.post("/admin/profiles/default/edit",
                                      {"csrf": csrf, "settings": '{"renewal_window_days": null}'}, cookie)
    assert status == 303 and (await rt.profiles.get("default")).settings.renewal_window_days is None
    # refused: the message on the form, the text kept, nothing changed
    for text_in, expected, message in (('{"renewal_window_days": 0}', 422, "settings.renewal_window_days"),
                                       ('{"renewal_window_days": 1000000000000}', 422, "settings.renewal_window_days"),
                                       ('{"renewal_sans": "all"}', 422, "settings.renewal_sans"),
                                       ('{"challenge": {"url": "http://x"}}', 422, "challenge configure"),
                                       ("nope", 400, "settings: the text is not JSON"),
                                       ('{"renewal_to": ["\\u0000"]}', 400, "NUL character")):
        status, _, page = await console.post("/admin/profiles/default/edit", {"csrf": csrf, "settings": text_in},
                                             cookie)
        assert status == expected, text_in
        assert message in html.unescape(re.search(r'id="error">(.*?)</p>', page, re.S).group(1))
        assert textarea(page) == text_in
    assert (await rt.profiles.get("default")).settings.template.validity_days == 90
    assert len(await audit(console, "pki.profile.update")) == 2
    status, _, _ = await console.post("/admin/profiles/ghost/edit", {"csrf": csrf, "settings": "{}"}, cookie)
    assert status == 404


async def test_rotate_the_static_secret(console):
    rt = console.srv.runtime
    old = console.srv.challenge()
    cookie, csrf = await signed_in(console)
    status, _, text = await console.get("/admin/profiles/default/rotate-secret", cookie)
    assert status == 200 and CSRF.search(text) and 'id="confirm"' in text
    status, headers, text = await console.post("/admin/profiles/default/rotate-secret", {"csrf": csrf}, cookie)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    new = html.unescape(SECRET.search(text).group(1))
    assert new != old
    assert await rt.profiles.static_secret_ok("default", new)
    assert not await rt.profiles.static_secret_ok("default", old)
    assert await audit(console, "pki.profile.rotate_secret") == [("default", actor(console))]
    # a profile without a static secret, and no profile: refused, nothing recorded
    await rt.profiles.create("mdm", ca="default", challenge_kind="dynamic", now=rt.clock())
    for path, expected in (("/admin/profiles/mdm/rotate-secret", 409), ("/admin/profiles/ghost/rotate-secret", 404)):
        assert (await console.get(path, cookie))[0] == expected, path
        status, headers, _ = await console.post(path, {"csrf": csrf}, cookie)
        assert status == expected and headers["Content-Type"].startswith("text/html"), path
    assert len(await audit(console, "pki.profile.rotate_secret")) == 1
