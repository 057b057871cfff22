"""`scep-server mdm ...`: the MDM sources whose device records the device lifecycle follows."""
from __future__ import annotations

import json

import click

from ..clictx import Context, cli_actor, pass_ctx, run


def _call(ctx: Context, fn):
    from ..runtime import Uses
    from .errors import MdmError

    async def go():
        async with ctx.runtime(Uses(binding=True)) as rt:
            return await fn(rt.mdm)

    try:
        return run(go())
    except MdmError as exc:
        raise click.ClickException(str(exc)) from None


def _secret_ref(env: str | None, file: str | None) -> dict:
    if bool(env) == bool(file):
        raise click.UsageError("give exactly one of --client-secret-env and --client-secret-file")
    return {"env": env} if env else {"file": file}


def _url(url: str, what: str) -> str:
    from ..challenge.config import outbound_url

    try:
        return outbound_url(url, what)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _configured(ctx: Context, name: str, kind: str, config: dict, new_secret: bool) -> None:
    source, secret = _call(ctx, lambda svc: svc.configure(name, kind, config, actor=cli_actor(),
                                                          new_webhook_secret=new_secret))
    click.echo(json.dumps(source, indent=2))
    if secret is not None and kind == "jamf":
        click.echo(f"webhook secret (shown once): {secret}", err=True)
        click.echo(f"Jamf Pro webhook URL: <base URL>/hooks/{name}; authentication: Basic (any user name, this "
                   f"secret as the password) or the header X-Webhook-Secret", err=True)


@click.group()
def mdm() -> None:
    """MDM sources (Jamf Pro, Intune): device lifecycle that follows the MDM's records."""


@mdm.group("configure")
def configure() -> None:
    """Add or change an MDM source (its client secret stays on this host: a file or an environment variable)."""


@configure.command("jamf")
@click.option("--name", default="jamf", show_default=True, help="The source's name (also its webhook path).")
@click.option("--url", required=True, help="The Jamf Pro server, e.g. https://example.jamfcloud.com")
@click.option("--client-id", required=True, help="The Jamf Pro API client's id.")
@click.option("--client-secret-env", help="Environment variable holding the API client's secret.")
@click.option("--client-secret-file", type=click.Path(dir_okay=False), help="File holding the API client's secret.")
@click.option("--id-field", type=click.Choice(["udid", "serial_number"]), default="udid", show_default=True,
              help="What our device ids are: the UDID ($UDID) or the serial number ($SERIALNUMBER).")
@click.option("--new-webhook-secret", is_flag=True, help="Make a new webhook secret (the old one stops working).")
@pass_ctx
def configure_jamf(ctx: Context, name: str, url: str, client_id: str, client_secret_env: str | None,
                   client_secret_file: str | None, id_field: str, new_webhook_secret: bool) -> None:
    config = {"url": _url(url, "--url"), "client_id": client_id,
              "client_secret": _secret_ref(client_secret_env, client_secret_file), "id_field": id_field}
    _configured(ctx, name, "jamf", config, new_webhook_secret)


@configure.command("intune")
@click.option("--name", default="intune", show_default=True, help="The source's name.")
@click.option("--tenant", required=True, help="The Entra ID tenant (id or domain).")
@click.option("--client-id", required=True, help="The app registration's application (client) id.")
@click.option("--client-secret-env", help="Environment variable holding the app's client secret.")
@click.option("--client-secret-file", type=click.Path(dir_okay=False), help="File holding the app's client secret.")
@click.option("--id-field", type=click.Choice(["device_id", "azure_ad_device_id", "serial_number"]),
              default="device_id", show_default=True,
              help="What our device ids are: Intune's device id ({{DeviceId}}), the Entra device id "
                   "({{AAD_Device_ID}}) or the serial number.")
@click.option("--authority-url", default="https://login.microsoftonline.com", show_default=True)
@click.option("--graph-url", default="https://graph.microsoft.com", show_default=True)
@pass_ctx
def configure_intune(ctx: Context, name: str, tenant: str, client_id: str, client_secret_env: str | None,
                     client_secret_file: str | None, id_field: str, authority_url: str, graph_url: str) -> None:
    config = {"tenant": tenant, "client_id": client_id, "id_field": id_field,
              "client_secret": _secret_ref(client_secret_env, client_secret_file),
              "authority_url": _url(authority_url, "--authority-url"), "graph_url": _url(graph_url, "--graph-url")}
    _configured(ctx, name, "intune", config, False)


@mdm.command("list")
@pass_ctx
def mdm_list(ctx: Context) -> None:
    """The configured sources and their last sync."""
    for s in _call(ctx, lambda svc: svc.sources()):
        click.echo(f"{s['name']}\t{s['kind']}\t{s['last_sync_at'] or '-'}\t{s['last_sync_outcome'] or '-'}")


@mdm.command("show")
@click.argument("name")
@pass_ctx
def mdm_show(ctx: Context, name: str) -> None:
    """One source, as JSON."""
    click.echo(json.dumps(_call(ctx, lambda svc: svc.source(name)), indent=2))


@mdm.command("sync")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print what the sync would change; change nothing.")
@click.option("--confirm-takedowns", type=click.IntRange(0, 1_000_000),
              help="Apply a sync that takes down more devices than the brake allows ([mdm] brake_share, "
                   "brake_devices), if it takes down at most this many.")
@pass_ctx
def mdm_sync(ctx: Context, name: str, dry_run: bool, confirm_takedowns: int | None) -> None:
    """Read the source's inventory now and apply what it asks for (refused while another sync of it runs)."""
    report = _call(ctx, lambda svc: svc.sync(name, dry_run=dry_run, actor=cli_actor(),
                                             confirm_takedowns=confirm_takedowns))
    for c in report.changes:
        click.echo(f"{'would ' if dry_run else ''}{c.action}\t{c.device_id}\t{c.why}")
    for s in report.skipped:
        click.echo(f"skipped {s['action']}\t{s['device_id']}\t{s['error']}")
    if report.error:
        raise click.ClickException(f"the MDM could not be read, nothing changed: {report.error}")
    if report.held is not None:
        message = (f"{report.held['takedowns']} of {report.held['devices']} devices would be taken down, more than "
                   f"the brake allows ({report.held['limit']})")
        if dry_run:
            click.echo(f"{message}: a sync would be held", err=True)
        else:
            for c in report.held["changes"]:
                click.echo(f"held {c['action']}\t{c['device_id']}\t{c['why']}")
            raise click.ClickException(f"{message}; nothing changed. If the MDM's inventory is right, run again "
                                       f"with --confirm-takedowns {report.held['takedowns']}")
    click.echo(f"{report.records} records, {len(report.changes)} changes{' (dry run)' if dry_run else ''}", err=True)


@mdm.command("remove")
@click.argument("name")
@pass_ctx
def mdm_remove(ctx: Context, name: str) -> None:
    """Forget a source (devices keep their state)."""
    _call(ctx, lambda svc: svc.remove(name, actor=cli_actor()))
