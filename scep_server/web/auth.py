"""Bearer-token authentication for handlers that declare a `required_scope` (admin or signin)."""
from __future__ import annotations

import json

from aiohttp import web

from ..appkeys import RUNTIME


def problem(status: int, title: str, detail: str, **headers: str) -> web.Response:
    """An RFC 9457 problem+json response."""
    return web.Response(status=status, headers=headers, content_type="application/problem+json",
                        text=json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}))


def requires(scope: str):
    """Mark a handler as needing a bearer token of `scope`."""
    def mark(handler):
        handler.required_scope = scope
        return handler
    return mark


@web.middleware
async def bearer_auth(request: web.Request, handler):
    route_handler = request.match_info.handler
    scope = getattr(route_handler, "required_scope", None)
    if scope is None:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": f'Bearer realm="device-trust", scope="{scope}"'}
    if kind.lower() != "bearer" or not token.strip():
        return problem(401, "Unauthorized", f"a bearer token with scope {scope!r} is required", **challenge)
    granted = await request.app[RUNTIME].tokens.scope_of(token.strip())
    if granted is None:
        return problem(401, "Unauthorized", "unknown or disabled token", **challenge)
    if granted != scope:
        return problem(403, "Forbidden", f"this endpoint needs a token with scope {scope!r}, not {granted!r}")
    return await handler(request)
