"""`scep-server yubikey ...` and `scep-server otp-client ...`: otp's command groups on the application's database."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, AsyncIterator

import click

from otp.cli import build_cli

from ..clictx import Context

if TYPE_CHECKING:
    from otp.service import OtpService
    from otp.sqlitereads import OtpReads


@contextlib.asynccontextmanager
async def _open_service(*, with_kek: bool = True) -> AsyncIterator["OtpService"]:
    """The OTP service of one command (settings from `scep-server`'s options); nothing else is opened."""
    from ..runtime import Uses

    ctx = click.get_current_context().find_object(Context)
    if ctx is None:
        raise click.UsageError("run this command through `scep-server`")
    async with ctx.runtime(Uses(otp=True, otp_kek=with_kek)) as runtime:
        assert runtime.otp is not None
        yield runtime.otp


def _open_reads() -> "OtpReads | None":
    """The report's sqlite3 reader where the listing commands read directly (scep_server.store.sqlitereads) and
    the capability is on and its key-encryption key file is in place; None: the command opens the service, which
    names a capability switched off or a key-encryption key lost while keys are sealed under it."""
    from ..config import enabled
    from ..store.sqlitereads import reads_path

    ctx = click.get_current_context().find_object(Context)
    if ctx is None or not enabled(ctx.settings(), "otp"):
        return None
    settings = ctx.settings()
    kek = settings.otp.kek_path(settings.data_dir)
    path = reads_path(settings)
    if path is None:
        return None
    from otp.sqlitereads import OtpReads

    reads = OtpReads(path)
    if kek is not None and not kek.exists() and reads.sealed_count():
        reads.close()
        return None
    return reads


yubikey, otp_client = build_cli(_open_service, _open_reads)


@click.group("otp")
def otp() -> None:
    """The OTP factor's key-encryption key."""


@otp.group("kek")
def kek() -> None:
    """The key-encryption key that seals the YubiKey AES keys and OTP client keys."""


@kek.command("rotate")
def kek_rotate() -> None:
    """Re-seal every YubiKey key and OTP client key under a new key-encryption key, in one transaction
    (docs/otp.md "Rotating the key-encryption key").

    The new key is written beside the current one first; once the database committed, it takes the KEK
    file's name and the previous file is kept as <file>.<kek id>.previous until you remove it. The running
    servers read the new key when they first meet a key sealed under it: no restart. An import or a new OTP
    client written meanwhile is sealed again under the new key, or refused (503) until the file is in place.
    """
    import asyncio
    import base64
    import os
    import secrets as random

    from otp.kek import KekError, SecretBox, read_kek_file
    from otp.rekey import reseal_all
    from trustkit.clock import utcnow
    from trustkit.db import writer

    from ..ca.keys import durable_write, fsync_directory
    from ..clictx import cli_actor
    from ..config import enabled
    from ..runtime import Uses
    from ..store.events import record_event

    ctx = click.get_current_context().find_object(Context)
    settings = ctx.settings()
    if not enabled(settings, "otp"):
        raise click.ClickException("the otp capability is switched off in this deployment ([otp] enabled = false)")
    path = settings.otp.kek_path(settings.data_dir)
    if path is None:
        raise click.ClickException(f"the key-encryption key comes from ${settings.otp.kek_env}: set otp.kek_file to "
                                   "rotate it here, or re-seal with a file first")
    try:
        old = read_kek_file(path)
    except KekError as exc:
        raise click.ClickException(str(exc)) from None
    new = random.token_bytes(32)
    old_id, new_id = SecretBox(old).kek_id, SecretBox(new).kek_id
    staged = path.with_name(path.name + ".new")
    try:
        durable_write(staged, base64.b64encode(new) + b"\n", mode=0o600, exclusive=True)
    except FileExistsError:
        raise click.ClickException(f"{staged} exists: a rotation was interrupted. If the database's keys are sealed "
                                   f"under it (`yubikey report` works with it), move it to {path}; else remove "
                                   "it") from None

    async def go():
        async with ctx.runtime(Uses()) as rt:
            async with writer(rt.engine).begin() as conn:
                counts = await reseal_all(conn, old, new)
                await record_event(conn, at=utcnow(), kind="security.otp.kek_rotate", actor=cli_actor(),
                                   data={"previous_kek_id": old_id, "kek_id": new_id, "keys": counts[0],
                                         "clients": counts[1]})
            return counts

    try:
        keys, clients = asyncio.run(go())
    except KekError as exc:
        staged.unlink(missing_ok=True)
        raise click.ClickException(f"nothing changed: {exc}") from None
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    previous = path.with_name(f"{path.name}.{old_id}.previous")
    if not previous.exists():
        os.link(path, previous)
    os.replace(staged, path)
    fsync_directory(path.parent)
    click.echo(f"re-sealed {keys} YubiKey keys and {clients} OTP client keys under KEK {new_id} (was {old_id}); "
               f"the new key is in {path}, the previous one in {previous} until you remove it; the running "
               "servers read it when they need it")


__all__ = ["kek", "otp", "otp_client", "yubikey"]
