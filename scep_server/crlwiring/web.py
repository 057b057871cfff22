"""Admin API of the CRLs (`admin` token): ``POST /api/v1/cas/{ca}/crl/publish`` signs and records a new
CRL of the CA now and answers its number and times (404 for an unknown CA, 503 when signing or recording
fails: the previous CRL is still served)."""
from __future__ import annotations

from aiohttp import web

from crl.publish import PublishError
from trustkit.http import read_json_object
from trustkit.problems import BadRequest, Conflict, NotFound, ServiceUnavailable

from ..appkeys import RUNTIME
from ..web.auth import requires
from .service import describe


@requires("admin")
async def publish(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    name = request.match_info["ca"]
    if await read_json_object(request, empty={}):  # no body, or an empty object
        raise BadRequest("the body is empty or {}", code="invalid_input")
    if name not in runtime.cas:
        raise NotFound(f"no CA named {name!r}", code="ca_not_found")
    if runtime.crl is None:  # pragma: no cover - the server opens the CRL service whenever this route exists
        raise Conflict("this process publishes no CRL", code="capability_off")
    try:
        published = await runtime.crl.publish(name)
    except PublishError as exc:
        raise ServiceUnavailable(f"the CRL of {name!r} was not published; the previous one is still served",
                                 code="crl_publish_failed") from exc
    return web.json_response(describe(published))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/cas/{ca}/crl/publish", publish)
