"""The challenge feature: dynamic and delegated challenge verifiers, their HTTP endpoints, CLI and cleanup."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Awaitable, Callable

import click
import structlog
from aiohttp import web

from .service import EXTRAS_KEY, ChallengeService, DelegatedVerifier, DynamicVerifier

if TYPE_CHECKING:
    from ..runtime import Runtime

log = structlog.get_logger("challenge")

PRUNE_EVERY_SECONDS = 3600


class ChallengeFeature:
    name = "challenge"

    async def start(self, runtime: "Runtime") -> None:
        service = ChallengeService(runtime)
        runtime.extras[EXTRAS_KEY] = service
        runtime.scep.verifiers["dynamic"] = DynamicVerifier(service)
        runtime.scep.verifiers["delegated"] = DelegatedVerifier(service)

    async def stop(self, runtime: "Runtime") -> None:
        service = runtime.extras.pop(EXTRAS_KEY, None)
        if service is not None:
            await service.close()

    def add_routes(self, app: web.Application) -> None:
        from .web import add_routes

        add_routes(app)

    def jobs(self, runtime: "Runtime") -> list[Callable[[], Awaitable[None]]]:
        async def prune() -> None:
            while True:
                service = runtime.extras[EXTRAS_KEY]
                removed = await service.store.prune(now=runtime.clock())
                if removed:
                    log.info("challenge.pruned", removed=removed)
                forgotten = await service.throttle.prune(runtime.clock())
                if forgotten:
                    log.info("challenge.login_throttle_pruned", removed=forgotten)
                await asyncio.sleep(PRUNE_EVERY_SECONDS)

        return [prune]

    def cli(self) -> list[click.Command]:
        from .cli import challenge, enrolment

        return [challenge, enrolment]


FEATURE = ChallengeFeature()
