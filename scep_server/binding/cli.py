"""`scep-server device ...` and `scep-server ca add-external|remove-external|forget-external-crls|list-external`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..clictx import Context, cli_actor as _actor, pass_ctx, run
from trustkit.clipaging import collect, paging_options, say_more


def _call(ctx: Context, fn):
    from ..runtime import Uses
    from .errors import BindingError
    from .service import services

    async def go():
        async with ctx.runtime(Uses(binding=True)) as rt:
            return await fn(services(rt), rt)

    try:
        return run(go())
    except BindingError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def device() -> None:
    """Devices: lifecycle and bound certificates."""


@device.command("add")
@click.argument("device_id", required=False)
@click.option("--name", default="", help="A label for the device.")
@pass_ctx
def device_add(ctx: Context, device_id: str | None, name: str) -> None:
    """Register a device (active); a random id is chosen when none is given."""
    d = _call(ctx, lambda svc, rt: svc.devices.create(device_id, name=name, actor=_actor()))
    click.echo(d.id)


@device.command("list")
@click.option("--status", type=click.Choice(["active", "suspended", "deactivated", "deleted"]))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@paging_options
@pass_ctx
def device_list(ctx: Context, status: str | None, fmt: str, limit: int, cursor: str | None, all_rows: bool) -> None:
    """List devices, oldest first (a page; see --all)."""
    from .service import DEVICE_KEY

    async def go(svc, rt):
        return await collect(lambda page: svc.devices.page(page, status=status), limit=limit, cursor=cursor,
                             all_rows=all_rows, kinds=DEVICE_KEY)

    rows, more = _call(ctx, go)
    if fmt == "json":
        click.echo(json.dumps([d.to_json() for d in rows], indent=2))
    else:
        for d in rows:
            click.echo(f"{d.id}\t{d.status.value}\t{d.status_changed_at:%Y-%m-%d %H:%M:%S}\t{d.name}")
    say_more(more, len(rows))


@device.command("show")
@click.argument("device_id")
@pass_ctx
def device_show(ctx: Context, device_id: str) -> None:
    """A device, its certificates and its history, as JSON."""
    async def go(svc, rt):
        d = await svc.devices.get(device_id)
        return {**d.to_json(), "certificates": [b.to_json() for b in await svc.devices.bindings(device_id)],
                "history": await svc.devices.history(device_id)}

    click.echo(json.dumps(_call(ctx, go), indent=2))


def _transition_command(action: str, help_text: str):
    @device.command(action, help=help_text)
    @click.argument("device_id")
    @click.option("--reason", help="Why (recorded with the change).")
    @pass_ctx
    def command(ctx: Context, device_id: str, reason: str | None) -> None:
        d, changes = _call(ctx, lambda svc, rt: svc.devices.transition(device_id, action, actor=_actor(),
                                                                         reason=reason))
        click.echo(f"{d.id}: {d.status.value}")
        for c in changes:
            click.echo(f"  certificate {c.serial} ({c.ca}): {c.status}")

    return command


_transition_command("suspend", "Suspend: the certificate stays valid, the device is not managed.")
_transition_command("unsuspend", "Lift a suspension.")
_transition_command("deactivate", "Deactivate: the device's certificates go on hold (certificateHold on the CRL).")
_transition_command("reactivate", "Reactivate: holds are released.")
_transition_command("delete", "Delete for good: the device's certificates are revoked (cessationOfOperation).")


@device.command("remove-cert")
@click.argument("device_id")
@click.option("--reason")
@pass_ctx
def device_remove_cert(ctx: Context, device_id: str, reason: str | None) -> None:
    """Remove the device's current certificate: never accepted again (ours is revoked)."""
    b = _call(ctx, lambda svc, rt: svc.devices.remove_certificate(device_id, actor=_actor(), reason=reason))
    click.echo(f"{device_id}: certificate {b.serial} ({b.ca}) removed")


@device.command("preregister")
@click.argument("device_id")
@click.option("--profile", required=True, help="The SCEP profile the device will enrol at.")
@click.option("--transaction-id", required=True, help="The SCEP transactionID of that enrolment.")
@pass_ctx
def device_preregister(ctx: Context, device_id: str, profile: str, transaction_id: str) -> None:
    """Name the device of a coming enrolment: its certificate may replace the device's current one."""
    _call(ctx, lambda svc, rt: svc.devices.preregister(device_id, profile=profile, transaction_id=transaction_id,
                                                        actor=_actor()))
    click.echo(f"{device_id}: enrolment {transaction_id!r} at profile {profile!r} pre-registered")


