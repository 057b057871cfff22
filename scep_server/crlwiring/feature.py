"""The `crl` feature object (see scep_server.features)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click
import structlog
from aiohttp import web

from crl.web import CrlEndpoint

from ..appkeys import RUNTIME
from .service import CrlService

if TYPE_CHECKING:
    from ..runtime import Runtime

log = structlog.get_logger("crl.feature")

EXTRA = "crl"


def service_of(runtime: Runtime) -> CrlService:
    return runtime.extras[EXTRA]


class _LazyPublishers:
    """The publishers of the runtime the app is serving (built at start-up, after the routes are added)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def _map(self):
        runtime = self._app.get(RUNTIME)
        if runtime is None or EXTRA not in runtime.extras:
            return {}
        return runtime.extras[EXTRA].publishers

    def get(self, ca, default=None):
        return self._map().get(ca, default)

    def __iter__(self):
        return iter(self._map())


class CrlFeature:
    name = "crl"

    async def start(self, runtime: Runtime) -> None:
        service = CrlService(runtime)
        runtime.extras[EXTRA] = service
        runtime.extras.setdefault("readiness", {})[EXTRA] = service.readiness
        runtime.scep.crl_source = service.crl_source

    async def stop(self, runtime: Runtime) -> None:
        service: CrlService | None = runtime.extras.pop(EXTRA, None)
        if service is None:
            return
        await service.stop_publishing()
        await service.flush()  # a status change made by this process must not wait for the next schedule
        runtime.extras.get("readiness", {}).pop(EXTRA, None)

    def add_routes(self, app: web.Application) -> None:
        # the CA names are known only once the runtime exists: the endpoint resolves them per request
        endpoint = CrlEndpoint(_LazyPublishers(app), settings=None)
        app.on_startup.append(_configure_endpoint(endpoint))
        app.router.add_get("/crl/{ca}.crl", endpoint.der)
        app.router.add_get("/crl/{ca}.pem", endpoint.pem)
        app.router.add_get("/crl/{name}", endpoint.other)

    def jobs(self, runtime: Runtime) -> list[Callable[[], Awaitable[None]]]:
        from .jobs import change_feed, change_watcher, publishers, unused_certificates

        service = service_of(runtime)
        return [publishers(service), change_feed(service), change_watcher(service), unused_certificates(runtime)]

    def cli(self) -> list[click.Command]:
        from .cli import crl

        return [crl]


def _configure_endpoint(endpoint: CrlEndpoint):
    async def configure(app: web.Application) -> None:
        runtime = app.get(RUNTIME)
        if runtime is not None:
            endpoint.max_age = int(runtime.settings.crl.http_max_age.total_seconds())

    return configure


FEATURE = CrlFeature()

__all__ = ["FEATURE", "CrlFeature", "service_of"]
