"""The `scep-server` command line. Exit codes: 0 done, 1 the operation failed, 2 usage error."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from trustkit.clock import utcnow
from .clictx import Context, cli_actor, pass_ctx, run, secret_from
from trustkit.clipaging import collect, paging_options, say_more


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
    """Run the server (creates the data directory, database, CA and a default profile on first start; with a
    PostgreSQL database, which instances share, the CA is made once by `init`)."""
    from .logs import configure
    from .runtime import initialise
    from .config import ConfigError
    from .serve import serve as run_server

    server: dict[str, Any] = {}
    if listen:
        server["listen"] = listen
    if workers:
        server["workers"] = workers
    settings = ctx.settings(server=server) if server else ctx.settings()
    try:
        settings.metrics.token()  # an empty token source is a configuration error, before anything starts
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if _shared_database(settings) and not (settings.ca_dir() / "ca.crt").exists():
        # instances of one deployment share the database: each making a CA of its own would issue under several
        raise click.ClickException(
            f"no CA in {settings.ca_dir()}, and the database is PostgreSQL, which the instances of a deployment "
            "share: run `scep-server init` once to create the CA, then give every instance that CA directory and "
            "its passphrase")
    configure(settings.log.level, settings.log.format)
    for line in _initialise(initialise, settings, default_profile=None):
        click.echo(line)
    from .serve import ListenError

    try:
        code = run_server(settings, announce=click.echo)
    except ListenError as exc:
        raise click.ClickException(exc.strerror) from None
    sys.exit(code)


def _shared_database(settings) -> bool:
    return settings.database_url().split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def _interactive() -> bool:
    """Whether `init` may ask: a person at a terminal (stdin and stdout are both terminals)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


KEY_TYPES = ("rsa", "ec-p256", "ec-p384")  # the CA key; the RA key is always RSA
RA_MODES = ("single", "split")  # one RA certificate, or a signing-only and an encryption-only one


@main.command()
@click.option("--ca-subject", metavar="DN", help="The CA's subject, RFC 4514 (default: ca.subject).")
@click.option("--key-type", "--ca-key-type", "key_type", type=click.Choice(KEY_TYPES),
              help="The CA key's type (default: ca.key_type, rsa); the RA key is always RSA.")
@click.option("--key-size", type=click.IntRange(2048, 8192), help="RSA key size in bits (default: ca.key_size).")
@click.option("--validity-days", type=click.IntRange(1, 36500),
              help="The CA certificate's validity in days (default: ca.validity_days).")
@click.option("--base-url", metavar="URL", help="The public URL devices reach, written into certificates "
              "(default: server.base_url, else http://<server.listen>).")
@click.option("--ra-mode", type=click.Choice(RA_MODES),
              help="The new CA's RA certificates: single = one for signing and decryption; split = a signing-only "
              "and an encryption-only one, as Microsoft NDES publishes them (default: ca.ra_mode, single; "
              "docs/scep.md \"Split RA certificates\"); never asked.")
@click.option("--default-profile/--no-default-profile", default=None,
              help="Create a static SCEP profile `default` when there is no profile (default: yes).")
