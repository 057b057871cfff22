"""Optional capabilities plugged into the core: each brings services, HTTP routes, CLI commands and jobs.

A feature is a module exposing a ``FEATURE`` object that follows :class:`Feature`. The core calls
``start`` once per process after the core services exist (in the server and in every CLI command),
``add_routes`` when the application is built, ``jobs`` for background loops run only by the server,
and ``cli`` for its command groups. Features talk to each other through ``runtime.extras`` and the
hooks the core exposes (challenge verifiers, certificate status listeners), never by importing the
server's wiring.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

import click
from aiohttp import web

if TYPE_CHECKING:
    from .runtime import Runtime

# Order matters: a later feature may use what an earlier one put into runtime.extras.
FEATURE_MODULES: tuple[str, ...] = (
    "scep_server.crlwiring",
    "scep_server.otpwiring",
    "scep_server.challenge.feature",
    "scep_server.binding.feature",
)


class Feature(Protocol):
    name: str

    async def start(self, runtime: "Runtime") -> None:
        """Build this feature's services and register them (runtime.extras, verifiers, listeners)."""

    async def stop(self, runtime: "Runtime") -> None:
        """Release what ``start`` acquired."""

    def add_routes(self, app: web.Application) -> None:
        """Add HTTP routes (handlers read the runtime from ``request.app[RUNTIME]``)."""

    def jobs(self, runtime: "Runtime") -> list[Callable[[], Awaitable[None]]]:
        """Background loops the server runs (once per process) until shutdown."""

    def cli(self) -> list[click.Command]:
        """Command groups added to `scep-server`."""


def load() -> list[Feature]:
    return [importlib.import_module(name).FEATURE for name in FEATURE_MODULES]
