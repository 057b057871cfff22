"""The `crl` capability: its service (built by the composition root), `/crl/{ca}.crl|.pem`, the partition CRLs
`/crl/{ca}/{partition}.crl|.pem` and its jobs."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from crl.web import CrlEndpoint

from ..appkeys import RUNTIME
from .service import CrlService

if TYPE_CHECKING:
    from ..config import Settings
    from ..runtime import Runtime

READINESS = "crl"
ENDPOINT: web.AppKey[CrlEndpoint] = web.AppKey("crl_endpoint", CrlEndpoint)


@contextlib.asynccontextmanager
async def open_crl(runtime: Runtime) -> AsyncIterator[CrlService]:
    """One publisher per CA of the runtime; a process publishes only while its publishers job runs (the server)."""
    service = CrlService(runtime)
    runtime.readiness.add(READINESS, service.readiness)
    runtime.ca_listeners.append(service.add_ca)
    try:
        yield service
    finally:
        runtime.ca_listeners.remove(service.add_ca)
        runtime.readiness.pop(READINESS, None)
        await service.stop_publishing()


def _endpoint(request: web.Request) -> CrlEndpoint:
    return request.app[ENDPOINT]


async def _der(request: web.Request) -> web.StreamResponse:
    return await _endpoint(request).der(request)


async def _pem(request: web.Request) -> web.StreamResponse:
    return await _endpoint(request).pem(request)


async def _partition_der(request: web.Request) -> web.StreamResponse:
    return await _endpoint(request).partition_der(request)


async def _partition_pem(request: web.Request) -> web.StreamResponse:
    return await _endpoint(request).partition_pem(request)


async def _other(request: web.Request) -> web.StreamResponse:
    return await _endpoint(request).other(request)


async def _attach(app: web.Application) -> None:
    """Once the runtime is built (the application's first start-up step): the endpoint over its publishers."""
    runtime = app[RUNTIME]
    assert runtime.crl is not None
    app[ENDPOINT] = CrlEndpoint(runtime.crl.publishers, settings=runtime.settings.crl,
                                partitions=runtime.crl.partition_publishers)  # live: grows with recorded counts


class CrlFeature:
    name = "crl"

    def enabled(self, settings: Settings) -> bool:
        return True

    def add_routes(self, app: web.Application) -> None:
        app.on_startup.append(_attach)
        app.router.add_get("/crl/{ca}.crl", _der)
        app.router.add_get("/crl/{ca}.pem", _pem)
        app.router.add_get("/crl/{ca}/{partition}.crl", _partition_der)
        app.router.add_get("/crl/{ca}/{partition}.pem", _partition_pem)
        app.router.add_get("/crl/{name}", _other)
        from .web import add_routes

        add_routes(app)  # POST /api/v1/cas/{ca}/crl/publish

    def jobs(self, runtime: Runtime) -> list[Callable[[], Awaitable[None]]]:
        from .jobs import change_feed, change_watcher, publishers, unused_certificates

        service = runtime.crl
        assert service is not None
        return [publishers(service), change_feed(service), change_watcher(service), unused_certificates(runtime)]


FEATURE = CrlFeature()

__all__ = ["ENDPOINT", "FEATURE", "CrlFeature", "open_crl"]