@click.option("--no-input", is_flag=True, help="Never ask; what is not given takes its default.")
@pass_ctx
def init(ctx: Context, ca_subject: str | None, key_type: str | None, key_size: int | None,
         validity_days: int | None, base_url: str | None, ra_mode: str | None, default_profile: bool | None,
         no_input: bool) -> None:
    """Create the data directory, database schema, CA and default profile if missing.

    On a terminal, what is not given is asked for (unless --no-input), except --ra-mode; otherwise it takes its
    default."""
    from .runtime import initialise

    configured = ctx.settings()
    new_ca = not (configured.ca_dir() / "ca.crt").exists()
    if new_ca and not no_input and _interactive():
        if ca_subject is None:
            ca_subject = click.prompt("CA subject", default=configured.ca.subject, value_proc=_subject)
        if key_type is None:
            key_type = click.prompt("CA key type", default=configured.ca.key_type, type=click.Choice(KEY_TYPES))
        if key_size is None:
            key_size = click.prompt("CA key size (bits)", default=configured.ca.key_size,
                                    type=click.IntRange(2048, 8192))
        if validity_days is None:
            validity_days = click.prompt("CA validity (days)", default=configured.ca.validity_days,
                                         type=click.IntRange(1, 36500))
        if base_url is None:
            answer = click.prompt("Public base URL devices reach", default=configured.server.public_base_url())
            base_url = None if answer.rstrip("/") == configured.server.public_base_url() else answer
        if default_profile is None:
            default_profile = click.confirm("Create a static SCEP profile 'default'", default=True)
    if ca_subject is not None:
        _subject(ca_subject)
    ca = {k: v for k, v in (("subject", ca_subject), ("key_type", key_type), ("key_size", key_size),
                            ("validity_days", validity_days), ("ra_mode", ra_mode)) if v is not None}
    overrides: dict[str, Any] = {}
    if ca:
        overrides["ca"] = ca
    if base_url is not None:
        overrides["server"] = {"base_url": base_url}
    settings = ctx.settings(**overrides) if overrides else configured
    if not new_ca and (ca or key_type is not None):
        click.echo(f"a CA exists in {settings.ca_dir()}: --ca-subject, --key-type, --key-size, --validity-days and "
                   "--ra-mode do not change it" + (" (`scep-server ca renew-ra --mode` switches its RA certificates)"
                                                   if ra_mode is not None else ""), err=True)
    report = _initialise(initialise, settings, default_profile=True if default_profile is None else default_profile)
    if base_url is not None and configured.server.public_base_url() != settings.server.public_base_url():
        report.append(f"serve reads the base URL from its configuration: set server.base_url = "
                      f"\"{settings.server.public_base_url()}\" (or SCEP_SERVER_SERVER__BASE_URL) where it runs")
    for line in report or ["already initialised"]:
        click.echo(line)


def _subject(text: str) -> str:
    """A CA subject: an RFC 4514 name with at least one attribute."""
    from cryptography import x509

    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise click.BadParameter(f"not an RFC 4514 name (e.g. CN=Example CA,O=Example): {exc}",
                                 param_hint="--ca-subject") from None
    if not list(name):
        raise click.BadParameter("an empty name", param_hint="--ca-subject")
    return text


def _initialise(initialise, settings, **kwargs: Any) -> list[str]:
    """First-start set-up; CA files that would be overwritten are a clear error naming them, not a traceback."""
    from .ca.authority import CAFilesExist
    from .ca.pkcs11 import HsmError
    from .runtime import CaKeysUnavailable, ForeignCa, StartError
    from .store.migrate import SchemaTooNew

    try:
        return run(initialise(settings, **kwargs))
    except (CAFilesExist, HsmError, SchemaTooNew, ForeignCa, StartError, CaKeysUnavailable) as exc:
        raise click.ClickException(str(exc)) from None


@main.group("config")
def config_group() -> None:
    """The configuration: what is in effect, and checking a file (docs/configuration.md)."""


@config_group.command("show")
@click.option("--defaults", is_flag=True, help="The defaults, ignoring the configuration file and environment.")
@pass_ctx
def config_show(ctx: Context, defaults: bool) -> None:
    """Print the configuration in effect (file, environment, --data-dir) as TOML, secrets redacted."""
    from .config import Settings
    from .configdoc import as_toml

    click.echo(as_toml(Settings() if defaults else ctx.settings()), nl=False)


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate a configuration file alone (not the environment): exit 0, or 2 naming the key that is wrong."""
    from .config import ConfigError, check_file

    try:
        check_file(file)
    except ConfigError as exc:
        click.echo(f"{file}: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{file}: valid")


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Apply all schema migrations."""
    from sqlalchemy.exc import SQLAlchemyError

    from .runtime import database_unusable
    from .store.migrate import SchemaTooNew, upgrade_url

    try:
        upgrade_url(ctx.settings().database_url())
    except SchemaTooNew as exc:
        raise click.ClickException(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:  # unreachable, refused, not a database, read-only, full
        raise click.ClickException(str(database_unusable(ctx.settings(), exc))) from None
    click.echo("database schema is up to date")


# ---------------------------------------------------------------- backup and restore


def _cli_logging(ctx: Context) -> None:
    """Log lines go to stderr at the configured level (warnings at least); the command prints its outcome."""
    from .logs import configure

    settings = ctx.settings()
    configure(settings.log.level, settings.log.format)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--files-only", is_flag=True,
              help="PostgreSQL: copy the CA directory and the secrets only (the database is pg_dump's).")
@click.option("--secrets-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the secrets (ca-passphrase, otp-kek.key, default-challenge.txt) to this directory (new or "
                   "empty, outside DIRECTORY) instead of into the backup. Recommended.")
