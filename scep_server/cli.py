"""The `scep-server` command line. Exit codes: 0 done, 1 the operation failed, 2 usage error."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from trustkit.clock import utcnow
from .clictx import Context, pass_ctx, run
from .clipaging import collect, paging_options, say_more


class _Commands(click.Group):
    """The core commands, plus the capabilities' groups (scep_server.features.COMMANDS) imported on use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .features import COMMANDS

        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from . import features

        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in features.COMMANDS:
            found = features.command(cmd_name)
        return found

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # the variable of the completion scripts, whatever the program is called (`python -m scep_server.cli`)
        from .completion import COMPLETE_VAR

        kwargs.setdefault("complete_var", COMPLETE_VAR)
        return super().main(*args, **kwargs)


@click.group(cls=_Commands)
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="SCEP_SERVER_CONFIG",
              help="TOML configuration file (env: SCEP_SERVER_CONFIG).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data directory (default ./data).")
@click.pass_context
def main(ctx: click.Context, config: str | None, data_dir: str | None) -> None:
    """Device-trust server: SCEP CA, CRLs, device binding, YubiKey OTP."""
    ctx.obj = Context(config, data_dir)


@main.command()
@click.option("--listen", help="HOST:PORT (default 127.0.0.1:8080).")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (default 1).")
@pass_ctx
def serve(ctx: Context, listen: str | None, workers: int | None) -> None:
    """Run the server (creates the data directory, database, CA and a default profile on first start)."""
    from .logs import configure
    from .runtime import initialise
    from .serve import serve as run_server

    server: dict[str, Any] = {}
    if listen:
        server["listen"] = listen
    if workers:
        server["workers"] = workers
    settings = ctx.settings(server=server) if server else ctx.settings()
    configure(settings.log.level, settings.log.format)
    for line in _initialise(initialise, settings):
        click.echo(line)
    sys.exit(run_server(settings, announce=click.echo))


@main.command()
@pass_ctx
def init(ctx: Context) -> None:
    """Create the data directory, database schema, CA and default profile if missing."""
    from .runtime import initialise

    report = _initialise(initialise, ctx.settings())
    for line in report or ["already initialised"]:
        click.echo(line)


def _initialise(initialise, settings) -> list[str]:
    """First-start set-up; CA files that would be overwritten are a clear error naming them, not a traceback."""
    from .ca.authority import CAFilesExist

    try:
        return run(initialise(settings))
    except CAFilesExist as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Apply all schema migrations."""
    from .store.migrate import upgrade_url

    upgrade_url(ctx.settings().database_url())
    click.echo("database schema is up to date")


# ---------------------------------------------------------------- profiles


@main.group()
def profile() -> None:
    """SCEP profiles (one endpoint each)."""


@profile.command("add")
@click.argument("name")
@click.option("--challenge", "kind", type=click.Choice(["static", "dynamic", "delegated"]), default="static",
              show_default=True)
@click.option("--secret", help="Static challenge (default: a random one, printed once).")
@click.option("--validity-days", type=click.IntRange(1, 3650))
@click.option("--require-approval", is_flag=True, help="Enrolments wait for `enrolment approve`.")
@click.option("--settings-json", help="Full profile settings as JSON (see README).")
@pass_ctx
def profile_add(ctx: Context, name: str, kind: str, secret: str | None, validity_days: int | None,
                require_approval: bool, settings_json: str | None) -> None:
    """Create a profile; a static profile's secret is printed once."""
    from pydantic import ValidationError

    from .profiles import ProfileError, ProfileSettings, new_static_secret

    try:
        settings = ProfileSettings.model_validate_json(settings_json) if settings_json else ProfileSettings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid --settings-json: {exc}") from None
    if validity_days:
        settings.template.validity_days = validity_days
    if require_approval:
        settings.require_approval = True
    if kind == "static" and not secret:
        secret = new_static_secret()

    async def go():
        from .runtime import ca_names

        ca = ca_names(ctx.settings())[0]  # the CA's certificate is enough: no private key is read
        async with ctx.runtime() as rt:
            return await rt.profiles.create(name, ca=ca, challenge_kind=kind, static_secret=secret if kind == "static"
                                            else None, settings=settings, now=utcnow())

    try:
        run(go())
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from None
    base = ctx.settings().server.public_base_url()
    click.echo(f"profile {name!r} created: {base}/scep/{name}")
    if kind == "static":
        click.echo(f"challenge: {secret}")


@profile.command("list")
@pass_ctx
def profile_list(ctx: Context) -> None:
    """List profiles."""
    async def go():
        async with ctx.runtime() as rt:
            return await rt.profiles.list()

    for p in run(go()):
        click.echo(f"{p.name}\t{p.challenge_kind}\tca={p.ca}\tvalidity={p.settings.template.validity_days}d"
                   f"{'	approval' if p.settings.require_approval else ''}")


@profile.command("show")
@click.argument("name")
@pass_ctx
def profile_show(ctx: Context, name: str) -> None:
    """Show one profile (no secrets) as JSON."""
    from .profiles import UnknownProfile, describe

    async def go():
        async with ctx.runtime() as rt:
            return await rt.profiles.get(name)

    try:
        p = run(go())
    except UnknownProfile as exc:
        raise click.ClickException(str(exc)) from None
    view = describe(p)
    view["url"] = f"{ctx.settings().server.public_base_url()}/scep/{name}"
    click.echo(json.dumps(view, indent=2))


