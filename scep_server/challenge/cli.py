"""`scep-server challenge ...` and `scep-server enrolment ...`."""
from __future__ import annotations

import contextlib
import json
import secrets
import sys
from typing import Any

import click

from ..clictx import Context, cli_actor, pass_ctx, secret_from
from ..clictx import run as _run
from trustkit.clipaging import collect, paging_options, say_more


def run(coro):
    """Run a command's coroutine; log lines go to stderr so that stdout stays parseable by scripts."""
    with contextlib.redirect_stdout(sys.stderr):
        return _run(coro)


@click.group()
def challenge() -> None:
    """Dynamic and delegated SCEP challenges."""


@challenge.command("new")
@click.argument("profile")
@click.option("--subject", help="RFC 4514 subject the certificate must get (as the profile's template issues "
              "it), e.g. 'CN=dev1,O=Example'.")
@click.option("--san", "sans", multiple=True, help="SAN the certificate must get (dns:, email:, ip:, uri:); "
              "repeatable. The certificate's SANs must be exactly these: the CSR's and an e-mail SAN for each "
              "subject emailAddress.")
@click.option("--json", "as_json", is_flag=True, help="Print {challenge, expires_at} as JSON.")
@pass_ctx
def challenge_new(ctx: Context, profile: str, subject: str | None, sans: tuple[str, ...], as_json: bool) -> None:
    """Create a one-time challenge for a dynamic PROFILE and print it."""
    from ..profiles import UnknownProfile
    from .config import ChallengeConfigError
    from ..runtime import Uses
    from .service import NotDynamic
    from .store import CacheFull, expectations_from

    payload: dict[str, Any] = {}
    if subject is not None:
        payload["subject"] = subject
    if sans:
        payload["sans"] = list(sans)
    try:
        expectations = expectations_from(payload)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

    async def go():
        async with ctx.runtime(Uses(challenge=True)) as rt:
            assert rt.challenges is not None
            return await rt.challenges.new_challenge(profile, source="cli", requested_by=cli_actor(),
                                                     expectations=expectations)

    try:
        issued = run(go())
    except (UnknownProfile, NotDynamic, ChallengeConfigError, CacheFull) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"challenge": issued.challenge, "expires_at": issued.expires_at.isoformat()}))
    else:
        click.echo(issued.challenge)


@challenge.command("configure")
@click.argument("profile")
@click.option("--username", help="Dynamic: HTTP Basic username of /scep/PROFILE/challenge.")
@click.option("--password", help="Dynamic: its password (default: a random one, printed once). Visible to other "
              "users of the host in the process list: prefer --password-file.")
@click.option("--password-file", type=click.File("r", encoding="utf-8"),
              help="Dynamic: a file holding its password on the first line (- : standard input).")
@click.option("--ttl-minutes", type=click.IntRange(1, 7 * 24 * 60), help="Dynamic: challenge lifetime (60).")
@click.option("--max-unused", type=click.IntRange(0, 1_000_000), help="Dynamic: cap of unused challenges (0: none).")
@click.option("--page-encoding", type=click.Choice(["utf-8", "utf-16le"]), help="Dynamic: NDES page encoding.")
@click.option("--provider", type=click.Choice(["intune", "webhook"]), help="Delegated: who validates.")
@click.option("--intune-tenant")
@click.option("--intune-client-id")
@click.option("--intune-secret-env", help="Environment variable holding the Entra app's client secret.")
@click.option("--intune-secret-file", help="File holding the Entra app's client secret.")
@click.option("--intune-authority-url", help="Token endpoint base (default https://login.microsoftonline.com).")
@click.option("--intune-graph-url", help="Microsoft Graph base (default https://graph.microsoft.com).")
@click.option("--intune-resource", help="Intune resource URI (default https://api.manage.microsoft.com/).")
@click.option("--webhook-url")
@click.option("--webhook-notify-url")
@click.option("--webhook-secret-env", help="Environment variable holding the HMAC secret.")
@click.option("--webhook-secret-file", help="File holding the HMAC secret.")
@click.option("--webhook-require-ack/--webhook-best-effort", default=None,
              help="Withdraw the certificate when the success notification fails.")
@click.option("--timeout", type=click.FloatRange(0.1, 120), help="Delegated: per-call timeout in seconds.")
@click.option("--retries", type=click.IntRange(0, 5), help="Delegated: retries after a failed call.")
@pass_ctx
def challenge_configure(ctx: Context, profile: str, **opts: Any) -> None:
    """Set the dynamic or delegated challenge settings of PROFILE (merged with the current ones)."""
    from trustkit.clock import utcnow
    opts["password"] = secret_from(opts["password"], opts.pop("password_file"), option="password")
    from ..profiles import ProfileError
    from ..runtime import Uses
    from .basic import hash_password
    from .config import ChallengeConfigError, validate_for

    async def go():
        async with ctx.runtime(Uses(challenge=True)) as rt:
            p = await rt.profiles.get(profile)
            current: dict[str, Any] = json.loads(json.dumps(p.settings.challenge))
            shown = None
            if p.challenge_kind == "dynamic":
                _reject_options(opts, prefix=("provider", "intune_", "webhook_", "timeout", "retries"),
                                kind="dynamic")
                if opts["username"] is not None or opts["password"] is not None:
                    username = opts["username"] or (current.get("credentials") or {}).get("username")
                    if not username:
                        raise click.UsageError("--username is required the first time")
                    password = opts["password"]
                    if password is None:
                        password = shown = secrets.token_urlsafe(18)
                    current["credentials"] = {"username": username, "password_hash": hash_password(
                        password, log2_n=rt.settings.challenge.scrypt_log2_n)}
                for key in ("ttl_minutes", "page_encoding"):
                    if opts[key] is not None:
                        current[key] = opts[key]
                if opts["max_unused"] is not None:
                    current["max_unused"] = opts["max_unused"] or None
            elif p.challenge_kind == "delegated":
                _reject_options(opts, prefix=("username", "password", "ttl_minutes", "max_unused", "page_encoding"),
                                kind="delegated")
                _merge_delegated(current, opts)
            else:
                raise click.ClickException(f"profile {profile!r} uses a static challenge; nothing to configure")
            validate_for(p.challenge_kind, current)
            settings = p.settings.model_copy(update={"challenge": current})
            await rt.profiles.update(profile, settings=settings, now=utcnow(), actor=cli_actor())
            return shown

    try:
        shown = run(go())
    except (ProfileError, ChallengeConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"profile {profile!r}: challenge settings updated")
    if shown:
        click.echo(f"password: {shown}")


