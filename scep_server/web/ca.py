"""The CA certificate at the AIA caIssuers URL: GET /ca/{ca}.crt (DER)."""
from __future__ import annotations

from aiohttp import web

from trustkit.http import text_errors

from ..appkeys import RUNTIME


@text_errors
async def ca_cert(request: web.Request) -> web.Response:
    ca = request.app[RUNTIME].cas.get(request.match_info["ca"])
    if ca is None:
        raise web.HTTPNotFound(text=f"no CA named {request.match_info['ca']!r}\n")
    return web.Response(body=ca.cert_der, content_type="application/pkix-cert",
                        headers={"Cache-Control": "public, max-age=86400"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ca/{ca}.crt", ca_cert)
