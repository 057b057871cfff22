"""`scep-server audit list|verify`: the audit trail on the command line."""
from __future__ import annotations

import json

import click

from ..clictx import Context, pass_ctx, run

from trustkit.clipaging import collect, paging_options, say_more


@click.group()
def audit() -> None:
    """The audit trail: who changed what, when."""


@audit.command("list")
@click.option("--kind", help="An event kind, or a prefix ending in '.' or '.*' (e.g. pki.cert.*).")
@click.option("--actor", help="Who: token:<id>:<name>, cli:<user>, attestation, scep:..., ...")
@click.option("--subject", help="What: a serial, a device id, a CA name ...")
@click.option("--since", help="From this time on (ISO 8601 with an offset, e.g. 2026-12-01T00:00:00Z).")
@click.option("--until", help="Before this time (ISO 8601 with an offset).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@paging_options
@pass_ctx
def audit_list(ctx: Context, kind: str | None, actor: str | None, subject: str | None, since: str | None,
               until: str | None, fmt: str, limit: int, cursor: str | None, all_rows: bool) -> None:
    """Events, newest first (a page; see --all)."""
    from trustkit.problems import BadRequest

    from . import service

    try:
        flt = service.filter_from(kind=kind, actor=actor, subject=subject, since=since, until=until)
    except BadRequest as exc:
        raise click.BadParameter(exc.detail) from None

    async def go():
        async with ctx.runtime() as rt:
            return await collect(lambda request: service.page(rt.engine, request, flt), limit=limit, cursor=cursor,
                                 all_rows=all_rows, kinds=service.EVENT_KEY)

    rows, more = run(go())
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        from .service import render_csv

        click.echo(render_csv(rows), nl=False)
    else:
        for r in rows:
            data = json.dumps(r["data"], sort_keys=True, separators=(",", ":"))
            click.echo(f"{r['id']}\t{r['at']}\t{r['kind']}\t{r['subject'] or '-'}\t{r['actor'] or '-'}\t{data}")
    say_more(more, len(rows))


@audit.command("verify")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_ctx
def audit_verify(ctx: Context, fmt: str) -> None:
    """Check the hash chain of the events ([audit] chain): exit 1 naming the first broken event."""
    from . import service

    async def go():
        async with ctx.runtime() as rt:
            return await service.verify(rt.engine)

    result = run(go())
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    elif not result.started:
        click.echo("the audit chain was never started ([audit] chain = false); nothing to verify")
    elif result.ok:
        click.echo(f"ok: {result.anchored} events anchored, {result.checked} links checked, "
                   f"head {result.head_seq} {result.head_hash}"
                   + (f"; {result.unsealed} events not sealed yet" if result.unsealed else ""))
    if not result.ok:
        if fmt != "json":
            where = f"first broken event: {result.broken_id}; " if result.broken_id is not None else ""
            click.echo(f"BROKEN: {where}{result.problem}", err=True)
        raise SystemExit(1)
