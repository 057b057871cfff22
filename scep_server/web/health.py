"""Liveness and readiness for operators.

`/readyz` answers 200 or 503 with ``{"ready": bool, "checks": {name: "ok" | "failed"}, "expiry": {ca: {"ca",
"ra", "next_ca"?: notAfter}}}``: which check failed, never why; and when each CA's certificate, RA certificate
and prepared next CA (public certificates) expire. The reason (an exception, a file name, a key store's message) goes to the log, once
each time it changes. Every check is computed at each request: a check is a function returning its detail
("ok" or "error: ...") or an awaitable of it.
"""
from __future__ import annotations

import asyncio
import inspect

import sqlalchemy as sa
import structlog
from aiohttp import web

from ..appkeys import RUNTIME
from ..ca.overview import expiry

log = structlog.get_logger("health")

DATABASE_TIMEOUT = 5.0  # seconds: a database that does not answer in time is not ready
_LAST_DETAIL = web.AppKey("readyz_last_detail", dict)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _database(runtime) -> str:
    async def ping() -> None:
        async with runtime.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    async with asyncio.timeout(DATABASE_TIMEOUT):
        await ping()
    return "ok"


async def check_details(runtime) -> dict[str, str]:
    """Every readiness check computed now: name -> "ok" or "error: ..." (the metrics' readiness gauge and the
    admin console show them)."""
    details: dict[str, str] = {}
    try:
        details["database"] = await _database(runtime)
    except Exception as exc:  # noqa: BLE001 - readiness reports any database failure
        details["database"] = f"error: {exc.__class__.__name__}: {exc}"
    details["ca"] = "ok" if runtime.cas else "error: no CA loaded"
    for name, check in list(runtime.readiness.items()):
        try:
            result = check()
            if inspect.isawaitable(result):  # a check that asks the database: bounded like the database's
                async with asyncio.timeout(DATABASE_TIMEOUT):
                    result = await result
            details[name] = str(result)
        except Exception as exc:  # noqa: BLE001 - a broken check is a failed check, not a 500
            details[name] = f"error: {exc.__class__.__name__}: {exc}"
    return details


async def readyz(request: web.Request) -> web.Response:
    details = await check_details(request.app[RUNTIME])
    last = request.app[_LAST_DETAIL]
    for name, detail in details.items():
        if detail != "ok" and last.get(name) != detail:
            log.warning("readyz.check_failed", check=name, detail=detail)
        elif detail == "ok" and name in last and last[name] != "ok":
            log.info("readyz.check_recovered", check=name)
        last[name] = detail
    checks = {name: "ok" if detail == "ok" else "failed" for name, detail in details.items()}
    ready = all(v == "ok" for v in checks.values())
    body = {"ready": ready, "checks": checks, "expiry": expiry(request.app[RUNTIME].cas)}
    return web.json_response(body, status=200 if ready else 503,
                             headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app[_LAST_DETAIL] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