@pass_ctx
def backup(ctx: Context, directory, files_only: bool, secrets_dir) -> None:
    """Back up the database (SQLite), the CA directory and the secrets into DIRECTORY (new or empty).

    The OTP key-encryption key (otp-kek.key) and the CA passphrase (ca-passphrase) are written to files of their
    own: store them apart from the rest, or have them written apart with --secrets-dir (with the default
    challenge, default-challenge.txt). On PostgreSQL the command prints the pg_dump command to run instead."""
    import structlog

    from sqlalchemy.exc import ArgumentError

    from .backup import BackupError, PostgresBackup, create_backup, record_backup
    from .runtime import database_unusable

    _cli_logging(ctx)
    now = utcnow()
    try:
        result = run(create_backup(ctx.settings(), directory, now=now, files_only=files_only,
                                   secrets_dir=secrets_dir))
    except PostgresBackup as exc:
        raise click.ClickException(str(exc)) from None
    except BackupError as exc:
        raise click.ClickException(f"backup refused: {exc}") from None
    except ArgumentError as exc:  # a database URL SQLAlchemy cannot read
        raise click.ClickException(str(database_unusable(ctx.settings(), exc))) from None
    run(record_backup(ctx.settings(), result, actor=cli_actor(), now=now))
    log = structlog.get_logger("backup")
    log.info("backup.created", directory=str(directory), database=result.manifest["database"]["kind"],
             files=len(result.manifest["files"]), highest_crl_number=result.manifest["highest_crl_number"])
    click.echo(f"backup written to {directory}")
    for note in result.notes:
        click.echo(f"  {note}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data-dir", "new_data_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The new data directory (must not exist, or be empty).")
@click.option("--verify", is_flag=True, help="Also run SQLite's integrity check on the database (reads all of it).")
@click.option("--kek-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The OTP key-encryption key, where it was stored apart (default: the backup's otp-kek.key).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True,
                                                   path_type=Path),
              help="The CA passphrase, where it was stored apart (default: the backup's ca-passphrase).")
@click.option("--secrets-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The directory the secrets were written to by `backup --secrets-dir` (or moved to): "
                   "ca-passphrase, otp-kek.key, default-challenge.txt.")
@click.option("--crl-number-gap", type=click.IntRange(1, 10**15), default=1_000_000, show_default=True,
              help="Raise each CA's next CRL Number this far above the highest number the backup saw.")
@pass_ctx
def restore(ctx: Context, directory, new_data_dir, verify: bool, kek_file, passphrase_file, secrets_dir,
            crl_number_gap: int) -> None:
    """Restore a backup made by `scep-server backup` into a new data directory, checking it first."""
    import structlog

    from sqlalchemy.exc import ArgumentError

    from .backup import BackupError, restore_backup
    from .runtime import database_unusable

    _cli_logging(ctx)
    log = structlog.get_logger("backup")
    try:
        result = run(restore_backup(ctx.settings(), directory, new_data_dir, kek_file=kek_file,
                                    passphrase_file=passphrase_file, secrets_dir=secrets_dir, verify=verify,
                                    crl_number_gap=crl_number_gap,
                                    actor=cli_actor(), now=utcnow()))
    except BackupError as exc:
        log.warning("backup.restore_refused", directory=str(directory), error=str(exc))
        raise click.ClickException(f"restore refused: {exc}") from None
    except ArgumentError as exc:  # a database URL SQLAlchemy cannot read
        raise click.ClickException(str(database_unusable(ctx.settings(), exc))) from None
    log.info("backup.restored", directory=str(directory), data_dir=str(new_data_dir), schema=result.schema,
             crl_number_floors=result.crl_floors)
    click.echo(f"restored {directory} (made {result.manifest['created_at']}) into {new_data_dir}")
    click.echo(f"  schema: {result.schema}")
    for ca, floor in result.crl_floors.items():
        click.echo(f"  CA {ca}: CRL Numbers continue above {floor}")
    if result.checked:
        click.echo(f"  verified: {result.checked['yubikeys']} YubiKey secret(s) and {result.checked['clients']} OTP "
                   "client secret(s) open with the key-encryption key")
    if verify:
        click.echo("  verified: the database passes SQLite's integrity check")
    for note in result.notes:
        click.echo(f"  {note}")
    click.echo(f"start the server with --data-dir {new_data_dir} (or data_dir = \"{new_data_dir}\")")


# ---------------------------------------------------------------- profiles


