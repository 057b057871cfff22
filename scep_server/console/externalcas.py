"""The console's external CAs page: customers' own CAs whose certificates the CRL checker judges
(`scep-server ca add-external|remove-external|list-external`, /api/v1/external-cas), through ``ExternalCas``:

    GET  /admin/external-cas                   every registered CA (a deployment registers a handful: one page)
                                               with this process's CRL checker's latest outcome for it; filters
                                               ``name`` (part of it, any case), ``policy``, ``state`` (the outcome)
    GET|POST /admin/external-cas/new           a form: name, policy and the CA certificate (a PEM or DER file, at
                                               most 32 KiB: 413 beyond); refused as the API refuses it (not a CA, no cRLSign, no
                                               CRL Distribution Point, a name or certificate already registered)
    GET|POST /admin/external-cas/remove?name=  a confirmation form, then the CA is unregistered: its certificates
                                               have an unknown issuer from then on (their devices are unmanaged)
    GET|POST /admin/external-cas/forget-crls?name=   a confirmation form saying when to use it, then the last good
                                               CRLs recorded for the CA are forgotten (ExternalCas.forget_crls, as by
                                               `ca forget-external-crls` and the API's .../{name}/forget-crls): the
                                               next valid CRL of each of its URLs is taken whatever its age or scope;
                                               the answer says how many URL records were forgotten

Adding, removing and forgetting the CRLs are ``pki.ca.add`` / ``pki.ca.remove`` / ``pki.ca.forget_crls`` events
whose actor is the session's principal.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web
from yarl import URL

from trustkit.problems import BadRequest, DomainError

from .pages import MULTIPART, PREFIX, SESSION, UPLOAD, form as _form, page as _page, redirect as _redirect, runtime as _runtime

MAX_CERT_BYTES = 32768  # the API's bound on a certificate
NEW_PATH = PREFIX + "/external-cas/new"

def _forget_refusals() -> tuple[str, ...]:
    """The checker's refusals that forgetting the recorded CRLs clears (crl.check.NEEDS_FORGET): rollback and
    scope_mismatch; the list points to the action from a CA whose last failure is one of them."""
    from crl.check import NEEDS_FORGET

    return tuple(kind.value for kind in NEEDS_FORGET)


def _external(request: web.Request):
    from ..binding.service import services

    runtime = _runtime(request)
    if runtime.binding is None:
        raise web.HTTPNotFound()  # [binding] enabled = false: no external CAs here
    return services(runtime).external


def _name(value: Any, what: str = "name") -> str:
    if not (isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable()):
        raise BadRequest(f"{what}: 1 to 64 printable characters", code="invalid_input")
    return value


def _filters(request: web.Request) -> dict[str, str]:
    from crl.config import Policy

    from ..binding.external import OUTCOME_STATES

    values = {key: request.query.get(key, "") for key in ("name", "policy", "state")}
    if values["name"]:
        _name(values["name"])
    if values["policy"] and values["policy"] not in [p.value for p in Policy]:
        raise BadRequest("policy: fail-closed or fail-open", code="invalid_input")
    if values["state"] and values["state"] not in OUTCOME_STATES:
        raise BadRequest(f"state: one of {', '.join(OUTCOME_STATES)}", code="invalid_input")
    return values


def _row(ca, outcome) -> dict[str, Any]:
    from ..binding.external import CheckerOutcome

    outcome = outcome or CheckerOutcome("not_loaded")
    return {**ca.to_json(), "not_after": ca.cert.not_valid_after_utc.isoformat(), "outcome": outcome}


async def external_list(request: web.Request) -> web.Response:
    from crl.config import Policy

    from ..binding.external import OUTCOME_STATES

    external = _external(request)
    values = {key: request.query.get(key, "") for key in ("name", "policy", "state")}
    error, rows = None, []
    try:
        values = _filters(request)
        outcomes = external.outcomes()
        rows = [_row(ca, outcomes.get(ca.name)) for ca in await external.list()]
        name = values["name"].casefold()
        rows = [r for r in rows if (not name or name in r["name"].casefold())
                and (not values["policy"] or r["policy"] == values["policy"])
                and (not values["state"] or r["outcome"].state == values["state"])]
    except BadRequest as exc:
        error = exc.detail
    return _page(request, "external_cas.jinja2", {
        "filters": values, "rows": rows, "policies": [p.value for p in Policy], "states": OUTCOME_STATES,
        "refusals": _forget_refusals(), "error": error}, status=400 if error else 200)


def _new_form(request: web.Request, *, error: str | None = None, name: str = "", policy: str = "fail-closed",
              status: int = 200) -> web.Response:
    from crl.config import Policy

    return _page(request, "external_ca_new.jinja2", {"error": error, "name": name, "policy": policy,
                                                     "policies": [p.value for p in Policy]}, status=status)


async def new_external_page(request: web.Request) -> web.Response:
    _external(request)
    return _new_form(request)


async def add_external(request: web.Request) -> web.Response:
    from crl.config import Policy

    from ..binding.external import load_certificate

    external = _external(request)
    form = _form(request)
    name, policy = form.get("name", ""), form.get("policy", "fail-closed")
    shown = name[:64] if isinstance(name, str) else ""
    try:
        name = _name(name)
        if policy not in [p.value for p in Policy]:
            raise BadRequest("policy: fail-closed or fail-open", code="invalid_input")
        data = request.get(UPLOAD)
        if not data:
            raise BadRequest("choose the CA certificate's file (PEM or DER)", code="invalid_input")
        runtime = _runtime(request)
        await external.add(name, load_certificate(data), policy=Policy(policy), actor=request[SESSION].principal,
                           now=runtime.clock())
    except DomainError as exc:  # not a certificate, refused by the checker's rules, already registered
        if exc.status != 400:
            raise
        return _new_form(request, error=exc.detail, name=shown, policy=policy if isinstance(policy, str) else "",
                         status=400)
    await external.reload()
    return _redirect(str(URL(PREFIX + "/external-cas").with_query(name=name)))


async def _registered(external, name: str):
    """The registered CA `name` (ExternalCaNotFound: 404)."""
    found = [ca for ca in await external.list() if ca.name == name]
    if not found:
        from ..binding.errors import ExternalCaNotFound

        raise ExternalCaNotFound(f"no external CA {name!r}")
    return found[0]


async def remove_confirm(request: web.Request) -> web.Response:
    external = _external(request)
    ca = await _registered(external, _name(request.query.get("name")))
    return _page(request, "external_ca_remove.jinja2", {"ca": ca.to_json()})


async def remove_external(request: web.Request) -> web.Response:
    external = _external(request)
    name = _name(_form(request).get("name"))
    await external.remove(name, actor=request[SESSION].principal, now=_runtime(request).clock())
    await external.reload()
    return _redirect(PREFIX + "/external-cas")


async def forget_confirm(request: web.Request) -> web.Response:
    external = _external(request)
    ca = await _registered(external, _name(request.query.get("name")))
    return _page(request, "external_ca_forget_crls.jinja2",
                 {"ca": _row(ca, external.outcomes().get(ca.name)), "refusals": _forget_refusals()})


async def forget_crls(request: web.Request) -> web.Response:
    """The API's forget-crls: the records deleted and the event written by ``ExternalCas.forget_crls``, then this
    process's checker reloaded (it takes the next valid CRL at once; the others within their reload interval)."""
    external = _external(request)
    name = _name(_form(request).get("name"))
    done = await external.forget_crls(name, actor=request[SESSION].principal, now=_runtime(request).clock())
    await external.reload()
    return _page(request, "external_ca_crls_forgotten.jinja2", {"name": done["name"], "forgotten": done["forgotten"]})


def add_routes(app: web.Application) -> None:
    MULTIPART[NEW_PATH] = lambda request: MAX_CERT_BYTES
    app.router.add_get("/external-cas", external_list)
    app.router.add_get("/external-cas/new", new_external_page)
    app.router.add_post("/external-cas/new", add_external)
    app.router.add_get("/external-cas/remove", remove_confirm)
    app.router.add_post("/external-cas/remove", remove_external)
    app.router.add_get("/external-cas/forget-crls", forget_confirm)
    app.router.add_post("/external-cas/forget-crls", forget_crls)
