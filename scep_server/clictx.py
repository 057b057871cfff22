"""What every `scep-server` command shares: settings from the global options, services opened per command.

Feature command groups use ``pass_ctx`` and ``async with ctx.runtime() as rt`` like the core commands.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import click

from .config import ConfigError, Settings, load_settings


class Context:
    """Settings shared by every command; services are opened per command."""

    def __init__(self, config: str | None, data_dir: str | None):
        self.config = config
        self.data_dir = data_dir
        self._settings: Settings | None = None

    def settings(self, **overrides: Any) -> Settings:
        if self._settings is None or overrides:
            try:
                extra = {"data_dir": self.data_dir} if self.data_dir else {}
                self._settings = load_settings(self.config, **extra, **overrides)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
        return self._settings

    @contextlib.asynccontextmanager
    async def runtime(self):
        from .runtime import open_runtime

        try:
            async with open_runtime(self.settings()) as rt:
                yield rt
        except FileNotFoundError as exc:
            raise click.ClickException(str(exc)) from None


def run(coro):
    return asyncio.run(coro)


pass_ctx = click.make_pass_decorator(Context)