@main.group()
def profile() -> None:
    """SCEP profiles (one endpoint each)."""


@profile.command("add")
@click.argument("name")
@click.option("--challenge", "kind", type=click.Choice(["static", "dynamic", "delegated"]), default="static",
              show_default=True)
@click.option("--secret", help="Static challenge (default: a random one, printed once). Visible to other users of "
              "the host in the process list: prefer --secret-file.")
@click.option("--secret-file", type=click.File("r", encoding="utf-8"),
              help="File holding the static challenge on its first line (- : standard input).")
@click.option("--validity-days", type=click.IntRange(1, 3650))
@click.option("--require-approval", is_flag=True, help="Enrolments wait for `enrolment approve`.")
@click.option("--settings-json", help="Full profile settings as JSON (see README).")
@pass_ctx
def profile_add(ctx: Context, name: str, kind: str, secret: str | None, secret_file: Any, validity_days: int | None,
                require_approval: bool, settings_json: str | None) -> None:
    """Create a profile; a static profile's secret is printed once."""
    from .profiles import InvalidSettings, ProfileError, ProfileSettings, new_static_secret, parse_settings

    given = secret_from(secret, secret_file, option="secret")
    if given is not None and kind != "static":
        raise click.UsageError(f"a {kind} profile has no static secret (--secret, --secret-file)")
    secret = given
    try:
        settings = parse_settings(_json_arg(settings_json), kind=kind) if settings_json else ProfileSettings()
    except InvalidSettings as exc:
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
                                            else None, settings=settings, now=utcnow(), actor=cli_actor())

    try:
        run(go())
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from None
    base = ctx.settings().server.public_base_url()
    click.echo(f"profile {name!r} created: {base}/scep/{name}")
    if kind == "static" and given is None:  # a secret the administrator gave is not printed back
        click.echo(f"challenge: {secret}")


def _json_arg(text: str) -> object:
    """A command-line JSON argument (a usage error when it is not JSON)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise click.BadParameter("nested too deeply", param_hint="--settings-json") from None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--settings-json") from None


@profile.command("list")
@paging_options
@pass_ctx
def profile_list(ctx: Context, limit: int, cursor: str | None, all_rows: bool) -> None:
    """List profiles, by name (a page; see --all)."""
    rows, more = ctx.read(lambda stores: collect(stores.profiles.page, limit=limit, cursor=cursor,
                                                 all_rows=all_rows, kinds=(str,)))
    for p in rows:
        click.echo(f"{p.name}\t{p.challenge_kind}\tca={p.ca}\tvalidity={p.settings.template.validity_days}d"
                   f"{'	approval' if p.settings.require_approval else ''}")
    say_more(more, len(rows))


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
            return await rt.profiles.update(name, settings=settings, now=utcnow(), actor=cli_actor())

    try:
        p = run(go())
    except UnknownProfile as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(p.settings.template.model_dump_json(indent=2))


@profile.command("update")
@click.argument("name")
@click.option("--settings-json", required=True,
              help="A merge patch (RFC 7396) of the settings: keys given replace, null resets to the default.")
@pass_ctx
def profile_update(ctx: Context, name: str, settings_json: str) -> None:
    """Change a profile's settings (as PATCH /api/v1/profiles/NAME does); prints the profile."""
    from .profiles import ProfileError, describe

    patch = _json_arg(settings_json)

    async def go():
        async with ctx.runtime() as rt:
            return await rt.profiles.update_settings(name, patch, now=utcnow(), actor=cli_actor())

    try:
        p = run(go())
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(describe(p), indent=2))


def _grace(text: str | None):
    """--grace: N followed by s, m, h or d."""
    import re
    from datetime import timedelta

    if text is None:
        return None
    m = re.fullmatch(r"([0-9]{1,6})([smhd])", text.strip())
    if not m or int(m.group(1)) == 0:
        raise click.BadParameter("a positive number followed by s, m, h or d (e.g. 24h)", param_hint="--grace")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


@profile.command("rotate-secret")
@click.argument("name")
@click.option("--grace", help="Keep accepting the old secret this long (e.g. 24h, 7d; at most 30d), each use "
              "logged; default: refused at once.")