def _reject_options(opts: dict[str, Any], *, prefix: tuple[str, ...], kind: str) -> None:
    bad = [k for k, v in opts.items() if v is not None and k.startswith(prefix)]
    if bad:
        raise click.UsageError(f"{', '.join('--' + b.replace('_', '-') for b in bad)} do not apply to a "
                               f"{kind} profile")


def _merge_delegated(current: dict[str, Any], opts: dict[str, Any]) -> None:
    if opts["provider"]:
        current["provider"] = opts["provider"]
    intune = {"tenant": opts["intune_tenant"], "client_id": opts["intune_client_id"],
              "authority_url": opts["intune_authority_url"], "graph_url": opts["intune_graph_url"],
              "intune_resource": opts["intune_resource"]}
    if opts["intune_secret_env"] or opts["intune_secret_file"]:
        intune["client_secret"] = {"env": opts["intune_secret_env"], "file": opts["intune_secret_file"]}
    webhook = {"url": opts["webhook_url"], "notify_url": opts["webhook_notify_url"],
               "require_success_ack": opts["webhook_require_ack"]}
    if opts["webhook_secret_env"] or opts["webhook_secret_file"]:
        webhook["secret"] = {"env": opts["webhook_secret_env"], "file": opts["webhook_secret_file"]}
    for name, values in (("intune", intune), ("webhook", webhook)):
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            current.setdefault(name, {}).update(given)
    provider = current.get("provider")
    if provider in ("intune", "webhook"):
        for key in ("timeout", "retries"):
            if opts[key] is not None:
                current.setdefault(provider, {})["timeout_seconds" if key == "timeout" else key] = opts[key]


@challenge.command("status")
@click.argument("profile")
@pass_ctx
def challenge_status(ctx: Context, profile: str) -> None:
    """Counts of unused, used and expired challenges of PROFILE."""
    from trustkit.clock import utcnow
    from ..runtime import Uses

    async def go():
        async with ctx.runtime(Uses(challenge=True)) as rt:
            assert rt.challenges is not None
            return await rt.challenges.store.counts(profile, now=utcnow())

    click.echo(json.dumps(run(go()), sort_keys=True))


# ---------------------------------------------------------------- pending enrolments


@click.group()
def enrolment() -> None:
    """Enrolments waiting for approval (profiles with --require-approval)."""


@enrolment.command("list")
@click.option("--profile")
@click.option("--state", type=click.Choice(["pending", "issued", "rejected", "all"]), default="pending",
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@paging_options
@pass_ctx
def enrolment_list(ctx: Context, profile: str | None, state: str, fmt: str, limit: int, cursor: str | None,
                   all_rows: bool) -> None:
    """List enrolments (pending ones by default), oldest first (a page; see --all)."""
    from ..runtime import Uses
    from .enrolments import ENROLMENT_KEY, page_enrolments

    async def go():
        async with ctx.runtime(Uses()) as rt:
            async def fetch(page):
                return await page_enrolments(rt.engine, page, state=None if state == "all" else state,
                                             profile=profile, now=rt.clock())
            return await collect(fetch, limit=limit, cursor=cursor, all_rows=all_rows, kinds=ENROLMENT_KEY)

    rows, more = run(go())
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['profile']}\t{r['transaction_id']}\t{r['state']}\t{r['created_at']}\t{r['subject']}"
                       + (f"\t{','.join(r['sans'])}" if r["sans"] else ""))
    say_more(more, len(rows))


def _decide(ctx: Context, profile: str, transaction_id: str, approve: bool, reason: str | None) -> str:
    from trustkit.problems import Conflict

    from ..enrolment import ApprovalRefused
    from ..profiles import UnknownProfile
    from ..runtime import Uses

    async def go():
        async with ctx.runtime(Uses.issuing(ctx.settings())) as rt:
            assert rt.scep is not None
            return await rt.scep.decide(profile, transaction_id, approve=approve, actor=cli_actor(), reason=reason)

    try:
        return run(go())
    except (UnknownProfile, LookupError, Conflict, ApprovalRefused) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None


@enrolment.command("approve")
@click.argument("profile")
@click.argument("transaction_id")
@pass_ctx
def enrolment_approve(ctx: Context, profile: str, transaction_id: str) -> None:
    """Issue the certificate of a pending enrolment; the device gets it at its next CertPoll."""
    serial = _decide(ctx, profile, transaction_id, True, None)
    click.echo(f"approved: certificate {serial} issued")


@enrolment.command("reject")
@click.argument("profile")
@click.argument("transaction_id")
@click.option("--reason", help="Sent to the device as failInfoText.")
@pass_ctx
def enrolment_reject(ctx: Context, profile: str, transaction_id: str, reason: str | None) -> None:
    """Reject a pending enrolment; the device's next CertPoll gets FAILURE."""
    _decide(ctx, profile, transaction_id, False, reason)
    click.echo("rejected")
