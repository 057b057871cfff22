"""The console's API token pages (README "Console"), with the rules of `scep-server token` and /api/v1/tokens: the
token store (runtime.tokens) checks the scope, the name and the expiry, and records each change as an audit event
with the session's principal as its actor.

    GET  /admin/tokens                     the tokens, oldest first (pages; never a secret nor its digest), and
                                           the form that makes one
    POST /admin/tokens                     create: scope, name, an expiry (in: N followed by s, m, h or d; or at:
                                           ISO 8601, UTC unless it says), as on the command line; the token is
                                           shown once, on the answer to this POST
    GET|POST /admin/tokens/{id}/disable    a confirmation form, then the token is disabled (disabling the token
                                           of this session ends it)

A refused form (an expiry that does not parse: 400; an unknown scope, a name too long, an expiry in the past:
422) comes back with its message and what was typed, never a 500.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from trustkit import paging
from trustkit.clock import ExpiryError, expiry
from trustkit.problems import BadRequest, DomainError

from ..web.admin_tokens import PAGE_KEY
from .pages import PREFIX, SESSION
from .pages import form as _form, page as _page, redirect as _redirect, runtime as _runtime

SCOPES = ("admin", "signin")  # what the form offers; the token store decides
FIELDS = ("scope", "name", "expires_in", "expires_at")
MAX_FIELD = 1000


def _state(token: Any, now: datetime) -> str:
    if token.disabled_at is not None:
        return "disabled"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "enabled"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else ""


def _row(token: Any, now: datetime) -> dict[str, str]:
    return {"id": token.id, "name": token.name, "scope": token.scope, "state": _state(token, now),
            "created": _when(token.created_at), "expires": _when(token.expires_at),
            "last_used": _when(token.last_used_at), "disabled": _when(token.disabled_at)}


async def _list_page(request: web.Request, *, values: dict[str, str], error: str | None = None,
                     status: int = 200) -> web.Response:
    rt = _runtime(request)
    rows, next_url = [], None
    try:
        page = await rt.tokens.page(paging.page_request(request.query, PAGE_KEY, default=50))
        now = rt.clock()
        rows = [_row(t, now) for t in page.items]
        next_url = paging.next_link(request.rel_url, page)
    except BadRequest as exc:
        error, status = exc.detail, 400
    return _page(request, "tokens.jinja2", {"rows": rows, "next_url": next_url, "values": values,
                                            "scopes": SCOPES, "error": error,
                                            "own": request[SESSION].token_id}, status=status)


async def token_list(request: web.Request) -> web.Response:
    return await _list_page(request, values=dict.fromkeys(FIELDS, ""))


async def token_create(request: web.Request) -> web.Response:
    rt = _runtime(request)
    form = _form(request)
    values = dict.fromkeys(FIELDS, "")
    try:
        for name in FIELDS:
            value = form.get(name, "")
            if not isinstance(value, str) or len(value) > MAX_FIELD:
                raise BadRequest(f"{name}: at most {MAX_FIELD} characters", code="invalid_input", field=name)
            if "\x00" in value:  # refused in an API body too (PostgreSQL cannot store it)
                raise BadRequest(f"{name}: a NUL character", code="invalid_input", field=name)
            values[name] = value
        try:
            expires_at = expiry(values["expires_in"] or None, values["expires_at"] or None, rt.clock())
        except ExpiryError as exc:
            field = exc.field or "expires_in"
            raise BadRequest(f"{field}: {exc.message}", code="invalid_input", field=field) from None
        token_id, secret = await rt.tokens.create(scope=values["scope"], name=values["name"], now=rt.clock(),
                                                  expires_at=expires_at, actor=request[SESSION].principal)
    except DomainError as exc:
        return await _list_page(request, values=values, error=exc.detail, status=exc.status)
    token = _row(await rt.tokens.get(token_id), rt.clock())
    return _page(request, "token_created.jinja2", {"token": token, "secret": secret}, status=201)


async def _token(request: web.Request) -> dict[str, str]:
    rt = _runtime(request)
    return _row(await rt.tokens.get(request.match_info["id"]), rt.clock())  # UnknownToken: 404


async def disable_confirm(request: web.Request) -> web.Response:
    token = await _token(request)
    return _page(request, "token_disable.jinja2", {"token": token, "own": token["id"] == request[SESSION].token_id})


async def disable(request: web.Request) -> web.Response:
    rt = _runtime(request)
    await rt.tokens.disable(request.match_info["id"], now=rt.clock(), actor=request[SESSION].principal)
    return _redirect(f"{PREFIX}/tokens")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/tokens", token_list)
    app.router.add_post("/tokens", token_create)
    app.router.add_get("/tokens/{id}/disable", disable_confirm)
    app.router.add_post("/tokens/{id}/disable", disable)
