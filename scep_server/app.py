"""The aiohttp application factory."""
from __future__ import annotations

from typing import AsyncIterator

import structlog
from aiohttp import web

from . import features
from .appkeys import RUNTIME
from trustkit.clock import Clock, utcnow
from .config import Settings
from .jobs import Supervisor
from .runtime import open_runtime
from .web import auth, ca, client, errors, health, scep

log = structlog.get_logger("http")

JOBS = web.AppKey("jobs", Supervisor)  # the supervisor of the background jobs, while the server runs


def create_app(settings: Settings, *, clock: Clock = utcnow) -> web.Application:
    app = web.Application(client_max_size=settings.server.max_body_bytes,
                          middlewares=[client.middleware(settings.server.trusted_proxies,
                                                         settings.server.forwarded_header),
                                       errors.errors, auth.bearer_auth])

    loaded = features.load()

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(settings, clock=clock) as runtime:
            app[RUNTIME] = runtime
            supervisor = app[JOBS] = Supervisor()
            readiness = runtime.extras.setdefault("readiness", {})
            for feature in loaded:
                for job in feature.jobs(runtime):
                    supervisor.start(f"{feature.name}.{job.__name__}", job, readiness)
            # delegated certificates left awaiting the MDM's acknowledgement: delivered or revoked
            supervisor.start("scep.ack_reconciler", runtime.scep.ack_reconciler, readiness)
            try:
                yield
            finally:
                await supervisor.stop()
                for name in supervisor.states:
                    readiness.pop(f"job:{name}", None)

    app.cleanup_ctx.append(runtime_ctx)
    scep.add_routes(app)
    ca.add_routes(app)
    health.add_routes(app)
    for feature in loaded:
        feature.add_routes(app)
    return app

