"""`scep-server crl publish|show`."""
from __future__ import annotations

import json

import click

from ..clictx import Context, pass_ctx, run


# the steps of `crl publish` as its progress bars name them (crl.publish.CrlPublisher.publish_now)
PUBLISH_STAGES = {"read": "reading entries", "sign": "building, signing", "record": "recording"}


def _quiet_logs(ctx: Context) -> None:
    """Log lines go to stderr so that the command's output stays machine-readable."""
    from ..logs import configure

    settings = ctx.settings()
    configure("warning" if settings.log.level in ("debug", "info") else settings.log.level, settings.log.format)


def _print(info: dict, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(info, indent=2))
        return
    for key in ("ca", "number", "this_update", "next_update", "entries", "bytes", "sha256"):
        click.echo(f"{key}: {info[key]}")


@click.group()
def crl() -> None:
    """CRLs of the issuing CAs (served at /crl/<ca>.crl)."""


@crl.command("publish")
@click.option("--ca", "ca_name", help="CA name (default: the only CA).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_ctx
def crl_publish(ctx: Context, ca_name: str | None, fmt: str) -> None:
    """Sign a new CRL now; running servers serve it within crl.poll_interval.

    On a terminal, bars on stderr follow the reading of the entries, the signing and the recording."""
    from crl.publish import PublishError
    from trustkit.progress import stage_bars

    from ..runtime import Uses
    from .service import CrlError, describe

    _quiet_logs(ctx)

    async def go(progress):
        async with ctx.runtime(Uses(crl=True)) as rt:
            assert rt.crl is not None
            pub = rt.crl.publisher(ca_name)
            await pub.refresh_from_store()
            return describe(await pub.publish_now(progress))

    try:
        with stage_bars(PUBLISH_STAGES) as progress:
            info = run(go(progress))
    except (CrlError, PublishError) as exc:
        raise click.ClickException(str(exc)) from None
    _print(info, fmt)


@crl.command("show")
@click.option("--ca", "ca_name", help="CA name (default: the only CA).")
@click.option("--pem", is_flag=True, help="Print the CRL itself (PEM) instead of its summary.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_ctx
def crl_show(ctx: Context, ca_name: str | None, pem: bool, fmt: str) -> None:
    """The CRL currently published (as recorded in the database)."""
    from ..runtime import Uses
    from .service import CrlError, describe

    _quiet_logs(ctx)

    async def go():
        async with ctx.runtime(Uses(crl=True)) as rt:
            assert rt.crl is not None
            pub = rt.crl.publisher(ca_name)
            await pub.refresh_from_store()
            if pub.current is None:
                raise CrlError(f"no CRL published yet for CA {pub.ca!r}: start the server or run `crl publish`")
            return pub.current

    try:
        current = run(go())
    except CrlError as exc:
        raise click.ClickException(str(exc)) from None
    if pem:
        click.echo(current.pem.decode("ascii"), nl=False)
        return
    _print(describe(current), fmt)
