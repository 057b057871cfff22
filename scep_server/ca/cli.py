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
@click.option("--mode", type=click.Choice(["single", "split"]),
              help="Switch the RA certificates: split = a signing-only and an encryption-only RA certificate, as "
              "Microsoft NDES publishes them; single = one RA certificate for both (default: keep the mode).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_ctx
def ca_renew_ra(ctx: Context, name: str | None, mode: str | None, fmt: str) -> None:
    """Issue a new RA certificate with a new key under the CA (default: this deployment's CA); in split mode
    the encryption RA certificate too (docs/scep.md "Split RA certificates").

    GetCACert serves the new one as soon as each running server sees it (within ca.ra_check_interval); a
    request encrypted to the previous RA certificate is still decrypted until that certificate expires. With
    the keys in a PKCS#11 token the new key pair is generated in the token, under a new label.
    """
    from ..runtime import Uses
    from . import lifecycle

    name = _ca_name(ctx, name)

    async def go():
        async with ctx.runtime(Uses(ca_keys=True)) as rt:
            return await lifecycle.renew(rt, name, actor=cli_actor(), mode=mode)

    try:
        renewed = run(go())
    except lifecycle.RaInToken as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(renewed, indent=2))
        return
    new, enc = renewed["ra_certificate"], renewed["ra_encryption_certificate"]
    click.echo(f"{name}: new {'signing ' if enc else ''}RA certificate {new['serial']} ({new['subject']}) valid until "
               f"{new['not_after']}, SHA-256 {new['fingerprint_sha256']}")
    if enc:
        click.echo(f"{name}: new encryption RA certificate {enc['serial']} valid until {enc['not_after']}, "
                   f"SHA-256 {enc['fingerprint_sha256']}")
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
    from .pkcs11 import HsmError
    from .rollover import LabelTaken, PrepareNotUndone, RolloverPrepared

    name = _ca_name(ctx, name)

    async def go():
        async with ctx.runtime(Uses(ca_keys=True)) as rt:
            return await lifecycle.prepare_rollover(rt, name, actor=cli_actor(), subject=subject,
                                                    cross_sign=cross_sign)

    try:
        prepared = run(go())
    except (RolloverPrepared, LabelTaken, PrepareNotUndone, ValueError, HsmError) as exc:  # HsmError: the token
        # refused or failed a key (what it made is removed), or is away
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(prepared, indent=2))
        return
    for c in prepared["next_ca_certificates"]:
        click.echo(f"{name}: next {c['subject']} (issued by {c['issuer']}) serial {c['serial']} until {c['not_after']}, "
                   f"SHA-256 {c['fingerprint_sha256']}")


@ca.group("passphrase")
def passphrase() -> None:
    """The passphrase that encrypts the CA and RA private keys."""


@passphrase.command("change")
@click.option("--new-from-file", "new_file", type=click.Path(dir_okay=False, exists=True),
              help="Read the new passphrase from this file's first line (default: a random one).")
@pass_ctx
def passphrase_change(ctx: Context, new_file: str | None) -> None:
    """Re-encrypt every CA and RA key with a new passphrase (docs/scep.md "Key passphrase").

    With the passphrase in its file (ca.passphrase_file), the file gets the new one. With the passphrase in
    the environment (ca.passphrase_env), the new one is printed once: set it there before the next start.
    The previous key files stay as <key>.previous until you remove them.
    """
    import os
    import secrets
    from pathlib import Path

    from ..ca.keys import load_or_create_passphrase, write_private_file
    from ..runtime import Uses, ca_names
    from ..store.events import record_event
    from trustkit.db import writer
    from trustkit.clock import utcnow

    from .passphrase import change

    settings = ctx.settings()
    try:
        names = ca_names(settings)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    from_env = bool(os.environ.get(settings.ca.passphrase_env))
    try:
        old = load_or_create_passphrase(settings.ca.passphrase_env, settings.passphrase_path(),
                                        keys_in=settings.ca_dir().parent)
    except ValueError as exc:  # none set, and the keys are encrypted with one: never a new random one
        raise click.ClickException(str(exc)) from None
    if new_file:
        lines = Path(new_file).read_bytes().splitlines()
        new = lines[0].strip() if lines else b""
    else:
        new = secrets.token_urlsafe(32).encode()
    changed = []
    try:
        for name in names:  # every CA directory (a CA rollover leaves the previous one)
            changed += change(settings.ca_dir(name), old, new)
    except ValueError as exc:
        raise click.ClickException(("nothing changed: " if not changed else
                                    f"{len(changed)} keys were already changed (their previous files are kept as "
                                    "<key>.previous): ") + str(exc)) from None
    if not from_env:
        write_private_file(settings.passphrase_path(), new + b"\n")

    async def go():
        async with ctx.runtime(Uses()) as rt:
            async with writer(rt.engine).begin() as conn:
                await record_event(conn, at=utcnow(), kind="pki.ca.passphrase.change", subject=settings.ca.name,
                                   actor=cli_actor(), data={"keys": [f"{p.parent.name}/{p.name}" for p in changed],
                                                            "source": "env" if from_env else "file"})

    run(go())
    click.echo(f"{len(changed)} keys re-encrypted in {', '.join(str(settings.ca_dir(n)) for n in names)} "
               f"({', '.join(p.name for p in changed)}); "
               f"the previous files are kept as <key>.previous until you remove them")
    if from_env:
        click.echo(f"new passphrase (set ${settings.ca.passphrase_env} to it before the next start): {new.decode()}")
    else:
        click.echo(f"the new passphrase is in {settings.passphrase_path()}")


@rollover.command("activate")
@click.argument("name", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_ctx
def rollover_activate(ctx: Context, name: str | None, fmt: str) -> None:
    """Make the prepared next CA the issuing CA (default: of this deployment's issuing CA); every profile of
    the CA moves to it. The running servers issue from it within seconds, without a restart, and the previous
    CA keeps publishing its CRL (docs/scep.md "CA rollover")."""
    from ..runtime import Uses
    from . import lifecycle
    from .pkcs11 import HsmError
    from .rollover import NotPrepared

    name = _ca_name(ctx, name)

    async def go():
        async with ctx.runtime(Uses(ca_keys=True)) as rt:
            return await lifecycle.activate_rollover(rt, name, actor=cli_actor())

    try:
        done = run(go())
    except (NotPrepared, HsmError) as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(done, indent=2))
        return
    click.echo(f"{done['active']} ({done['certificate']['subject']}) now issues for {done['profiles']} profiles of "
               f"{name}, which keeps publishing its CRL; the running servers pick it up within seconds")

