"""The aiohttp application factory."""
from __future__ import annotations

import functools
import socket
from typing import AsyncIterator

from aiohttp import web

from . import features
from .appkeys import RUNTIME
from trustkit.clock import Clock, utcnow
from .config import Settings
from .jobs import Supervisor
from .audit import web as audit_web
from .ca import lifecycle as ra_lifecycle
from .runtime import Uses, open_runtime
from .web import (access, admin_cas, admin_certs, admin_profiles, admin_tokens, apidoc, auth, bodytime, ca, client,
                  errors, health, metrics, protocol, scep, sendtime)

JOBS = web.AppKey("jobs", Supervisor)  # the supervisor of the background jobs, while the server runs


def create_app(settings: Settings, *, clock: Clock = utcnow, metrics_sock: socket.socket | None = None
               ) -> web.Application:
    """The application. ``metrics_sock``: the pre-bound socket of ``[metrics] listen`` (`serve` binds it once
    for all workers); without it the application binds that address itself."""
    # outermost first: the request id and access line see every answer (problems, 404, 405, 500)
    # handler_args: the HTTP parser's limits (a SCEP GET's request line may pass aiohttp's 8190 bytes)
    # bodytime: the deadline for receiving a body, armed before any route or check reads it
    # sendtime: the deadline for sending a large answer, whatever route or error made it
    app = web.Application(client_max_size=settings.server.max_body_bytes, handler_args=protocol.LIMITS,
                          middlewares=[access.middleware(settings.log.access),
                                       client.middleware(settings.server.trusted_proxies,
                                                         settings.server.forwarded_header),
                                       bodytime.middleware(settings.server.body_timeout_seconds,
                                                           settings.server.body_min_rate),
                                       sendtime.middleware(settings.server.send_timeout_seconds,
                                                           settings.server.send_min_rate),
                                       errors.errors, auth.bearer_auth])

    loaded = features.load(settings)  # the capabilities switched on: their routes, jobs and services only

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        # services first (the composition root), then what uses them: jobs, and the routes' late parts
        async with open_runtime(settings, clock=clock, uses=Uses.server(settings)) as runtime:
            app[RUNTIME] = runtime
            supervisor = app[JOBS] = Supervisor()
            for feature in loaded:
                for job in feature.jobs(runtime):
                    supervisor.start(f"{feature.name}.{job.__name__}", job, runtime.readiness)
            # delegated certificates left awaiting the MDM's acknowledgement: delivered or revoked
            assert runtime.scep is not None
            supervisor.start("scep.ack_reconciler", runtime.scep.ack_reconciler, runtime.readiness)
            # pending enrolments nobody decided within their profile's pending_expiry_days: rejected
            supervisor.start("scep.pending_expiry", runtime.scep.pending_expiry, runtime.readiness)
            # RA certificates: renewed before they expire, a renewal made elsewhere picked up
            supervisor.start("ca.ra_lifecycle", ra_lifecycle.ra_job(runtime), runtime.readiness)
            runtime.readiness.add("ca.ra", functools.partial(ra_lifecycle.ra_readiness, runtime))
            if settings.ca.key_backend == "pkcs11":  # the token still answers (reopened when it came back)
                from .ca import tokencheck

                runtime.readiness.add(tokencheck.READINESS,
                                      tokencheck.TokenCheck(functools.partial(tokencheck.pools, runtime.cas)))
            if settings.audit.chain:  # the audit trail's hash chain: new events are sealed every seal_interval
                from .audit.service import sealer_job

                supervisor.start("audit.sealer", sealer_job(runtime), runtime.readiness)
            try:
                yield
            finally:
                await supervisor.stop()
                for name in supervisor.states:
                    runtime.readiness.pop(f"job:{name}", None)
                if runtime.crl is not None:
                    await runtime.crl.flush()  # a status change made here must not wait for another process

    app.cleanup_ctx.append(runtime_ctx)
    metrics.install(app, settings, sock=metrics_sock)
    scep.add_routes(app)
    ca.add_routes(app)
    health.add_routes(app)
    admin_certs.add_routes(app)
    admin_cas.add_routes(app)
    audit_web.add_routes(app)
    admin_profiles.add_routes(app)
    admin_tokens.add_routes(app)
    apidoc.add_routes(app)
    if settings.console.enabled:  # the admin console's pages at /admin/
        from .console import web as console_web

        console_web.add_routes(app)
    for feature in loaded:
        feature.add_routes(app)
    return app