@profile.command("set-template")
@click.argument("name")
@click.argument("template_json")
@pass_ctx
def profile_set_template(ctx: Context, name: str, template_json: str) -> None:
    """Replace a profile's certificate template (keys left out take their defaults); prints the result."""
    from pydantic import ValidationError

    from .ca.policy import CertificateTemplate
    from .profiles import UnknownProfile

    try:
        template = CertificateTemplate.model_validate_json(template_json)
    except ValidationError as exc:
        raise click.ClickException(f"invalid template: {exc}") from None

    async def go():
        async with ctx.runtime() as rt:
            current = await rt.profiles.get(name)
            settings = current.settings.model_copy(update={"template": template})
            return await rt.profiles.update(name, settings=settings, now=utcnow())

    try:
        p = run(go())
    except UnknownProfile as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(p.settings.template.model_dump_json(indent=2))


# ---------------------------------------------------------------- certificates


@main.group()
def cert() -> None:
    """Issued certificates."""


@cert.command("list")
@click.option("--status", type=click.Choice(["valid", "hold", "revoked"]))
@click.option("--profile")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@paging_options
@pass_ctx
def cert_list(ctx: Context, status: str | None, profile: str | None, fmt: str, limit: int, cursor: str | None,
              all_rows: bool) -> None:
    """The certificate inventory, newest first (a page; see --all)."""
    from .ca import inventory

    async def go():
        async with ctx.runtime() as rt:
            async def fetch(page):
                async with rt.engine.connect() as conn:
                    return await inventory.list_certs(conn, page, status=status, profile=profile)
            return await collect(fetch, limit=limit, cursor=cursor, all_rows=all_rows, kinds=inventory.CERT_KEY)

    rows, more = run(go())
    if fmt == "json":
        click.echo(json.dumps([{
            "serial": r.serial, "subject": r.subject, "sans": r.sans, "profile": r.profile, "status": r.status,
            "not_before": r.not_before.isoformat(), "not_after": r.not_after.isoformat(),
            "transaction_id": r.transaction_id, "fingerprint_sha256": r.fingerprint_sha256,
            "revocation_reason": r.revocation_reason} for r in rows], indent=2))
    else:
        for r in rows:
            click.echo(f"{r.serial}\t{r.status}\t{r.profile}\t{r.not_after:%Y-%m-%d}\t{r.subject}")
    say_more(more, len(rows))


def _serial_arg(text: str) -> str:
    """A serial as printed by `cert list` (hex), also with 0x, colons or upper case."""
    from .ca.inventory import serial_hex

    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    # ASCII hex digits only: int() also takes other scripts' digits, "_" and a sign
    if not (cleaned.isascii() and 0 < len(cleaned) <= 40 and all(c in "0123456789abcdef" for c in cleaned)):
        raise click.BadParameter(f"{text!r} is not a hexadecimal serial number")
    return serial_hex(int(cleaned, 16))


def _status_change(ctx: Context, serial: str, change: str, **kwargs: Any) -> None:
    """Apply a status change. The command signs no CRL: the running servers see the change and re-sign."""
    from .ca.inventory import InventoryError, Reason
    from .logs import configure

    settings = ctx.settings()  # log lines go to stderr; the command prints the outcome
    configure("warning" if settings.log.level in ("debug", "info") else settings.log.level, settings.log.format)

    from .runtime import Uses

    async def go():
        async with ctx.runtime(Uses(revocation=True)) as rt:
            return await getattr(rt.revocation, change)(_serial_arg(serial), actor="cli", **kwargs)

    try:
        record = run(go())
    except (InventoryError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    reason = "" if record.revocation_reason is None else f" ({Reason(record.revocation_reason).name.lower()})"
    click.echo(f"{record.serial}: {record.status}{reason}")


@cert.command("revoke")
@click.argument("serial")
@click.option("--reason", default="unspecified", show_default=True,
              help="key-compromise, affiliation-changed, superseded, cessation-of-operation, privilege-withdrawn, ...")
@pass_ctx
def cert_revoke(ctx: Context, serial: str, reason: str) -> None:
    """Revoke a certificate for good (it is listed on the CRL until it expires)."""
    from .ca.revocation import parse_reason

    try:
        parsed = parse_reason(reason)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None
    _status_change(ctx, serial, "revoke", reason=parsed)


@cert.command("hold")
@click.argument("serial")
@pass_ctx
def cert_hold(ctx: Context, serial: str) -> None:
    """Put a certificate on hold (certificateHold on the CRL until released)."""
    _status_change(ctx, serial, "hold")


@cert.command("release")
@click.argument("serial")
@pass_ctx
def cert_release(ctx: Context, serial: str) -> None:
    """Release a held certificate (it leaves the next CRL)."""
    _status_change(ctx, serial, "release")


# ---------------------------------------------------------------- tokens


@main.group()
def token() -> None:
    """Bearer tokens for the REST API."""


@token.command("create")
@click.option("--scope", type=click.Choice(["admin", "signin"]), required=True)
@click.option("--name", default="", help="What the token is for.")
@pass_ctx
def token_create(ctx: Context, scope: str, name: str) -> None:
    """Create a token; it is printed once."""
    async def go():
        async with ctx.runtime() as rt:
            return await rt.tokens.create(scope=scope, name=name, now=utcnow())

    token_id, secret = run(go())
    click.echo(f"id: {token_id}")
    click.echo(f"token: {secret}")


# ---------------------------------------------------------------- shell completion


def _add_completion() -> None:
    from .completion import completion

    main.add_command(completion)


_add_completion()


if __name__ == "__main__":  # python -m scep_server.cli
    main()
