"""What every `scep-server` command shares: settings from the global options, services opened per command.

A command opens only the services it uses: ``async with ctx.runtime(Uses(...)) as rt`` (see
:class:`scep_server.runtime.Uses`; without an argument, the core: engine, profiles, tokens, revocation). A
command that only lists profiles or certificates reads through ``ctx.read(...)``, which on the embedded SQLite
database opens no service at all (scep_server.store.sqlitereads).
This module and the command modules import the rest of the application on use, so `--help` stays quick.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, TypeVar

import click

from . import importhooks

T = TypeVar("T")

if TYPE_CHECKING:
    from .config import Settings
    from .runtime import Runtime, Uses


class Context:
    """Settings shared by every command; services are opened per command."""

    def __init__(self, config: str | None, data_dir: str | None):
        self.config = config
        self.data_dir = data_dir
        self._settings: Settings | None = None

    def settings(self, **overrides: Any) -> "Settings":
        from .config import ConfigError, load_settings

        if self._settings is None or overrides:
            try:
                extra = {"data_dir": self.data_dir} if self.data_dir else {}
                self._settings = load_settings(self.config, **extra, **overrides)
                self._settings.database_url()  # a database.url_file that cannot be read stops here, named
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
        return self._settings

    @contextlib.asynccontextmanager
    async def runtime(self, uses: "Uses | None" = None) -> AsyncIterator["Runtime"]:
        from .runtime import CaKeysUnavailable, CapabilityOff, Uses, database_failure, database_unusable, open_runtime

        try:
            async with open_runtime(self.settings(), uses=uses or Uses()) as rt:
                yield rt
        except (CapabilityOff, CaKeysUnavailable) as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            # refused, read-only (a role without the right), not a database, no route to it (runtime.database_failure)
            if database_failure(exc):
                raise click.ClickException(str(database_unusable(self.settings(), exc))) from None
            if isinstance(exc, FileNotFoundError):  # no CA yet (a file's error names the file)
                raise click.ClickException(str(exc)) from None
            raise


    def read(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(stores)`` for a listing command that reads ``stores.profiles.page`` or ``stores.certificates.list``:
        on the embedded SQLite database the standard library's sqlite3 reads (scep_server.store.sqlitereads; no
        SQLAlchemy, no services, and no event loop: those reads never wait), elsewhere the runtime's stores."""
        import sqlite3

        from trustkit.sqlitereads import complete

        from .store.sqlitereads import open_reads

        try:
            reader = open_reads(self.settings())
            if reader is None:
                async def go() -> T:
                    async with self.runtime() as rt:
                        return await fn(rt)

                return run(go())
            with reader:
                return complete(fn(reader))
        except sqlite3.Error as exc:  # unreadable, not a database, a WAL database in a directory it cannot write
            from .runtime import database_unusable

            raise click.ClickException(str(database_unusable(self.settings(), exc))) from None


MAX_SECRET_FILE = 4096  # characters read from a secret's file: a secret is a line, never a document


def secret_from(value: str | None, file: Any, *, option: str) -> str | None:
    """A secret given on the command line (``--X``) or, kept out of the process list, in a file (``--X-file``;
    ``-`` reads standard input): the file's first line without its line end. None when neither is given."""
    if file is None:
        return value
    if value is not None:
        raise click.UsageError(f"give --{option} or --{option}-file, not both")
    try:
        text = file.read(MAX_SECRET_FILE + 1)
    except UnicodeDecodeError:
        text = ""  # not text: refused below, as an empty file is
    line = text.splitlines()[0] if text else ""
    if not line or len(line) > MAX_SECRET_FILE:
        raise click.BadParameter(f"its first line must hold the secret (1 to {MAX_SECRET_FILE} characters of UTF-8)",
                                 param_hint=f"--{option}-file")
    return line


def cli_actor() -> str:
    """The actor of a change made on the command line: ``cli:<os user>`` (``cli`` where no user name exists)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"[:255]
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


def run(coro):
    import asyncio

    return asyncio.run(coro)


pass_ctx = click.make_pass_decorator(Context)

importhooks.install()  # before a command imports SQLAlchemy's asyncio extension or structlog
