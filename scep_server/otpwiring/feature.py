"""The `otp` capability: its routes and jobs (the service: scep_server.otpwiring.service)."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Awaitable, Callable

import structlog
from aiohttp import web

from otp import web as otp_web
from otp.service import OtpService

from ..appkeys import RUNTIME
from ..web import auth
from .service import OtpStartError, open_otp

if TYPE_CHECKING:
    from ..config import Settings
    from ..runtime import Runtime

log = structlog.get_logger("otp.feature")

def _service_for(request: web.Request) -> OtpService:
    service = request.app[RUNTIME].otp
    assert service is not None  # the routes exist only when the capability is on
    return service


def client_address(request: web.Request) -> str | None:
    """Where an OTP request comes from, for throttling and security events: the TCP peer."""
    return request.remote


PRUNE_INTERVAL_SECONDS = 3600.0


def _prune_job(service: OtpService, interval: float = PRUNE_INTERVAL_SECONDS) -> Callable[[], Awaitable[None]]:
    """Security events past their retention and spent throttling rows are deleted hourly (and at start)."""
    async def prune() -> None:
        while True:
            try:
                await service.prune()
            except Exception as exc:  # noqa: BLE001 - a failed round is retried at the next one
                log.error("otp.prune.failed", error=f"{exc.__class__.__name__}: {exc}")
            await asyncio.sleep(interval)
    return prune


FLUSH_INTERVAL_SECONDS = 60.0


def _flush_job(service: OtpService, interval: float = FLUSH_INTERVAL_SECONDS) -> Callable[[], Awaitable[None]]:
    """The verifications counted in memory are added to the hourly counts in the database every minute (and
    when the service closes)."""
    async def flush() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await service.flush_verify_counts()
            except Exception as exc:  # noqa: BLE001 - the counts are kept and added at the next round
                log.error("otp.verify_counts.failed", error=f"{exc.__class__.__name__}: {exc}")
    return flush


class OtpFeature:
    name = "otp"

    def enabled(self, settings: "Settings") -> bool:
        return settings.otp.enabled

    def add_routes(self, app: web.Application) -> None:
        otp_web.add_routes(app, _service_for, authenticate=auth.authenticate_token, realm=auth.REALM,
                           client_address=client_address)

    def jobs(self, runtime: "Runtime") -> list[Callable[[], Awaitable[None]]]:
        assert runtime.otp is not None
        return [_prune_job(runtime.otp), _flush_job(runtime.otp)]


FEATURE = OtpFeature()

__all__ = ["FEATURE", "OtpFeature", "OtpStartError", "open_otp"]
