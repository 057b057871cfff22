"""`scep-server yubikey ...` and `scep-server otp-client ...`: otp's command groups on the application's database."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, AsyncIterator

import click

from otp.cli import build_cli

from ..clictx import Context

if TYPE_CHECKING:
    from otp.service import OtpService


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


yubikey, otp_client = build_cli(_open_service)

__all__ = ["otp_client", "yubikey"]