@pass_ctx
def profile_rotate_secret(ctx: Context, name: str, grace: str | None) -> None:
    """A new static challenge for a static profile, printed once; the old one is refused at once (or after
    --grace)."""
    from .profiles import ProfileError

    period = _grace(grace)

    async def go():
        async with ctx.runtime() as rt:
            return await rt.profiles.rotate_secret(name, now=utcnow(), actor=cli_actor(), grace=period)

    try:
        secret = run(go())
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"challenge: {secret}")
    if period is not None:
        click.echo(f"the previous challenge is accepted until {(utcnow() + period).isoformat()}", err=True)


@profile.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even while certificates of the profile are valid or on hold "
              "(they stay valid until revoked or expired).")
@pass_ctx
def profile_delete(ctx: Context, name: str, force: bool) -> None:
    """Delete a profile: its unused challenges go, its pending enrolments are rejected, its certificates stay."""
    from .profiles import ProfileError

    async def go():
        async with ctx.runtime() as rt:
            return await rt.profiles.delete(name, now=utcnow(), force=force, actor=cli_actor())

    try:
        counts = run(go())
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"profile {name!r} deleted ({counts['certificates']} certificate(s) valid or on hold kept, "
               f"{counts['rejected_enrolments']} pending enrolment(s) rejected)")


# ---------------------------------------------------------------- certificates


@main.group()
def cert() -> None:
    """Issued certificates."""


def _time_option(name: str, help_text: str):
    return click.option(name, metavar="ISO8601", help=help_text)


@cert.command("list")
@click.option("--status", type=click.Choice(["valid", "hold", "revoked"]))
@click.option("--profile")
@click.option("--device", help="Certificates bound to this device (now or before) or enrolled for it.")
@_time_option("--issued-after", "Issued at or after (a date or date-time; UTC without an offset).")
@_time_option("--issued-before", "Issued before.")
@_time_option("--expires-after", "Expiring at or after.")
@_time_option("--expires-before", "Expiring before.")
@click.option("--serial-prefix", metavar="HEX", help="The first hexadecimal digits of the serial.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@paging_options
@pass_ctx
def cert_list(ctx: Context, status: str | None, profile: str | None, device: str | None, issued_after: str | None,
              issued_before: str | None, expires_after: str | None, expires_before: str | None,
              serial_prefix: str | None, fmt: str, limit: int, cursor: str | None, all_rows: bool) -> None:
    """The certificate inventory, newest first (a page; see --all), filtered as GET /api/v1/certificates."""
    from trustkit.problems import BadRequest

    from .ca.records import CERT_KEY, CertFilter, summary

    given = {"status": status, "profile": profile, "device": device, "issued_after": issued_after,
             "issued_before": issued_before, "expires_after": expires_after, "expires_before": expires_before,
             "serial_prefix": serial_prefix}
    try:
        filters = CertFilter.parse(given)
    except BadRequest as exc:
        option = "--" + exc.detail.partition(":")[0].replace("_", "-")
        raise click.BadParameter(exc.detail.partition(": ")[2] or exc.detail, param_hint=option) from None

    rows, more = ctx.read(lambda stores: collect(lambda page: stores.certificates.list(page, filters), limit=limit,
                                                 cursor=cursor, all_rows=all_rows, kinds=CERT_KEY))
    if fmt == "json":
        click.echo(json.dumps([summary(r) for r in rows], indent=2))
    else:
        for r in rows:
            click.echo(f"{r.serial}\t{r.status}\t{r.profile}\t{r.not_after:%Y-%m-%d}\t{r.subject}")
    say_more(more, len(rows))


@cert.command("show")
@click.argument("serial")
@pass_ctx
def cert_show(ctx: Context, serial: str) -> None:
    """One certificate as JSON: its fields, PEM, CA, device binding and audit events."""
    from .ca.inventory import InventoryError

    parsed = _serial_arg(serial)

    async def go():
        async with ctx.runtime() as rt:
            return await rt.certificates.show(parsed)

    try:
        click.echo(json.dumps(run(go()), indent=2))
    except InventoryError as exc:
        raise click.ClickException(str(exc)) from None


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
            return await getattr(rt.revocation, change)(_serial_arg(serial), actor=cli_actor(), **kwargs)

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
@click.option("--invalidity-date", metavar="ISO8601",
              help="When the key is known or suspected to have been compromised (not in the future; UTC without "
                   "an offset); the CRL entry carries it.")
@pass_ctx
def cert_revoke(ctx: Context, serial: str, reason: str, invalidity_date: str | None) -> None:
    """Revoke a certificate for good (it is listed on the CRL until it expires)."""
    from trustkit.problems import BadRequest

    from .ca.queries import parse_time
    from .ca.revocation import parse_reason

    try:
        parsed = parse_reason(reason)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None
    when = None
    if invalidity_date is not None:
        try:
            when = parse_time(invalidity_date, "invalidity date")
        except BadRequest as exc:
            raise click.BadParameter(exc.detail, param_hint="--invalidity-date") from None
        if when > utcnow():
            raise click.BadParameter("a time in the past", param_hint="--invalidity-date")
    _status_change(ctx, serial, "revoke", reason=parsed, invalidity_date=when)


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


def _expiry(expires_in: str | None, expires_at: str | None):
    """The expiry of --expires-in (N followed by s, m, h or d) or --expires-at (ISO 8601; UTC unless it says)."""
    from trustkit.clock import ExpiryError, expiry

    try:
        return expiry(expires_in, expires_at, utcnow())
    except ExpiryError as exc:
        if exc.field is None:
            raise click.UsageError("give --expires-in or --expires-at, not both") from None
        raise click.BadParameter(exc.message, param_hint="--" + exc.field.replace("_", "-")) from None


@token.command("create")
@click.option("--scope", type=click.Choice(["admin", "signin"]), required=True)
@click.option("--name", default="", help="What the token is for.")
@click.option("--expires-in", help="Refused after this long: N followed by s, m, h or d (e.g. 90d).")
@click.option("--expires-at", help="Refused from this time on (ISO 8601; UTC unless an offset is given).")
@pass_ctx
def token_create(ctx: Context, scope: str, name: str, expires_in: str | None, expires_at: str | None) -> None:
    """Create a token; it is printed once."""
    from trustkit.problems import DomainError

    expiry = _expiry(expires_in, expires_at)

    async def go():
        async with ctx.runtime() as rt:
            return await rt.tokens.create(scope=scope, name=name, now=utcnow(), expires_at=expiry, actor=cli_actor())

    try:
        token_id, secret = run(go())
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"id: {token_id}")
    click.echo(f"token: {secret}")
    if expiry is not None:
        click.echo(f"expires: {expiry.isoformat()}")


