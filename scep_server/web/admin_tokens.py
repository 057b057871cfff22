"""The API tokens of the admin API (admin tokens; docs/api.md "Authentication"):

    GET  /api/v1/tokens                  (paged, oldest first; never a secret nor its digest)
    POST /api/v1/tokens                  {"scope", "name"?, "expires_at"?} -> 201, the secret once
    POST /api/v1/tokens/{id}/disable     -> the token, disabled (again: the same answer)
    POST /api/v1/tokens/{id}/rotate      -> the token with a new secret, shown once (the old one is refused)

The token store (runtime.tokens) refuses with problems of its own: 404 unknown id, 422 unknown scope, an
expiry in the past or a name too long. Making or disabling a token through the API is an audit event.
"""
from __future__ import annotations

from datetime import datetime

from aiohttp import web

from trustkit.http import read_json_object
from trustkit.paging import page_body, page_request
from trustkit.problems import BadRequest

from ..appkeys import RUNTIME
from .auth import ACTOR, requires

PAGE_KEY = (datetime, str)  # created_at, id
NO_STORE = {"Cache-Control": "no-store"}
ALLOWED = ("scope", "name", "expires_at")


def _expires_at(value: object) -> datetime | None:
    if value is None:
        return None
    bad = BadRequest("expires_at: an RFC 3339 time with its UTC offset, e.g. 2027-01-31T00:00:00Z",
                     code="invalid_input", field="expires_at")
    if not isinstance(value, str) or len(value) > 64:
        raise bad
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad from None
    if parsed.tzinfo is None:
        raise bad
    return parsed


@requires("admin")
async def list_tokens(request: web.Request) -> web.Response:
    page = await request.app[RUNTIME].tokens.page(page_request(request.query, PAGE_KEY))
    body, headers = page_body("tokens", [t.view() for t in page.items], page, request.rel_url)
    return web.json_response(body, headers=headers)


@requires("admin")
async def create_token(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    unknown = sorted(set(body) - set(ALLOWED))
    if unknown:
        raise BadRequest(f"{unknown[0]}: not a member of this body (allowed: {', '.join(ALLOWED)})",
                         code="invalid_input", field=unknown[0][:64])
    scope, name = body.get("scope"), body.get("name", "")
    if not isinstance(scope, str):
        raise BadRequest("scope: a string is required (admin or signin)", code="invalid_input", field="scope")
    if not isinstance(name, str):
        raise BadRequest("name: a string", code="invalid_input", field="name")
    expires_at = _expires_at(body.get("expires_at"))
    rt = request.app[RUNTIME]
    token_id, secret = await rt.tokens.create(scope=scope, name=name, now=rt.clock(), expires_at=expires_at,
                                              actor=request[ACTOR])
    view = (await rt.tokens.get(token_id)).view()
    view["token"] = secret  # shown once: only its digest is stored
    return web.json_response(view, status=201, headers=NO_STORE)


@requires("admin")
async def disable_token(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    token_id = request.match_info["id"]
    await rt.tokens.disable(token_id, now=rt.clock(), actor=request[ACTOR])
    return web.json_response((await rt.tokens.get(token_id)).view())


@requires("admin")
async def rotate_token(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    token_id = request.match_info["id"]
    if await read_json_object(request, empty={}):
        raise BadRequest("the body is empty or {}", code="invalid_input")
    secret = await rt.tokens.rotate(token_id, now=rt.clock(), actor=request[ACTOR])
    view = (await rt.tokens.get(token_id)).view()
    view["token"] = secret  # shown once: only its digest is stored
    return web.json_response(view, headers=NO_STORE)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/tokens", list_tokens)
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_post("/api/v1/tokens/{id}/disable", disable_token)
    app.router.add_post("/api/v1/tokens/{id}/rotate", rotate_token)
