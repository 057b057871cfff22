"""The profiles of the admin API (admin tokens; docs/api.md "Profiles"):

    GET    /api/v1/profiles                      (paged by name)
    POST   /api/v1/profiles                      {"name", "challenge"?, "settings"?} -> 201, a static secret once
    GET    /api/v1/profiles/{name}
    PATCH  /api/v1/profiles/{name}               {"settings"}: a merge patch (RFC 7396) of the settings
    DELETE /api/v1/profiles/{name}[?force=true]  409 while its certificates are valid or on hold
    POST   /api/v1/profiles/{name}/rotate-secret {"grace_seconds"?} (static profiles) -> the new secret, once;
                                                 with a grace period the old one works until then (logged)

Handlers check the body's shape (400) and hand the rest to the profile store (runtime.profiles), whose
refusals become problems here: 404 unknown, 409 exists / in use / not static, 422 invalid settings. The admin
console's profile pages (scep_server.console.profiles) go through the same functions (view, create, update,
rotate), so a form is checked exactly as a body is. The
challenge's settings (``settings.challenge``) are not set here: they name files and environment variables
of the server, whose contents go to the hosts they name; `scep-server challenge configure` sets them.
"""
from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from trustkit.http import read_json_object
from trustkit.paging import page_body, page_request
from trustkit.problems import BadRequest, Conflict, NotFound, Unprocessable

from ..appkeys import RUNTIME
from ..profiles import (MAX_GRACE, InvalidSettings, NotStatic, Profile, ProfileError, ProfileExists, ProfileInUse,
                        UnknownProfile, describe, new_static_secret, parse_settings)
from .auth import ACTOR, requires

if TYPE_CHECKING:
    from ..runtime import Runtime

KINDS = ("static", "dynamic", "delegated")
NO_STORE = {"Cache-Control": "no-store"}


def view(rt: "Runtime", profile: Profile) -> dict[str, Any]:
    """The profile as the API shows it: as `describe` gives it (no secret; the challenge's Basic password hash is
    "(set)"), and ``url``, its SCEP URL (what an MDM is given)."""
    shown = describe(profile)
    shown["url"] = f"{rt.settings.server.public_base_url()}/scep/{profile.name}"
    return shown


def _view(request: web.Request, profile: Profile) -> dict[str, Any]:
    return view(request.app[RUNTIME], profile)


def profile_error(exc: ProfileError) -> Exception:
    """The problem a profile store's refusal is."""
    if isinstance(exc, UnknownProfile):
        return NotFound(str(exc), code="profile_not_found")
    if isinstance(exc, ProfileExists):
        return Conflict(str(exc), code="profile_exists")
    if isinstance(exc, ProfileInUse):
        return Conflict(str(exc), code="profile_in_use", certificates=exc.certificates)
    if isinstance(exc, NotStatic):
        return Conflict(str(exc), code="not_static")
    if isinstance(exc, InvalidSettings):
        return Unprocessable(str(exc), code="invalid_settings", field=exc.field, errors=exc.errors)
    return Unprocessable(str(exc), code="invalid_profile")


def _only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"{unknown[0]}: not a member of this body (allowed: {', '.join(allowed)})",
                         code="invalid_input", field=unknown[0][:64])


def _name(request: web.Request) -> str:
    return request.match_info["name"]


@requires("admin")
async def list_profiles(request: web.Request) -> web.Response:
    page = await request.app[RUNTIME].profiles.page(page_request(request.query, (str,)))
    body, headers = page_body("profiles", [_view(request, p) for p in page.items], page, request.rel_url)
    return web.json_response(body, headers=headers)


@requires("admin")
async def show_profile(request: web.Request) -> web.Response:
    try:
        profile = await request.app[RUNTIME].profiles.get(_name(request))
    except ProfileError as exc:
        raise profile_error(exc) from None
    return web.json_response(_view(request, profile))


