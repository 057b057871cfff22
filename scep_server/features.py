"""The capabilities plugged into the core: each brings HTTP routes, background jobs and CLI commands.

A capability's services are built by the composition root (:mod:`scep_server.runtime`) and reach the rest
through the typed :class:`~scep_server.runtime.Runtime`. A feature module exposes a ``FEATURE`` object
following :class:`Feature`: the application adds the routes of every feature that is ``enabled`` (handlers
read the services from ``request.app[RUNTIME]``) and runs its ``jobs`` once the services exist. Command
groups are named in :data:`COMMANDS` and imported only when a command line uses them.

This module imports nothing at run time beyond the standard library (the CLI imports it for `--help`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from .config import Settings
    from .runtime import Runtime

# "module:attribute" of each feature object, in the order their routes are added and their jobs started
FEATURES: tuple[str, ...] = (
    "scep_server.crlwiring.feature:FEATURE",
    "scep_server.ocspwiring.feature:FEATURE",
    "scep_server.otpwiring.feature:FEATURE",
    "scep_server.challenge.feature:FEATURE",
    "scep_server.challenge.feature:ENROLMENTS",
    "scep_server.binding.feature:FEATURE",
    "scep_server.mdm.feature:FEATURE",
)

# command group name -> "module:attribute" (the module is imported when the group is used)
COMMANDS: dict[str, str] = {
    "audit": "scep_server.audit.cli:audit",
    "crl": "scep_server.crlwiring.cli:crl",
    "yubikey": "scep_server.otpwiring.cli:yubikey",
    "otp-client": "scep_server.otpwiring.cli:otp_client",
    "otp": "scep_server.otpwiring.cli:otp",
    "challenge": "scep_server.challenge.cli:challenge",
    "enrolment": "scep_server.challenge.cli:enrolment",
    "device": "scep_server.binding.cli:device",
    "ca": "scep_server.ca.cli:ca",
    "mdm": "scep_server.mdm.cli:mdm",
}


class Feature(Protocol):
    name: str

    def enabled(self, settings: "Settings") -> bool:
        """Whether the deployment switches this capability on (its routes and jobs exist only then)."""

    def add_routes(self, app: "web.Application") -> None:
        """Add HTTP routes (handlers read the services from ``request.app[RUNTIME]``)."""

    def jobs(self, runtime: "Runtime") -> list[Callable[[], Awaitable[None]]]:
        """Background loops the server runs (once per process) until shutdown."""


def load(settings: "Settings | None" = None) -> list[Feature]:
    """The features (only those `settings` switches on, when given)."""
    loaded = [_resolve(spec) for spec in FEATURES]
    return [f for f in loaded if settings is None or f.enabled(settings)]


def command(name: str):
    """The command group registered as `name` in COMMANDS (imports its module)."""
    return _resolve(COMMANDS[name])


def _resolve(spec: str):
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)
