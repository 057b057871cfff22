"""The `ocsp` capability (``[ocsp] enabled``): its service, `/ocsp/{ca}` and its jobs (the change scanner,
the delegated signers' renewal)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from .service import OcspService

if TYPE_CHECKING:
    from ..config import Settings
    from ..runtime import Runtime

log = structlog.get_logger("ocsp.jobs")
READINESS = "ocsp"


@contextlib.asynccontextmanager
async def open_ocsp(runtime: Runtime) -> AsyncIterator[OcspService]:
    """The responder over the runtime's CAs: signers loaded (or issued), listening to the CRL change feed."""
    service = OcspService(runtime)
    await service.start()
    if runtime.crl is not None:
        runtime.crl.remote_listeners.append(service.on_remote_change)
    runtime.readiness.add(READINESS, service.readiness)
    runtime.ca_listeners.append(service.add_ca)
    try:
        yield service
    finally:
        runtime.ca_listeners.remove(service.add_ca)
        runtime.readiness.pop(READINESS, None)
        if runtime.crl is not None and service.on_remote_change in runtime.crl.remote_listeners:
            runtime.crl.remote_listeners.remove(service.on_remote_change)


def scanner(service: OcspService):
    async def scan_changes() -> None:
        await service.run_scanner()

    return scan_changes


def signer_renewal(service: OcspService):
    """Every ocsp.signer_check_interval: adopt a signer another process renewed, or renew one that is due."""
    async def renew_signers() -> None:
        interval = service.settings.signer_check_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await service.refresh_signers()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried at the next check; the current signer still signs
                log.error("ocsp.signer.renew_failed", error=f"{type(exc).__name__}: {exc}")

    return renew_signers


class OcspFeature:
    name = "ocsp"

    def enabled(self, settings: Settings) -> bool:
        return settings.ocsp.enabled

    def add_routes(self, app: web.Application) -> None:
        from .web import add_routes

        add_routes(app)

    def jobs(self, runtime: Runtime) -> list[Callable[[], Awaitable[None]]]:
        service = runtime.ocsp
        assert service is not None
        return [scanner(service), signer_renewal(service)]


FEATURE = OcspFeature()

__all__ = ["FEATURE", "OcspFeature", "open_ocsp"]
