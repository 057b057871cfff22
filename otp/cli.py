"""CLI groups `yubikey` and `otp-client` (registered by the application's `scep-server` command).

Exit codes: 0 done, 1 the operation failed (the message says why), 2 usage error.
"""
from __future__ import annotations

import getpass
import json
from typing import TYPE_CHECKING, Any, AsyncContextManager, Awaitable, Callable, Protocol, TypeVar

import click

from trustkit.clipaging import collect, paging_options, say_more

from .statuses import STATUSES

if TYPE_CHECKING:
    from .service import ImportResult, OtpService
    from .sqlitereads import OtpReads

T = TypeVar("T")

# the formats, spelled here so that building the commands imports no more of the package (`--help` stays
# quick); they are otp.report.FORMATS
FORMATS = ("table", "csv", "json")
# the stages of an import's progress (OtpService.import_secrets) as the bars name them
IMPORT_STAGES = {"read": "reading lines", "seal": "sealing keys", "write": "writing keys"}


class OpenService(Protocol):
    """Opens the service for one command. ``with_kek=False``: the command neither seals nor opens a secret,
    so the key-encryption key need not be loaded (nor exist)."""

    def __call__(self, *, with_kek: bool = True) -> AsyncContextManager["OtpService"]: ...

DELETE_FACTOR_WARNING = (
    "This deletes every YubiKey OTP key: unassigned keys are removed, enrolled and revoked keys are "
    "retired (users can no longer sign in with them; they stay in the report for audit). "
    "It cannot be undone."
)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


