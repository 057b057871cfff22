"""Admin API of our CAs' lifecycle (`admin` token; docs/api.md "Certificates and CAs").

    POST /api/v1/cas/{ca}/ra/renew   a new RA certificate and key; the previous RA still decrypts until it expires

The actor recorded is the caller's token. `GET /api/v1/cas` is in `scep_server.web.admin_certs`.
"""
from __future__ import annotations

from aiohttp import web

from trustkit.http import read_json_object
from trustkit.problems import BadRequest

from ..appkeys import RUNTIME
from ..ca import lifecycle
from .auth import ACTOR, requires


@requires("admin")
async def renew_ra(request: web.Request) -> web.Response:
    if await read_json_object(request, empty={}):
        raise BadRequest("the body is empty or {}", code="invalid_input")
    renewed = await lifecycle.renew(request.app[RUNTIME], request.match_info["ca"], actor=request[ACTOR])
    assert renewed is not None  # an unconditional renewal always issues
    return web.json_response(renewed)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/cas/{ca}/ra/renew", renew_ra)
