"""The OTP service of a process (``runtime.otp``), opened by the composition root: the key-encryption key,
its safety checks and the readiness check. No HTTP here: a command opens it without loading the routes."""
from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import click
import sqlalchemy as sa

from otp.kek import KekError
from otp.service import OtpService
from otp.tables import otp_clients, otp_yubikeys

from .. import metrics

if TYPE_CHECKING:
    from ..runtime import Runtime


def _server_log():
    """structlog's logger once logging is set up (the server, or a command that set it up); None otherwise:
    an unconfigured structlog would write to stdout, and a command that does not log need not import it."""
    structlog = sys.modules.get("structlog")
    if structlog is None or not structlog.is_configured():
        return None
    return structlog.get_logger("otp.feature")

READINESS = "otp"


class OtpStartError(click.ClickException):
    """The OTP factor cannot start (its key-encryption key is missing or unreadable)."""


def _announce_kek(path: Path) -> None:
    """Say, once, that the KEK was created: a structured event when logging is set up (`serve`, whose stderr
    holds only log lines: one JSON object each with log.format=json), else a line on stderr (a CLI command,
    where an unconfigured structlog would write to stdout)."""
    message = (f"created the OTP key-encryption key {path} (mode 0600): it seals the imported YubiKey AES keys "
               "and OTP client keys; back it up apart from the database, without it they cannot be used")
    log = _server_log()
    if log is not None:
        log.warning("otp.kek.created", path=str(path), detail=message)
    else:
        print(message, file=sys.stderr, flush=True)


def _report_kek_mismatch(text: str, kek_id: str) -> None:
    """Keys sealed under another KEK: a structured event in the server, a stderr line in a CLI command
    (where structlog is not set up and would write to stdout, mixing with a command's output)."""
    log = _server_log()
    if log is not None:
        log.error("otp.kek.mismatch", detail=text, kek_id=kek_id)
    else:
        print(f"error: {text}", file=sys.stderr, flush=True)


async def _sealed_keys(runtime: "Runtime") -> int:
    """How many live keys and active clients hold secrets sealed under some KEK (0 if the schema is missing)."""
    try:
        async with runtime.engine.connect() as conn:
            keys = (await conn.execute(sa.select(sa.func.count()).select_from(otp_yubikeys).where(
                otp_yubikeys.c.deleted_at.is_(None)))).scalar_one()
            clients = (await conn.execute(sa.select(sa.func.count()).select_from(otp_clients).where(
                otp_clients.c.disabled_at.is_(None)))).scalar_one()
    except sa.exc.SQLAlchemyError:
        return 0
    return keys + clients


def other_kek_count(kek_id: str) -> sa.Select:
    """How many live keys are sealed under another KEK than ``kek_id``: the keys below it and those above it, two
    ranges of ix_otp_yubikeys_live_kek (an unauthenticated /readyz asks at each call: never a walk of every key)."""
    def count(other: sa.ColumnElement[bool]) -> sa.ScalarSelect:
        return (sa.select(sa.func.count()).select_from(otp_yubikeys)
                .where(otp_yubikeys.c.deleted_at.is_(None), other).scalar_subquery())
    return sa.select(count(otp_yubikeys.c.kek_id < kek_id) + count(otp_yubikeys.c.kek_id > kek_id))


async def _kek_readiness(service: OtpService) -> str:
    """"ok" when every live key was sealed under the KEK in use (a replaced KEK fails every OTP)."""
    async with service.store.engine.connect() as conn:
        others = (await conn.execute(other_kek_count(service.kek_id))).scalar_one()
    if others:
        return f"error: {others} YubiKey(s) sealed under another key-encryption key"
    return "ok"


async def _readiness(service: OtpService) -> str:
    """The OTP check of /readyz, computed at each call: the stored keys against the KEK in use (read again
    when they differ: the KEK may have been rotated since this process read it)."""
    try:
        state = await _kek_readiness(service)
        if state != "ok":
            try:
                changed = service.refresh_kek()
            except KekError:
                changed = False
            if changed:
                state = await _kek_readiness(service)
        return state
    except Exception as exc:  # noqa: BLE001 - a schema or database problem is a failed check, not a crash
        return f"error: cannot check the stored keys ({exc.__class__.__name__}: {exc})"


class _NoKek:
    """The sealing box of a service opened without the key-encryption key: every use is refused."""

    kek_id = "(not loaded)"

    def seal(self, *_args: object, **_kwargs: object) -> bytes:
        raise KekError("this command does not load the OTP key-encryption key")

    open = seal


async def _check_kek_present(runtime: "Runtime", path: Path | None) -> None:
    if path is not None and not path.exists():
        sealed = await _sealed_keys(runtime)
        if sealed:
            # a new KEK would start silently and then fail every OTP of the stored keys
            raise OtpStartError(f"the OTP key-encryption key {path} is missing, but {sealed} YubiKey(s) and "
                                "client(s) in the database are sealed under one: restore the file (or set "
                                "otp.kek_file / otp.kek_env to where it is)")


@contextlib.asynccontextmanager
async def open_otp(runtime: "Runtime", *, with_kek: bool = True) -> AsyncIterator[OtpService]:
    """The OTP service on the runtime's database. Without `with_kek` (commands that neither seal nor open a
    secret: reports, revocations, client settings) the key-encryption key is neither read nor created."""
    settings = runtime.settings.otp
    # the key-encryption key file gone while keys sealed under it remain: refused even without the KEK
    await _check_kek_present(runtime, settings.kek_path(runtime.settings.data_dir))
    if not with_kek:
        service = OtpService(runtime.engine, settings, bytes(32), clock=runtime.clock)
        service._box = _NoKek()  # type: ignore[assignment]  # nothing is sealed or opened without the KEK
        service._boxes = {}
        try:
            yield service
        finally:
            await service.aclose()
        return
    try:
        kek = settings.load_kek(runtime.settings.data_dir, on_create=_announce_kek)
    except KekError as exc:
        log = _server_log()
        if log is not None:  # a CLI command shows the exception's message itself
            log.error("otp.kek.unavailable", detail=str(exc))
        raise OtpStartError(f"the OTP factor cannot start: {exc}") from None
    service = OtpService(runtime.engine, settings, kek, clock=runtime.clock, on_verified=metrics.otp_verified,
                         reload_kek=functools.partial(settings.read_kek, runtime.settings.data_dir))
    try:
        try:
            state = await _kek_readiness(service)
        except Exception as exc:  # noqa: BLE001 - a schema or database problem shows in readiness, not a crash
            state = f"error: cannot check the stored keys ({exc.__class__.__name__})"
        else:
            if state != "ok":
                _report_kek_mismatch(state.removeprefix("error: ") + " (is this the right otp.kek_file or "
                                     "otp.kek_env?)", service.kek_id)
        runtime.readiness.add(READINESS, functools.partial(_readiness, service))
        yield service
    finally:
        runtime.readiness.pop(READINESS, None)
        await service.aclose()  # counter updates still queued are committed


__all__ = ["OtpStartError", "open_otp"]
