"""The aiohttp application factory."""
from __future__ import annotations

from typing import AsyncIterator

import structlog
from aiohttp import web

from .appkeys import RUNTIME
from .clock import Clock, utcnow
from .config import Settings
from .runtime import open_runtime
from .web import auth, ca, health, scep

log = structlog.get_logger("http")


@web.middleware
async def no_tracebacks(request: web.Request, handler):
    """An unexpected error is logged with its traceback and answered with a bare 500, never leaked."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("http.unhandled", method=request.method, path=request.path)
        return web.Response(status=500, text="internal error\n", content_type="text/plain")


def create_app(settings: Settings, *, clock: Clock = utcnow) -> web.Application:
    app = web.Application(client_max_size=settings.server.max_body_bytes,
                          middlewares=[no_tracebacks, auth.bearer_auth])

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(settings, clock=clock) as runtime:
            app[RUNTIME] = runtime
            yield

    app.cleanup_ctx.append(runtime_ctx)
    scep.add_routes(app)
    ca.add_routes(app)
    health.add_routes(app)
    return app
