"""The console's SCEP profile pages (README "Console"), through the admin API's own functions
(scep_server.web.admin_profiles): a form is checked exactly as an API body is, and refused with the same message.

    GET  /admin/profiles                        the profiles (pages by name) and the form that creates one
    POST /admin/profiles                        create: name, challenge kind, settings (JSON); a static profile's
                                                secret is shown once, on the answer to this POST
    GET  /admin/profiles/{name}                 one profile: its SCEP URL (for the MDM), challenge kind and
                                                settings, certificate template, renewal settings
    GET|POST /admin/profiles/{name}/edit        its settings as JSON; posted as a merge patch (a key set to null
                                                returns to its default), as PATCH /api/v1/profiles/{name}
    GET|POST /admin/profiles/{name}/rotate-secret   a confirmation form, then the new static secret, shown once

A refused form (a settings text that is no JSON object: 400; a value the profile store refuses: 422; a name taken:
409) comes back with its message and what was typed, never a 500. Every change is an audit event with the
session's principal as its actor.
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from trustkit import paging
from trustkit.http import BadJSON, loads_object
from trustkit.problems import BadRequest, DomainError

from ..web import admin_profiles
from .pages import PREFIX, SESSION
from .pages import form as _form, page as _page, redirect as _redirect, runtime as _runtime

MAX_SETTINGS_CHARS = 65536
RENEWAL = ("allow_renewal", "renewal_window_days", "renewal_to", "renewal_sans", "renewal_revalidate",
           "renewal_requires_approval", "supersede_on_renewal")
ENROLMENT = ("require_approval", "pending_expiry_days", "allow_single_des", "require_signer_csr_key", "device_trust")


def _text(form: Any, name: str, cap: int) -> str:
    value = form.get(name, "")
    if not isinstance(value, str) or len(value) > cap:
        raise BadRequest(f"{name}: at most {cap} characters", code="invalid_input", field=name)
    return value


def _settings(text: str, *, empty: dict[str, Any]) -> dict[str, Any]:
    """The settings of a form's JSON text (blank: `empty`), parsed as an API body is (one JSON object, bounded
    nesting, no repeated key); a BadRequest otherwise."""
    if not text.strip():
        return empty
    try:
        return loads_object(text)
    except BadJSON as exc:
        detail = exc.detail.replace("the body", "the text")
        raise BadRequest(f"settings: {detail}", code="invalid_input", field="settings") from None


def _shown(value: Any) -> str:
    """A setting's value as the detail page shows it."""
    if value is None:
        return "(default)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "(none)"
    return str(value)


def _editable(view: dict[str, Any]) -> str:
    """The settings an admin may change here (the challenge's are set on the server host), as JSON text."""
    return json.dumps({k: v for k, v in view["settings"].items() if k != "challenge"}, indent=2)


async def _list_page(request: web.Request, *, values: dict[str, str], error: str | None = None,
                     status: int = 200) -> web.Response:
    rt = _runtime(request)
    rows, next_url = [], None
    try:
        page = await rt.profiles.page(paging.page_request(request.query, (str,), default=50))
        rows = [admin_profiles.view(rt, p) for p in page.items]
        next_url = paging.next_link(request.rel_url, page)
    except BadRequest as exc:
        error, status = exc.detail, 400
    return _page(request, "profiles.jinja2", {"rows": rows, "next_url": next_url, "values": values,
                                              "kinds": admin_profiles.KINDS, "error": error}, status=status)


async def profile_list(request: web.Request) -> web.Response:
    return await _list_page(request, values={"name": "", "challenge": "static", "settings": "{}"})


async def profile_create(request: web.Request) -> web.Response:
    rt = _runtime(request)
    form = _form(request)
    values = {"name": "", "challenge": "static", "settings": "{}"}
    try:
        values = {"name": _text(form, "name", 64 * 4), "challenge": _text(form, "challenge", 32),
                  "settings": _text(form, "settings", MAX_SETTINGS_CHARS)}
        body = {"name": values["name"].strip(), "challenge": values["challenge"],
                "settings": _settings(values["settings"], empty={})}
        profile, secret = await admin_profiles.create(rt, body, actor=request[SESSION].principal)
    except DomainError as exc:
        return await _list_page(request, values=values, error=exc.detail, status=exc.status)
    if secret is None:
        return _redirect(f"{PREFIX}/profiles/{profile.name}")
    return _page(request, "profile_secret.jinja2", {"profile": admin_profiles.view(rt, profile), "secret": secret,
                                                    "created": True}, status=201)


async def _profile(request: web.Request) -> dict[str, Any]:
    from ..profiles import ProfileError

    rt = _runtime(request)
    try:
        return admin_profiles.view(rt, await rt.profiles.get(request.match_info["name"]))
    except ProfileError as exc:
        raise admin_profiles.profile_error(exc) from None


async def profile_page(request: web.Request) -> web.Response:
    view = await _profile(request)
    settings = view["settings"]
    return _page(request, "profile.jinja2", {
        "profile": view, "challenge": settings.get("challenge", {}),
        "template": [(k, _shown(v)) for k, v in settings["template"].items()],
        "renewal": [(k, _shown(settings[k])) for k in RENEWAL],
        "enrolment": [(k, _shown(settings[k])) for k in ENROLMENT]})


async def profile_edit_page(request: web.Request) -> web.Response:
    view = await _profile(request)
    return _page(request, "profile_edit.jinja2", {"profile": view, "settings": _editable(view), "error": None})


async def profile_edit(request: web.Request) -> web.Response:
    rt = _runtime(request)
    view = await _profile(request)
    text = _editable(view)
    try:
        text = _text(_form(request), "settings", MAX_SETTINGS_CHARS)
        patch = _settings(text, empty={})
        await admin_profiles.update(rt, view["name"], {"settings": patch}, actor=request[SESSION].principal)
    except DomainError as exc:
        if exc.status == 404:
            raise
        return _page(request, "profile_edit.jinja2", {"profile": view, "settings": text, "error": exc.detail},
                     status=exc.status)
    return _redirect(f"{PREFIX}/profiles/{view['name']}")


async def rotate_confirm(request: web.Request) -> web.Response:
    from ..profiles import NotStatic

    view = await _profile(request)
    if view["challenge"] != "static":
        raise admin_profiles.profile_error(NotStatic(f"profile {view['name']!r} has a {view['challenge']} challenge: "
                                               "only a static profile has a secret"))
    return _page(request, "profile_rotate.jinja2", {"profile": view})


async def rotate(request: web.Request) -> web.Response:
    rt = _runtime(request)
    name = request.match_info["name"]
    secret = await admin_profiles.rotate(rt, name, actor=request[SESSION].principal)  # 404, 409 not static
    return _page(request, "profile_secret.jinja2", {"profile": await _profile(request), "secret": secret,
                                                    "created": False})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/profiles", profile_list)
    app.router.add_post("/profiles", profile_create)
    app.router.add_get("/profiles/{name}", profile_page)
    app.router.add_get("/profiles/{name}/edit", profile_edit_page)
    app.router.add_post("/profiles/{name}/edit", profile_edit)
    app.router.add_get("/profiles/{name}/rotate-secret", rotate_confirm)
    app.router.add_post("/profiles/{name}/rotate-secret", rotate)