@click.group()
def ca() -> None:
    """Certificate authorities: ours (`ca list`) and customers' own CAs."""


@ca.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def ca_list(ctx: Context, fmt: str) -> None:
    """Our issuing CAs: certificate, RA certificate and CRL state, as GET /api/v1/cas (needs the CA keys, as
    `crl show` does; works with the binding capability off)."""
    from ..ca.overview import overview
    from ..crlwiring.cli import _quiet_logs
    from ..runtime import Uses

    _quiet_logs(ctx)

    async def go():
        async with ctx.runtime(Uses(crl=True)) as rt:
            return await overview(rt.cas, rt.crl)

    rows = run(go())
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    for c in rows:
        crl = c["crl"] or {}
        nxt = c["next_ca_certificates"]
        click.echo(f"{c['name']}\t{c['certificate']['subject']}\tuntil {c['certificate']['not_after'][:10]}"
                   f"\tRA{' (split)' if c.get('ra_mode') == 'split' else ''} until "
                   f"{c['ra_certificate']['not_after'][:10]}"
                   + (f"\tnext CA until {nxt[0]['not_after'][:10]}" if nxt else "")
                   + f"\tCRL #{crl.get('number')} ({crl.get('state')}, next update {crl.get('next_update')})")


@ca.command("add-external")
@click.argument("name")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False, exists=True), required=True,
              help="The CA certificate (PEM or DER) that issues the devices' certificates.")
@click.option("--policy", type=click.Choice(["fail-open", "fail-closed"]), default="fail-closed", show_default=True,
              help="When no fresh CRL is available: accept (fail-open) or refuse (fail-closed).")
@pass_ctx
def ca_add_external(ctx: Context, name: str, cert_path: str, policy: str) -> None:
    """Register a customer's CA: its certificates are checked against its CRL (CDP required)."""
    from crl.config import Policy

    from .external import load_certificate

    async def go(svc, rt):
        cert = load_certificate(Path(cert_path).read_bytes())
        return await svc.external.add(name, cert, policy=Policy(policy), actor=_actor(), now=rt.clock())

    c = _call(ctx, go)
    click.echo(f"external CA {c.name!r} added: {c.cert.subject.rfc4514_string()} SHA-256 {c.fingerprint_sha256} "
               f"policy {c.policy.value}")


@ca.command("remove-external")
@click.argument("name")
@pass_ctx
def ca_remove_external(ctx: Context, name: str) -> None:
    """Unregister a customer's CA: its certificates have an unknown issuer from then on (devices unmanaged)."""
    async def go(svc, rt):
        return await svc.external.remove(name, actor=_actor(), now=rt.clock())

    c = _call(ctx, go)
    click.echo(f"external CA {c.name!r} removed: {c.cert.subject.rfc4514_string()} SHA-256 {c.fingerprint_sha256}")


@ca.command("forget-external-crls")
@click.argument("name")
@pass_ctx
def ca_forget_external_crls(ctx: Context, name: str) -> None:
    """Forget the last good CRLs recorded for a customer's CA: the next valid CRL of each of its URLs is taken
    whatever its CRL Number, thisUpdate or scope (the way out when the CA was restored from a backup, its CRLs
    refused as rollback, or narrowed a URL's scope on purpose, refused as scope_mismatch). Running servers
    follow within binding.external_ca_reload_seconds."""
    async def go(svc, rt):
        return await svc.external.forget_crls(name, actor=_actor(), now=rt.clock())

    done = _call(ctx, go)
    click.echo(f"external CA {done['name']!r}: {done['forgotten']} recorded CRL(s) forgotten; the next valid CRL "
               f"of each of its URLs is taken")


@ca.command("list-external")
@paging_options
@pass_ctx
def ca_list_external(ctx: Context, limit: int, cursor: str | None, all_rows: bool) -> None:
    """List customers' CAs by name (a page; see --all)."""
    from .service import EXTERNAL_CA_KEY

    async def go(svc, rt):
        return await collect(svc.external.page, limit=limit, cursor=cursor, all_rows=all_rows, kinds=EXTERNAL_CA_KEY)

    rows, more = _call(ctx, go)
    for c in rows:
        click.echo(f"{c.name}\t{c.policy.value}\t{c.fingerprint_sha256}\t{c.cert.subject.rfc4514_string()}")
    say_more(more, len(rows))
