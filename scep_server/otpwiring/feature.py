"""The `otp` capability: its service (opened by the composition root), routes, readiness and jobs."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

import click
import sqlalchemy as sa
import structlog
from aiohttp import web

from otp import web as otp_web
from otp.kek import KekError
from otp.service import OtpService
from otp.tables import otp_clients, otp_yubikeys

from ..appkeys import RUNTIME
from ..store.tables import api_tokens

if TYPE_CHECKING:
    from ..config import Settings
    from ..runtime import Runtime

log = structlog.get_logger("otp.feature")

READINESS = "otp"


class OtpStartError(click.ClickException):
    """The OTP factor cannot start (its key-encryption key is missing or unreadable)."""


def _announce_kek(path: Path) -> None:
    """Say, once, that the KEK was created: on stderr for the operator (a CLI command or `serve`), and as a
    structured event when the server's logging is set up (an unconfigured structlog would write to stdout)."""
    message = (f"created the OTP key-encryption key {path} (mode 0600): it seals the imported YubiKey AES keys "
               "and OTP client keys; back it up apart from the database, without it they cannot be used")
    print(message, file=sys.stderr, flush=True)
    if structlog.is_configured():
        log.warning("otp.kek.created", path=str(path))


def _report(event: str, text: str, **fields: object) -> None:
    """An error worth an operator's attention: a structured event in the server, a stderr line in a CLI
    command (where structlog is not set up and would write to stdout, mixing with a command's output)."""
    if structlog.is_configured():
        log.error(event, detail=text, **fields)
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


async def _kek_readiness(service: OtpService) -> str:
    """"ok" when every live key was sealed under the KEK in use (a replaced KEK fails every OTP)."""
    async with service.store.engine.connect() as conn:
        others = (await conn.execute(sa.select(sa.func.count()).select_from(otp_yubikeys).where(
            otp_yubikeys.c.deleted_at.is_(None), otp_yubikeys.c.kek_id != service.kek_id))).scalar_one()
    if others:
        return f"error: {others} YubiKey(s) sealed under another key-encryption key"
    return "ok"


async def _readiness(service: OtpService) -> str:
    """The OTP check of /readyz, computed at each call: the stored keys against the KEK in use."""
    try:
        return await _kek_readiness(service)
    except Exception as exc:  # noqa: BLE001 - a schema or database problem is a failed check, not a crash
        return f"error: cannot check the stored keys ({exc.__class__.__name__}: {exc})"


_TOKEN_NAMES: web.AppKey[dict[str, str]] = web.AppKey("otp_token_names", dict)


async def _authenticate(request: web.Request, token: str) -> tuple[str, str] | None:
    """The core's bearer tokens for otp's routes: (scope, "token:<name>") of an enabled token."""
    runtime = request.app[RUNTIME]
    scope = await runtime.tokens.scope_of(token)
    if scope is None:
        return None
    digest = hashlib.sha256(token.encode()).hexdigest()
    names = request.app[_TOKEN_NAMES]
    name = names.get(digest)
    if name is None:
        async with runtime.engine.connect() as conn:
            name = (await conn.execute(sa.select(api_tokens.c.name).where(
                api_tokens.c.token_sha256 == digest))).scalar_one_or_none() or "?"
        if len(names) > 10_000:
            names.clear()
        names[digest] = name
    return scope, f"token:{name}"


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
        try:
            yield service
        finally:
            await service.aclose()
        return
    try:
        kek = settings.load_kek(runtime.settings.data_dir, on_create=_announce_kek)
    except KekError as exc:
        if structlog.is_configured():  # a CLI command shows the exception's message itself
            log.error("otp.kek.unavailable", detail=str(exc))
        raise OtpStartError(f"the OTP factor cannot start: {exc}") from None
    service = OtpService(runtime.engine, settings, kek, clock=runtime.clock)
    try:
        try:
            state = await _kek_readiness(service)
        except Exception as exc:  # noqa: BLE001 - a schema or database problem shows in readiness, not a crash
            state = f"error: cannot check the stored keys ({exc.__class__.__name__})"
        else:
            if state != "ok":
                _report("otp.kek.mismatch", state.removeprefix("error: ") + " (is this the right otp.kek_file or "
                        "otp.kek_env?)", kek_id=service.kek_id)
        runtime.readiness.add(READINESS, functools.partial(_readiness, service))
        yield service
    finally:
        runtime.readiness.pop(READINESS, None)
        await service.aclose()  # counter updates still queued are committed


class OtpFeature:
    name = "otp"

    def enabled(self, settings: "Settings") -> bool:
        return settings.otp.enabled

    def add_routes(self, app: web.Application) -> None:
        app[_TOKEN_NAMES] = {}
        otp_web.add_routes(app, _service_for, authenticate=_authenticate, client_address=client_address)

    def jobs(self, runtime: "Runtime") -> list[Callable[[], Awaitable[None]]]:
        assert runtime.otp is not None
        return [_prune_job(runtime.otp)]


FEATURE = OtpFeature()

__all__ = ["FEATURE", "OtpFeature", "open_otp"]