async def create(rt: "Runtime", body: dict[str, Any], *, actor: str) -> tuple[Profile, str | None]:
    """Create the profile a body ({"name", "challenge"?, "settings"?}) describes: (the profile, its static
    secret or None). A body of the wrong shape is a BadRequest, a refusal of the store its problem."""
    _only(body, ("name", "challenge", "settings"))
    name, kind, raw = body.get("name"), body.get("challenge", "static"), body.get("settings", {})
    if not isinstance(name, str):
        raise BadRequest("name: a string is required", code="invalid_input", field="name")
    if not isinstance(kind, str) or kind not in KINDS:
        raise Unprocessable(f"challenge: one of {', '.join(KINDS)}", code="invalid_profile", field="challenge")
    if not isinstance(raw, dict):
        raise BadRequest("settings: a JSON object", code="invalid_input", field="settings")
    secret = new_static_secret() if kind == "static" else None
    try:
        settings = parse_settings(raw, kind=kind, allow_challenge=False)
        profile = await rt.profiles.create(name, ca=rt.settings.ca.name, challenge_kind=kind, static_secret=secret,
                                           settings=settings, now=rt.clock(), actor=actor)
    except ProfileError as exc:
        raise profile_error(exc) from None
    return profile, secret


async def update(rt: "Runtime", name: str, body: dict[str, Any], *, actor: str) -> Profile:
    """Apply a body's ``settings`` (a merge patch) to a profile's settings."""
    _only(body, ("settings",))
    if "settings" not in body:
        raise BadRequest("settings: required (a merge patch of the profile's settings)", code="invalid_input",
                         field="settings")
    if not isinstance(body["settings"], dict):
        raise BadRequest("settings: a JSON object", code="invalid_input", field="settings")
    try:
        return await rt.profiles.update_settings(name, body["settings"], now=rt.clock(), actor=actor,
                                                 allow_challenge=False)
    except ProfileError as exc:
        raise profile_error(exc) from None


async def rotate(rt: "Runtime", name: str, *, actor: str, grace: timedelta | None = None) -> str:
    """A new static secret for a profile (returned once); with `grace`, the old one still works until then."""
    try:
        return await rt.profiles.rotate_secret(name, now=rt.clock(), actor=actor, grace=grace)
    except ProfileError as exc:
        raise profile_error(exc) from None


@requires("admin")
async def create_profile(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    profile, secret = await create(request.app[RUNTIME], body, actor=request[ACTOR])
    shown = _view(request, profile)
    if secret is not None:
        shown["secret"] = secret  # shown once: only its digest is stored
    return web.json_response(shown, status=201, headers={**NO_STORE, "Location": f"/api/v1/profiles/{profile.name}"})


@requires("admin")
async def update_profile(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    profile = await update(request.app[RUNTIME], _name(request), body, actor=request[ACTOR])
    return web.json_response(_view(request, profile))


@requires("admin")
async def delete_profile(request: web.Request) -> web.Response:
    force = request.query.get("force", "false")
    if force not in ("true", "false"):
        raise BadRequest("force: true or false", code="invalid_input", field="force")
    rt = request.app[RUNTIME]
    try:
        counts = await rt.profiles.delete(_name(request), now=rt.clock(), force=force == "true",
                                          actor=request[ACTOR])
    except ProfileError as exc:
        raise profile_error(exc) from None
    return web.json_response({"deleted": _name(request), **counts})


@requires("admin")
async def rotate_secret(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    body = await read_json_object(request, empty={})
    unknown = sorted(set(body) - {"grace_seconds"})
    if unknown:
        raise BadRequest(f"unknown member {unknown[0]!r}; allowed: grace_seconds", code="invalid_input")
    seconds = body.get("grace_seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)
                                or not 0 < seconds <= MAX_GRACE.total_seconds()):
        raise BadRequest(f"grace_seconds: an integer from 1 to {int(MAX_GRACE.total_seconds())}",
                         code="invalid_input", field="grace_seconds")
    grace = timedelta(seconds=seconds) if seconds is not None else None
    now = rt.clock()
    secret = await rotate(rt, _name(request), actor=request[ACTOR], grace=grace)
    answer = {"name": _name(request), "secret": secret}
    if grace is not None:
        answer["previous_valid_until"] = (now + grace).isoformat()
    return web.json_response(answer, headers=NO_STORE)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/profiles", list_profiles)
    app.router.add_post("/api/v1/profiles", create_profile)
    app.router.add_get("/api/v1/profiles/{name}", show_profile)
    app.router.add_patch("/api/v1/profiles/{name}", update_profile)
    app.router.add_delete("/api/v1/profiles/{name}", delete_profile)
    app.router.add_post("/api/v1/profiles/{name}/rotate-secret", rotate_secret)
