"""The `challenge` capability (`[challenge] enabled`): dynamic and delegated challenge verifiers, their HTTP
endpoints and cleanup. The composition root hands the verifiers to the SCEP service."""
from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from .service import ChallengeService

if TYPE_CHECKING:
    from ..config import Settings
    from ..runtime import Runtime

log = structlog.get_logger("challenge")

PRUNE_EVERY_SECONDS = 3600


@contextlib.asynccontextmanager
async def open_challenges(runtime: "Runtime") -> AsyncIterator[ChallengeService]:
    service = ChallengeService(runtime)
    try:
        yield service
    finally:
        await service.close()


class ChallengeFeature:
    name = "challenge"

    def enabled(self, settings: "Settings") -> bool:
        return settings.challenge.enabled

    def add_routes(self, app: web.Application) -> None:
        from . import web as handlers

        # a HEAD would issue a challenge nobody sees (and fill max_unused): GET only
        app.router.add_get("/scep/{profile}/challenge", handlers.get_challenge, allow_head=False)
        app.router.add_post("/scep/{profile}/challenge", handlers.jamf_webhook)
        app.router.add_post("/api/v1/challenges/{profile}", handlers.api_new_challenge)

    def jobs(self, runtime: "Runtime") -> list[Callable[[], Awaitable[None]]]:
        service = runtime.challenges
        assert service is not None

        async def prune() -> None:
            while True:
                removed = await service.store.prune(now=runtime.clock())
                if removed:
                    log.info("challenge.pruned", removed=removed)
                forgotten = await service.throttle.prune(runtime.clock())
                if forgotten:
                    log.info("challenge.login_throttle_pruned", removed=forgotten)
                await asyncio.sleep(PRUNE_EVERY_SECONDS)

        return [prune]


class EnrolmentsFeature:
    """Enrolments waiting for approval (profiles with require_approval, static ones too): always on."""

    name = "enrolments"

    def enabled(self, settings: "Settings") -> bool:
        return True

    def add_routes(self, app: web.Application) -> None:
        from . import web as handlers

        app.router.add_get("/api/v1/enrolments", handlers.api_list_enrolments)
        app.router.add_post("/api/v1/enrolments/{profile}/approve", handlers.api_approve)
        app.router.add_post("/api/v1/enrolments/{profile}/reject", handlers.api_reject)

    def jobs(self, runtime: "Runtime") -> list[Callable[[], Awaitable[None]]]:
        return []


FEATURE = ChallengeFeature()
ENROLMENTS = EnrolmentsFeature()
