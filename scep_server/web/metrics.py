"""`GET /metrics`: the Prometheus text exposition (scep_server.metrics), on every worker.

Served on the application's own address, or, with ``[metrics] listen``, only on an address of its own (a
socket the workers share, like the main one). With ``token_env`` or ``token_file`` a scraper must send
``Authorization: Bearer <token>``; the token is compared in constant time (SHA-256 of both, then
``hmac.compare_digest``), and a missing or wrong one is a 401 problem with ``WWW-Authenticate: Bearer
realm="metrics"``.
"""
from __future__ import annotations

import hashlib
import hmac
import socket
from typing import AsyncIterator

from aiohttp import web

from trustkit.http import bearer_token, www_authenticate
from trustkit.problems import Unauthorized

from .. import metrics
from ..appkeys import RUNTIME
from ..config import Settings
from . import errors, protocol
from .health import check_details

REALM = "metrics"
_TOKEN = web.AppKey("metrics_token_sha256", object)  # bytes | None
_MAIN = web.AppKey("metrics_main_app", web.Application)


def _authorised(request: web.Request) -> None:
    expected = request.app[_TOKEN]
    if expected is None:
        return
    given = bearer_token(request)
    digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest() if given is not None else b""
    if given is None or not hmac.compare_digest(digest, expected):  # type: ignore[arg-type]
        raise Unauthorized("/metrics needs the scrape bearer token", headers=www_authenticate("Bearer", REALM))


async def serve_metrics(request: web.Request) -> web.Response:
    _authorised(request)
    main = request.app.get(_MAIN, request.app)
    runtime = main[RUNTIME]
    crls = [p.current for p in runtime.crl.publishers.values() if p.current is not None] if runtime.crl else []
    certificates = []
    for name, ca in runtime.cas.items():
        certificates += [(name, "ca", ca.cert.not_valid_after_utc), (name, "ra", ca.ra_cert.not_valid_after_utc)]
        if ca.next_ca_certs:  # a prepared rollover's new CA (GetNextCACert)
            certificates.append((name, "next-ca", ca.next_ca_certs[0].not_valid_after_utc))
    readiness = await check_details(runtime)
    tokens = []
    if runtime.settings.ca.key_backend == "pkcs11":
        from ..ca.tokencheck import READINESS

        tokens.append((runtime.settings.ca.pkcs11_token_label or "", readiness.get(READINESS) == "ok"))
    snapshot = metrics.Snapshot(crls=crls, certificates=certificates, readiness=readiness, tokens=tokens)
    body, content_type = metrics.render(snapshot, request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def install(app: web.Application, settings: Settings, *, sock: socket.socket | None = None) -> None:
    """Turn recording on in this process and serve /metrics (on the app, or on the metrics address). Call it
    after the runtime's cleanup context is added: the metrics listener starts after the services and stops
    before them. Raises ConfigError when the token's source is empty."""
    section = settings.metrics
    if not section.enabled:
        return
    token = section.token()
    digest = hashlib.sha256(token.encode()).digest() if token is not None else None
    metrics.activate()
    # every answer is counted by the outermost middleware (scep_server.web.access), refusals included
    if section.listen is None:
        app[_TOKEN] = digest
        app.router.add_get("/metrics", serve_metrics)
        return
    side = web.Application(middlewares=[errors.errors], handler_args=protocol.LIMITS)
    side[_TOKEN] = digest
    side[_MAIN] = app
    side.router.add_get("/metrics", serve_metrics)

    async def listener(_app: web.Application) -> AsyncIterator[None]:
        runner = protocol.AppRunner(side, access_log=None)  # what its parser refuses: a problem document too
        await runner.setup()
        site = (web.SockSite(runner, sock) if sock is not None
                else web.TCPSite(runner, section.host, section.port, reuse_address=True))
        await site.start()
        try:
            yield
        finally:
            await runner.cleanup()

    app.cleanup_ctx.append(listener)