def _serial(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:  # before the imports: shell completion runs this callback at every TAB
        return None
    from .errors import OtpError
    from .report import parse_serial

    try:
        return parse_serial(value)
    except OtpError as exc:
        raise click.BadParameter(exc.detail) from None


def _print_issues(result: "ImportResult") -> None:
    """Every issue listed (the first MAX_ISSUES of each kind, by line), then how many more were found."""
    unlisted = result.unlisted()
    for label, kind, issues in (("error", "errors", result.errors), ("warning", "warnings", result.warnings),
                                ("skipped", "skipped", result.skipped)):
        for issue in issues:
            click.echo(f"{label}: {issue}", err=True)
        if kind in unlisted:
            click.echo(f"{label}: ... and {unlisted[kind]} more not listed (the first {len(issues)} by line are)",
                       err=True)


def build_cli(open_service: OpenService,
              open_reads: Callable[[], "OtpReads | None"] | None = None) -> list[click.Group]:
    """The `yubikey` and `otp-client` command groups, each command running on `open_service()`; `yubikey report`
    reads through ``open_reads()`` instead where it returns a reader (the application's database is a SQLite
    file it may read directly: otp.sqlitereads)."""

    def run(op: Callable[["OtpService"], Awaitable[T]], *, with_kek: bool = True) -> T:
        import asyncio

        from .errors import OtpError
        from .kek import KekError
        from .store import BACKEND_ERRORS

        async def main() -> T:
            async with open_service(with_kek=with_kek) as service:
                return await op(service)
        try:
            return asyncio.run(main())
        except OtpError as exc:
            raise click.ClickException(exc.detail) from None
        except KekError as exc:
            raise click.ClickException(str(exc)) from None
        except BACKEND_ERRORS as exc:
            raise click.ClickException(f"database error: {exc.__class__.__name__}: {exc}") from None

    @click.group("yubikey", help="YubiKey OTP factor: import secrets files, report, revoke and delete keys.")
    def yubikey() -> None:
        pass

    @yubikey.command("import")
    @click.argument("file", type=click.File("rb"))
    @click.option("--dry-run", is_flag=True, help="Validate every line and report; import nothing.")
    def import_cmd(file: Any, dry_run: bool) -> None:
        """Import a secrets file (Yubico format, ykman --config-output, YK-KSM); all lines or none.

        On a terminal, bars on stderr follow the reading, sealing and writing of the keys."""
        from trustkit.progress import stage_bars

        data = file.read()
        with stage_bars(IMPORT_STAGES) as progress:
            result = run(lambda s: s.import_secrets(data, dry_run=dry_run, actor=_actor(), progress=progress))
        _print_issues(result)
        if not result.ok:
            n = result.errors_total
            raise click.ClickException(f"{n} problem{'s' if n != 1 else ''} in {file.name} "
                                       f"(format: {result.format}); nothing was imported")
        if dry_run:
            click.echo(f"dry run: {result.records} keys would be imported (format: {result.format})")
        else:
            click.echo(f"imported {result.imported} keys (format: {result.format}, import #{result.import_id})")

    @yubikey.command("report")
    @click.option("--status", type=click.Choice(STATUSES, case_sensitive=False))
    @click.option("--serial", callback=_serial)
    @click.option("--user", help="Current or former user of the key.")
    @click.option("--public-id")
    @click.option("--imported-after", metavar="DATE")
    @click.option("--imported-before", metavar="DATE")
    @click.option("--enrolled-after", metavar="DATE")
    @click.option("--enrolled-before", metavar="DATE")
    @click.option("--last-used-after", metavar="DATE")
    @click.option("--last-used-before", metavar="DATE")
    @click.option("--exclude-deleted", is_flag=True, help="Leave out keys taken out of the inventory.")
    @click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
    @paging_options
    def report_cmd(fmt: str, exclude_deleted: bool, limit: int, cursor: str | None, all_rows: bool,
                   **filters: Any) -> None:
        """The YubiKey report by serial: UNASSIGNED, ACTIVE and REVOKED keys with their history (a page; see
        --all, which renders every page as one table, CSV or JSON document)."""
        from .errors import OtpError
        from .report import REPORT_KEY, ReportFilter, render

        try:
            flt = ReportFilter.from_mapping({**filters, "include_deleted": not exclude_deleted})
        except OtpError as exc:
            raise click.UsageError(exc.detail) from None

        async def pages(s: "OtpService | OtpReads") -> tuple[list[Any], str | None]:
            return await collect(lambda page: s.report_page(flt, page, with_history=fmt == "json"), limit=limit,
                                 cursor=cursor, all_rows=all_rows, kinds=REPORT_KEY)

        reads = open_reads() if open_reads is not None else None
        if reads is None:
            rows, more = run(pages, with_kek=False)
        else:
            import sqlite3

            from trustkit.sqlitereads import complete

            try:
                with reads:
                    rows, more = complete(pages(reads))
            except sqlite3.Error as exc:
                raise click.ClickException(f"database error: {exc.__class__.__name__}: {exc}") from None
        click.echo(render(rows, fmt), nl=False)
        say_more(more, len(rows))

    @yubikey.command("revoke")
    @click.argument("serial", callback=_serial)
    def revoke_cmd(serial: int) -> None:
        """Revoke a lost or stolen key: REVOKED, its user association removed, never usable again."""
        row = run(lambda s: s.revoke(serial, actor=_actor()), with_kek=False)
        former = f" (was enrolled to {row.last_user})" if row.last_user else ""
        click.echo(f"revoked YubiKey {row.serial} ({row.public_id}){former}")

    @yubikey.command("delete")
    @click.argument("serial", callback=_serial)
    def delete_cmd(serial: int) -> None:
        """Delete an unassigned key, or a revoked one (history kept); an ACTIVE key is refused."""
        before = run(lambda s: s.delete(serial, actor=_actor()), with_kek=False)
        if before == "REVOKED":
            click.echo(f"deleted revoked YubiKey {serial}; it stays in the report, and the same hardware may be "
                       "imported again once reprogrammed")
        else:
            click.echo(f"deleted unassigned YubiKey {serial}")

    @yubikey.command("delete-factor")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    def delete_factor_cmd(yes: bool) -> None:
        """Delete the YubiKey OTP factor: every OTP-mode key. Cannot be undone."""
        click.echo(DELETE_FACTOR_WARNING, err=True)
        if not yes and not click.confirm("Delete every YubiKey OTP key?", default=False, err=True):
            raise click.ClickException("nothing was deleted")
        counts = run(lambda s: s.delete_factor(actor=_actor()), with_kek=False)
        click.echo(f"deleted the YubiKey OTP factor: {counts['unassigned_removed']} never-used unassigned keys removed, "
                   f"{counts['assigned_retired']} used, enrolled or revoked keys retired (kept in the report)")

    @click.group("otp-client", help="API clients of the Yubico validation protocol 2.0 (/wsapi/2.0/verify).")
    def otp_client() -> None:
        pass

    @otp_client.command("add")
    @click.option("--name", default="", help="A label, e.g. the sign-in service that uses the client.")
    @click.option("--allow-unsigned", is_flag=True,
                  help="A legacy client that cannot sign: accept its requests without h (each one is logged).")
    def client_add_cmd(name: str, allow_unsigned: bool) -> None:
        """Create a client: prints its id and base64 API key (shown only now)."""
        info, key = run(lambda s: s.add_client(name, allow_unsigned=allow_unsigned, actor=_actor()))
        click.echo(f"id: {info.id}")
        click.echo(f"key: {key}")
        click.echo(f"e.g. ykclient --url https://HOST/wsapi/2.0/verify --apikey {key} {info.id} OTP", err=True)

    @otp_client.command("list")
    @click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True)
    @paging_options
    def client_list_cmd(fmt: str, limit: int, cursor: str | None, all_rows: bool) -> None:
        """List clients by id (keys are never shown again; a page, see --all)."""
        from .service import CLIENT_LIST_KEY

        async def pages(s: "OtpService") -> tuple[list[Any], str | None]:
            return await collect(s.list_clients, limit=limit, cursor=cursor, all_rows=all_rows,
                                 kinds=CLIENT_LIST_KEY)

        clients, more = run(pages)
        if fmt == "json":
            click.echo(json.dumps([c.to_json() for c in clients], indent=2))
        else:
            click.echo(f"{'ID':>6}  {'STATUS':8}  {'REQUESTS':8}  {'CREATED':20}  NAME")
            for c in clients:
                status = "active" if c.active else "disabled"
                signing = "unsigned" if c.allow_unsigned else "signed"
                click.echo(f"{c.id:>6}  {status:8}  {signing:8}  {c.created_at.strftime('%Y-%m-%dT%H:%M:%SZ'):20}  "
                           f"{c.name}")
        say_more(more, len(clients))

    @otp_client.command("set")
    @click.argument("client_id", metavar="ID", type=click.IntRange(min=1))
    @click.option("--allow-unsigned/--require-signed", "allow_unsigned", required=True,
                  help="Whether the client may send requests without h (a legacy client).")
    def client_set_cmd(client_id: int, allow_unsigned: bool) -> None:
        """Let a legacy client send unsigned requests, or require its signatures again."""
        run(lambda s: s.set_client_unsigned(client_id, allow_unsigned, actor=_actor()))
        click.echo(f"OTP client {client_id}: " + ("unsigned requests accepted" if allow_unsigned
                                                 else "signed requests required"))

    @otp_client.command("disable")
    @click.argument("client_id", metavar="ID", type=click.IntRange(min=1))
    def client_disable_cmd(client_id: int) -> None:
        """Disable a client: its requests are answered NO_SUCH_CLIENT."""
        run(lambda s: s.disable_client(client_id, actor=_actor()))
        click.echo(f"disabled OTP client {client_id}")

    return [yubikey, otp_client]
