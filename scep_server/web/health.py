"""Liveness and readiness for operators."""
from __future__ import annotations

import sqlalchemy as sa
from aiohttp import web

from ..appkeys import RUNTIME


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    checks: dict[str, str] = {}
    try:
        async with runtime.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any database failure
        checks["database"] = f"error: {exc.__class__.__name__}"
    checks["ca"] = "ok" if runtime.cas else "error: no CA loaded"
    for name, check in runtime.extras.get("readiness", {}).items():
        checks[name] = check()
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
