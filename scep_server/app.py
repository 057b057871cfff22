"""The aiohttp application factory."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import structlog
from aiohttp import web

from . import features
from .appkeys import RUNTIME
from .clock import Clock, utcnow
from .config import Settings
from .runtime import open_runtime
from .web import auth, ca, client, health, scep

log = structlog.get_logger("http")


@web.middleware
async def no_tracebacks(request: web.Request, handler):
    """An unexpected error is logged with its traceback and answered with a bare 500, never leaked."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except web.RequestPayloadError as exc:  # a body that cannot be read as framed or encoded: the client's fault
        log.info("http.bad_body", method=request.method, path=request.path, detail=str(exc)[:200])
        return web.Response(status=400, text="the request body could not be read\n", content_type="text/plain")
    except Exception:
        log.exception("http.unhandled", method=request.method, path=request.path)
        return web.Response(status=500, text="internal error\n", content_type="text/plain")


def create_app(settings: Settings, *, clock: Clock = utcnow) -> web.Application:
    app = web.Application(client_max_size=settings.server.max_body_bytes,
                          middlewares=[client.middleware(settings.server.trusted_proxies,
                                                         settings.server.forwarded_header),
                                       no_tracebacks, auth.bearer_auth])

    loaded = features.load()

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(settings, clock=clock) as runtime:
            app[RUNTIME] = runtime
            tasks = [asyncio.create_task(_job(job), name=f"job:{feature.name}")
                     for feature in loaded for job in feature.jobs(runtime)]
            # delegated certificates left awaiting the MDM's acknowledgement: delivered or revoked
            tasks.append(asyncio.create_task(_job(runtime.scep.ack_reconciler), name="job:scep-ack"))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    app.cleanup_ctx.append(runtime_ctx)
    scep.add_routes(app)
    ca.add_routes(app)
    health.add_routes(app)
    for feature in loaded:
        feature.add_routes(app)
    return app


async def _job(job) -> None:
    """Run a background loop; a crash is logged (never silent) and the loop is not restarted."""
    try:
        await job()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("job.crashed", job=getattr(job, "__qualname__", repr(job)))
