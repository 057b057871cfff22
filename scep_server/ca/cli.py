"""`scep-server ca renew-ra`: the lifecycle commands of our CAs, in the `ca` command group (whose listing and
customer-CA commands are in `scep_server.binding.cli`)."""
from __future__ import annotations

import json

import click

from ..binding.cli import ca
from ..clictx import Context, cli_actor, pass_ctx, run

__all__ = ["ca"]


def _ca_name(ctx: Context, name: str | None) -> str:
    from ..runtime import ca_names

    names = ca_names(ctx.settings())
    if name is None:
        return names[0]
    if name not in names:
        raise click.ClickException(f"no CA named {name!r} (this deployment's: {', '.join(names)})")
    return name


@ca.command("renew-ra")
@click.argument("name", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_ctx
def ca_renew_ra(ctx: Context, name: str | None, fmt: str) -> None:
    """Issue a new RA certificate with a new key under the CA (default: this deployment's CA).

    GetCACert serves the new one as soon as each running server sees it (within ca.ra_check_interval); a
    request encrypted to the previous RA certificate is still decrypted until that certificate expires.
    """
    from ..runtime import Uses
    from . import lifecycle

    name = _ca_name(ctx, name)

    async def go():
        async with ctx.runtime(Uses(ca_keys=True)) as rt:
            return await lifecycle.renew(rt, name, actor=cli_actor())

    renewed = run(go())
    if fmt == "json":
        click.echo(json.dumps(renewed, indent=2))
        return
    new = renewed["ra_certificate"]
    click.echo(f"{name}: new RA certificate {new['serial']} ({new['subject']}) valid until {new['not_after']}, "
               f"SHA-256 {new['fingerprint_sha256']}")
    for old in renewed["previous_ra_certificates"]:
        click.echo(f"  still decrypting until it expires: {old['serial']} until {old['not_after']}")


@ca.group("rollover")
def rollover() -> None:
    """CA rollover (RFC 8894 §4.7): the next CA, announced by GetNextCACert."""


@rollover.command("prepare")
@click.argument("name", required=False)
@click.option("--cross-sign", is_flag=True, help="Also issue the new CA a certificate signed by the current CA.")
@click.option("--subject", help="The next CA's name (RFC 4514); default: the current one's, numbered G2, G3, ...")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_ctx
def rollover_prepare(ctx: Context, name: str | None, cross_sign: bool, subject: str | None, fmt: str) -> None:
    """Create the next CA (new key, its RA certificate) of the CA (default: this deployment's); every running
    server serves it at GetNextCACert within ca.ra_check_interval."""
    from ..runtime import Uses
    from . import lifecycle
    from .rollover import RolloverPrepared

    name = _ca_name(ctx, name)

    async def go():
        async with ctx.runtime(Uses(ca_keys=True)) as rt:
            return await lifecycle.prepare_rollover(rt, name, actor=cli_actor(), subject=subject,
                                                    cross_sign=cross_sign)

    try:
        prepared = run(go())
    except (RolloverPrepared, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(prepared, indent=2))
        return
    for c in prepared["next_ca_certificates"]:
        click.echo(f"{name}: next {c['subject']} (issued by {c['issuer']}) serial {c['serial']} until {c['not_after']}, "
                   f"SHA-256 {c['fingerprint_sha256']}")