@token.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@paging_options
@pass_ctx
def token_list(ctx: Context, fmt: str, limit: int, cursor: str | None, all_rows: bool) -> None:
    """The API tokens, oldest first (never their secrets; a page, see --all)."""
    from datetime import datetime

    async def go():
        async with ctx.runtime() as rt:
            return await collect(rt.tokens.page, limit=limit, cursor=cursor, all_rows=all_rows, kinds=(datetime, str))

    rows, more = run(go())
    if fmt == "json":
        click.echo(json.dumps([t.view() for t in rows], indent=2))
    else:
        def when(value) -> str:
            return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else "-"

        for t in rows:
            state = "disabled" if t.disabled_at else ("expired" if t.expires_at and t.expires_at <= utcnow()
                                                      else "enabled")
            click.echo(f"{t.id}\t{t.scope}\t{state}\tcreated={when(t.created_at)}\texpires={when(t.expires_at)}"
                       f"\tlast_used={when(t.last_used_at)}\t{t.name}")
    say_more(more, len(rows))


@token.command("disable")
@click.argument("token_id", metavar="ID")
@pass_ctx
def token_disable(ctx: Context, token_id: str) -> None:
    """Disable a token (as `token list` shows its id): refused at once here, within 5 s by running servers."""
    from trustkit.problems import DomainError

    async def go():
        async with ctx.runtime() as rt:
            return await rt.tokens.disable(token_id, now=utcnow(), actor=cli_actor())

    try:
        changed = run(go())
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"token {token_id} disabled" if changed else f"token {token_id} was already disabled")


@token.command("rotate")
@click.argument("token_id", metavar="ID")
@pass_ctx
def token_rotate(ctx: Context, token_id: str) -> None:
    """A new secret for a token (same id, name, scope and expiry), printed once; the old secret is refused at
    once here and within 5 s by running servers."""
    from trustkit.problems import DomainError

    async def go():
        async with ctx.runtime() as rt:
            return await rt.tokens.rotate(token_id, now=utcnow(), actor=cli_actor())

    try:
        secret = run(go())
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(secret)
    click.echo(f"token {token_id}: new secret above, shown once; the previous one no longer works", err=True)


# ---------------------------------------------------------------- shell completion


def _add_completion() -> None:
    from .completion import completion

    main.add_command(completion)


_add_completion()


if __name__ == "__main__":  # python -m scep_server.cli
    main()
