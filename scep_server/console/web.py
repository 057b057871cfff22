"""The admin console's pages at /admin/ (README "Console"): a sub-application over the admin API's services.

    GET  /admin/login, POST /admin/login       sign in with an admin API token (form)
    POST /admin/logout                         sign out (the session ends server-side)
    GET  /admin/                               dashboard: the CAs, their RA certificates and CRLs, readiness, charts
                                               of the last 7 days (console/dashboard.py)
    GET  /admin/certificates                   the inventory: filters and cursor pages (the API's query service)
    GET  /admin/certificates/{serial}          one certificate: subject, SANs, validity, binding, events
    GET|POST /admin/certificates/{serial}/{revoke|hold|release}   a confirmation form, then the change
    GET  /admin/enrolments                     pending (or decided) enrolments; GET /admin/enrolments/one shows one
                                               (CSR subject, SANs, key, transaction id); GET /admin/enrolments/confirm
                                               and POST /admin/enrolments/decide approve or reject it, with a reason
    GET  /admin/devices, /admin/devices/{id}   devices (status filter, pages), one device with its certificates
    GET|POST /admin/devices/{id}/{suspend|unsuspend|deactivate|reactivate|delete|remove-cert}   a confirmation
                                               form, the change
    GET  /admin/yubikeys                       the YubiKey report: every filter of `yubikey report`, counts per
                                               status (of the other filters), cursor pages; GET /admin/yubikeys.csv
                                               with the same query downloads exactly that page (render_csv)
    GET|POST /admin/yubikeys/import            a secrets file: "preview" (a dry run naming every bad line, nothing
                                               imported), then "import" (all or nothing): the admin chooses the
                                               file again and the form carries only the preview's SHA-256, so no
                                               secret goes into a page nor stays on the server between the steps
    GET|POST /admin/yubikeys/{serial}/{revoke|delete}   a confirmation form, the change (an ACTIVE key cannot be
                                               deleted: 409, as on the command line)
    /admin/profiles..., /admin/tokens...       SCEP profiles and API tokens (scep_server.console.profiles, .tokens)
    GET  /admin/otp-clients..., /admin/external-cas..., /admin/audit...   pages of their own modules (otpclients.py,
                                               externalcas.py, audit.py)
    GET  /admin/static/...                     the style sheet and the copy buttons' script

Every answer carries a strict Content-Security-Policy (no inline script or style), ``X-Frame-Options: DENY``,
``Referrer-Policy: same-origin`` (with no-referrer a browser posts forms with ``Origin: null``) and
``Cache-Control: no-store``. Anonymous requests to anything but the sign-in page and the style sheet are
redirected (303) to the sign-in page. Every POST but the sign-in carries the session's CSRF token (``csrf``
field), and no POST may come with another site's ``Origin``; otherwise 403. Changes go through the same services as
the API (``runtime.revocation``, ``runtime.otp``) with the token's principal as the actor (``token:<id>:<name>``).
"""
from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from yarl import URL

from trustkit import paging
from trustkit.problems import BadRequest, Conflict, DomainError, NotFound, PayloadTooLarge, Unprocessable
from trustkit.text import unstorable

from ..ca.inventory import CERT_KEY
from ..ca.queries import FILTERS, parse_filters, parse_serial
from ..ca.revocation import REASONS, parse_reason
from ..web.auth import token_principal
from ..web.errors import check_url_text
from . import profiles, tokens
from .dashboard import dashboard_context
from .model import Session, csrf_matches
from .pages import FORM, MULTIPART, PREFIX, SESSION, SESSION_ID, UPLOAD
from .pages import form as _form, otp as _otp, page as _page, redirect as _redirect, runtime as _runtime

HERE = Path(__file__).parent
COOKIE = "console_session"
MAX_FIELD_BYTES = 4096  # a text field of a multipart form (the CSRF token, a step, a digest)
MAX_PARTS = 16
IMPORT_PATH = PREFIX + "/yubikeys/import"  # a form posted as multipart/form-data
NEW_COOKIE = web.RequestKey("console_new_cookie", str)  # a session opened by the trusted header
PUBLIC = {"/admin/login"}  # besides the static files
ACTIONS = ("revoke", "hold", "release")
MAX_TOKEN_CHARS = 200
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "object-src 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def _peer(request: web.Request) -> str | None:
    """The TCP peer (not the address a proxy forwarded)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[0] if peer else None


def _in(address: str | None, cidrs: list[str]) -> bool:
    if not address or not cidrs:
        return False
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped
    return any(ip in ip_network(c, strict=False) for c in cidrs)


def is_https(request: web.Request) -> bool:
    """Whether the browser reached us over https: directly, or through a trusted proxy that says so."""
    if request.secure:
        return True
    server = _runtime(request).settings.server
    if not _in(_peer(request), server.trusted_proxies):
        return False
    if server.forwarded_header == "forwarded":
        forwarded = request.forwarded
        return bool(forwarded) and str(forwarded[-1].get("proto", "")).lower() == "https"
    proto = request.headers.get("X-Forwarded-Proto", "")
    return proto.rpartition(",")[2].strip().lower() == "https"


def same_origin(request: web.Request) -> bool:
    """Whether a POST comes from our own pages: no ``Origin`` (a client that is no browser), or ours (this
    request's scheme and Host, or `server.base_url`'s). A defence beside the CSRF token, and the one the
    sign-in form has (a page elsewhere cannot sign a browser into the attacker's session)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    own = f"{'https' if is_https(request) else 'http'}://{request.host}"
    base = URL(_runtime(request).settings.server.public_base_url())
    allowed = {own.lower()}
    if base.is_absolute():
        allowed.add(str(base.origin()).lower())
    return origin.strip().lower() in allowed


def _header_user(request: web.Request) -> str | None:
    """The user the trusted header names, when it comes from a trusted peer; None otherwise."""
    console = _runtime(request).settings.console
    if not console.trusted_header or not _in(_peer(request), console.trusted_header_networks):
        return None
    values = request.headers.getall(console.trusted_header, [])
    if len(values) != 1:
        return None
    user = values[0].strip()
    if not (0 < len(user) <= 200 and user.isprintable()):
        return None
    return user


def header_principal(user: str) -> str:
    return f"proxy:{user}"[:255]


def _set_cookie(request: web.Request, response: web.StreamResponse, session_id: str) -> None:
    response.set_cookie(COOKIE, session_id, path=PREFIX + "/", httponly=True, secure=is_https(request),
                        samesite="Strict")


async def _session(request: web.Request) -> tuple[str, Session] | None:
    """The request's live session (its token still enabled, its proxy user still the same), or None."""
    runtime = _runtime(request)
    sessions = runtime.console
    assert sessions is not None
    session_id = request.cookies.get(COOKIE)
    if session_id:
        found = await sessions.find(session_id)
        if found is not None:
            if found.token_id is not None:
                grant = await runtime.tokens.grant_of(found.token_id)
                live = grant is not None and grant.scope == "admin"
            else:
                user = _header_user(request)
                live = user is not None and header_principal(user) == found.principal
            if live:
                return session_id, found
            await sessions.end_digest(found.digest)
    user = _header_user(request)
    if user is not None:  # signed in by the authenticating proxy
        session_id = await sessions.open(principal=header_principal(user), token_id=None)
        request[NEW_COOKIE] = session_id
        found = await sessions.find(session_id)
        if found is not None:
            return session_id, found
    return None


def _error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    return _page(request, "error.jinja2", {"status": status, "title": title, "detail": detail}, status=status)


@web.middleware
async def console_middleware(request: web.Request, handler):
    """Sign-in, CSRF, HTML errors and the security headers of every answer under /admin/."""
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error_page(request, exc.status, exc.reason, exc.text if exc.status == 405 else "")
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except DomainError as exc:
        response = _error_page(request, exc.status, exc.title or "Error", exc.detail)
    for name, value in HEADERS.items():
        response.headers[name] = value
    if NEW_COOKIE in request:
        _set_cookie(request, response, request[NEW_COOKIE])
    return response


async def _guarded(request: web.Request, handler) -> web.StreamResponse:
    check_url_text(request)
    path = request.path
    if path.startswith(PREFIX + "/static/"):
        try:
            return await handler(request)
        except OSError:  # a name the file system refuses (too long, too deep): no such file
            raise web.HTTPNotFound() from None
    if path in PUBLIC:
        return await handler(request)
    found = await _session(request)
    if found is None:
        return _redirect(PREFIX + "/login")
    request[SESSION_ID], request[SESSION] = found
    if request.method not in ("GET", "HEAD"):
        if not same_origin(request):
            return _error_page(request, 403, "Forbidden", "this form was posted from another site")
        form = await read_form(request)
        given = form.get("csrf")
        if not csrf_matches(request[SESSION_ID], given if isinstance(given, str) else None):
            return _error_page(request, 403, "Forbidden", "the form's CSRF token is missing or not this session's; "
                                                          "reload the page and try again")
        request[FORM] = form
    return await handler(request)


async def read_form(request: web.Request) -> Any:
    """The POSTed form (application/x-www-form-urlencoded, what the pages send; multipart/form-data to the
    upload forms only: the YubiKey import and those in MULTIPART), or an empty one when the body is of another type or does not decode: then the CSRF token and the sign-in token are missing (403), never
    a 500."""
    from multidict import MultiDict

    if request.content_type == "multipart/form-data" and (request.path == IMPORT_PATH or request.path in MULTIPART):
        return await _read_multipart(request)
    if request.content_type != "application/x-www-form-urlencoded":
        return MultiDict()
    try:
        form = await request.post()
    except (ValueError, LookupError):  # a body that does not decode, a charset Python does not know
        return MultiDict()
    for name, value in form.items():  # a NUL or an unpaired surrogate (`%00`, `%ff`): no store holds it
        why = unstorable(name) or (unstorable(value) if isinstance(value, str) else None)
        if why is not None:
            raise BadRequest(f"{name if unstorable(name) is None else 'a field name'}: {why}")
    return form


async def _read_multipart(request: web.Request) -> Any:
    """A multipart form (the YubiKey import, or a form in MULTIPART): its text fields, and its file in
    ``request[UPLOAD]``, read within the API's bound on an import (``[otp] import_max_bytes``), or the form's own
    bound: 413 beyond it; an empty form when it does not parse."""
    from aiohttp import BodyPartReader
    from aiohttp.http_exceptions import HttpProcessingError
    from multidict import MultiDict

    otp = _runtime(request).otp
    limit = otp.settings.import_max_bytes if otp is not None else 0
    if request.path in MULTIPART:
        limit = MULTIPART[request.path](request)
    if request.content_length is not None and request.content_length > limit + MAX_PARTS * MAX_FIELD_BYTES:
        raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
    form: MultiDict = MultiDict()
    try:
        reader = await request.multipart()
        parts = 0
        async for part in reader:
            parts += 1
            if parts > MAX_PARTS or not isinstance(part, BodyPartReader):
                return MultiDict()
            is_file = part.filename is not None
            cap = limit if is_file else MAX_FIELD_BYTES
            data = bytearray()
            while chunk := await part.read_chunk(65536):
                data += chunk
                if len(data) > cap:
                    if is_file:
                        raise PayloadTooLarge(f"the file is larger than {limit} bytes")
                    return MultiDict()
            if is_file:
                if UPLOAD in request:
                    return MultiDict()  # one file only
                request[UPLOAD] = bytes(data)
            elif part.name:
                form.add(part.name, data.decode("utf-8"))
    except (ValueError, AssertionError, UnicodeDecodeError, HttpProcessingError):  # a body that is not multipart
        return MultiDict()
    return form


# --- sign-in ---------------------------------------------------------------------------------------------

async def login_page(request: web.Request) -> web.Response:
    found = await _session(request)
    if found is not None:
        return _redirect(PREFIX + "/")
    return _page(request, "login.jinja2", {"error": None,
                                           "header_signin": bool(_runtime(request).settings.console.trusted_header)})


async def login(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    if not same_origin(request):
        return _page(request, "login.jinja2", {"error": "This form was posted from another site.",
                                               "header_signin": False}, status=403)
    form = await read_form(request)
    token = form.get("token")
    granted = None
    if isinstance(token, str) and 0 < len(token.strip()) <= MAX_TOKEN_CHARS and token.strip().isascii():
        granted = await runtime.tokens.identify(token.strip())
    if granted is None or granted[0] != "admin":
        return _page(request, "login.jinja2", {"error": "That is not an enabled admin API token.",
                                               "header_signin": False}, status=403)
    old = request.cookies.get(COOKIE)
    if old:
        await runtime.console.end(old)
    _, token_id, name = granted
    session_id = await runtime.console.open(principal=token_principal(token_id, name), token_id=token_id)
    response = _redirect(PREFIX + "/")
    _set_cookie(request, response, session_id)
    return response


async def logout(request: web.Request) -> web.Response:
    await _runtime(request).console.end(request[SESSION_ID], actor=request[SESSION].principal)
    response = _redirect(PREFIX + "/login")
    response.del_cookie(COOKIE, path=PREFIX + "/")
    return response


# --- pages -----------------------------------------------------------------------------------------------

async def dashboard(request: web.Request) -> web.Response:
    return _page(request, "dashboard.jinja2", await dashboard_context(_runtime(request)))


async def certificates(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    values = {key: request.query.get(key, "") for key in FILTERS}
    error, rows, next_url = None, [], None
    try:
        filters = parse_filters(request.query)
        page_request = paging.page_request(request.query, CERT_KEY, default=50)
        page = await runtime.certificates.list(page_request, filters)
        rows = page.items
        next_url = paging.next_link(request.rel_url, page)
    except DomainError as exc:
        if exc.status != 400:
            raise
        error = exc.detail
    return _page(request, "certificates.jinja2", {"filters": values, "rows": rows, "next_url": next_url,
                                                  "error": error}, status=400 if error else 200)


async def certificate(request: web.Request) -> web.Response:
    from cryptography import x509

    from ..ca.keyinfo import describe

    serial = parse_serial(request.match_info["serial"])
    runtime = _runtime(request)
    detail = await runtime.certificates.show(serial)
    key = describe(x509.load_pem_x509_certificate(detail["pem"].encode("ascii")).public_key())
    return _page(request, "certificate.jinja2", {"cert": detail, "actions": _actions(detail["status"]), "key": key,
                                                 "devices": runtime.binding is not None})


def _actions(status: str) -> list[str]:
    return {"valid": ["revoke", "hold"], "hold": ["release", "revoke"]}.get(status, [])


def _action(request: web.Request) -> str:
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise web.HTTPNotFound()
    return action


async def confirm(request: web.Request) -> web.Response:
    action = _action(request)
    serial = parse_serial(request.match_info["serial"])
    detail = await _runtime(request).certificates.show(serial)
    return _page(request, "confirm.jinja2", {"cert": detail, "action": action,
                                             "reasons": list(REASONS)})


async def change(request: web.Request) -> web.Response:
    action = _action(request)
    serial = parse_serial(request.match_info["serial"])
    runtime = _runtime(request)
    actor = request[SESSION].principal
    if runtime.revocation is None:  # pragma: no cover - the server always opens it
        raise web.HTTPServiceUnavailable()
    if action == "revoke":
        given = _form(request).get("reason") or "unspecified"
        try:
            reason = parse_reason(given if isinstance(given, str) else "")
        except ValueError as exc:
            return _error_page(request, 400, "Bad Request", f"reason: {exc}")
        await runtime.revocation.revoke(serial, reason, actor=actor)
    elif action == "hold":
        await runtime.revocation.hold(serial, actor=actor)
    else:
        await runtime.revocation.release(serial, actor=actor)
    return _redirect(f"{PREFIX}/certificates/{serial}")


# --- pending enrolments (the challenge capability) -------------------------------------------------------

DECISIONS = ("approve", "reject")


def _enrolment_states() -> tuple[str, ...]:
    from ..challenge.service import ENROLMENT_STATES

    return (*ENROLMENT_STATES, "all")


def _challenges_on(request: web.Request) -> None:
    if _runtime(request).challenges is None:
        raise web.HTTPNotFound()  # [challenge] enabled = false: no pending enrolments here


def _enrolment_key(values: Any) -> tuple[str, str]:
    """(profile, transaction id) of a query or form; 400 unless both are short printable texts."""
    profile, txid = values.get("profile"), values.get("transaction_id")
    for name, value, cap in (("profile", profile, 64), ("transaction_id", txid, 255)):
        if not (isinstance(value, str) and 0 < len(value) <= cap and value.isprintable()):
            raise BadRequest(f"{name}: 1 to {cap} printable characters", code="invalid_input")
    return profile, txid


async def enrolment_list(request: web.Request) -> web.Response:
    from ..challenge.service import ENROLMENT_KEY, enrolments

    _challenges_on(request)
    state = request.query.get("state", "pending")
    profile = request.query.get("profile") or None
    error, rows, next_url = None, [], None
    try:
        if state not in _enrolment_states():
            raise BadRequest(f"state: one of {', '.join(_enrolment_states())}", code="invalid_input")
        if profile is not None and (len(profile) > 64 or not profile.isprintable()):
            raise BadRequest("profile: a profile name (at most 64 printable characters)", code="invalid_input")
        rt = _runtime(request)
        page = await enrolments(rt.engine, paging.page_request(request.query, ENROLMENT_KEY, default=50),
                                state=None if state == "all" else state, profile=profile, now=rt.clock())
        rows, next_url = page.items, paging.next_link(request.rel_url, page)
    except BadRequest as exc:
        error = exc.detail
    return _page(request, "enrolments.jinja2", {"state": state, "profile": profile or "", "rows": rows,
                                                "states": _enrolment_states(), "next_url": next_url,
                                                "error": error}, status=400 if error else 200)


async def _enrolment(request: web.Request, profile: str, txid: str) -> dict[str, Any]:
    from ..challenge.service import enrolment

    rt = _runtime(request)
    found = await enrolment(rt.engine, profile, txid, now=rt.clock())
    if found is None:
        raise NotFound(f"no enrolment {txid!r} on profile {profile!r}")
    return found


async def enrolment_page(request: web.Request) -> web.Response:
    """One enrolment: its request (subject, SANs, key), the requester's transaction id, its state."""
    _challenges_on(request)
    profile, txid = _enrolment_key(request.query)
    return _page(request, "enrolment.jinja2", {"e": await _enrolment(request, profile, txid)})


async def enrolment_confirm(request: web.Request) -> web.Response:
    _challenges_on(request)
    profile, txid = _enrolment_key(request.query)
    decision = request.query.get("decision")
    if decision not in DECISIONS:
        raise BadRequest("decision: approve or reject", code="invalid_input")
    found = await _enrolment(request, profile, txid)
    if found["state"] != "pending":
        raise Conflict(f"enrolment {txid!r} is {found['state']}, not pending")
    return _page(request, "enrolment_confirm.jinja2", {"profile": profile, "transaction_id": txid,
                                                       "decision": decision, "e": found})


async def enrolment_decide(request: web.Request) -> web.Response:
    from ..enrolment import ApprovalRefused
    from ..profiles import UnknownProfile

    _challenges_on(request)
    form = _form(request)
    profile, txid = _enrolment_key(form)
    decision = form.get("decision")
    if decision not in DECISIONS:
        raise BadRequest("decision: approve or reject", code="invalid_input")
    reason = form.get("reason")
    reason = reason[:500] if isinstance(reason, str) and reason.strip() else None
    scep = _runtime(request).scep
    assert scep is not None  # the server always opens it
    try:
        await scep.decide(profile, txid, approve=decision == "approve", actor=request[SESSION].principal,
                          reason=reason)
    except UnknownProfile as exc:
        raise NotFound(str(exc)) from None
    except ApprovalRefused as exc:
        raise Unprocessable(str(exc)) from None
    except LookupError as exc:  # no such pending enrolment
        raise NotFound(str(exc)) from None
    return _redirect(PREFIX + "/enrolments?state=all")


# --- devices (the binding capability) --------------------------------------------------------------------

def _devices(request: web.Request):
    from ..binding.service import services

    runtime = _runtime(request)
    if runtime.binding is None:
        raise web.HTTPNotFound()  # [binding] enabled = false: no devices here
    return services(runtime).devices


def _device_id(request: web.Request) -> str:
    from ..binding.service import is_device_id

    device_id = request.match_info["device_id"]
    if not is_device_id(device_id):
        raise BadRequest("device id: letters, digits and . _ : - (at most 64)", code="invalid_input")
    return device_id


REMOVE_CERT = "remove-cert"  # take the current certificate out of the device: never accepted again (ours revoked)


def _device_actions(status: str, has_current: bool) -> list[str]:
    actions = {"active": ["suspend", "deactivate", "delete"], "suspended": ["unsuspend", "deactivate", "delete"],
               "deactivated": ["reactivate", "delete"]}.get(status, [])
    return [*actions, REMOVE_CERT] if has_current and status != "deleted" else actions


async def device_list(request: web.Request) -> web.Response:
    from ..binding.service import DEVICE_KEY, DEVICE_STATUSES

    devices = _devices(request)
    status = request.query.get("status", "")
    error, rows, next_url = None, [], None
    try:
        if status and status not in DEVICE_STATUSES:
            raise BadRequest(f"status: one of {', '.join(DEVICE_STATUSES)}", code="invalid_input")
        page = await devices.page(paging.page_request(request.query, DEVICE_KEY, default=50), status=status or None)
        rows, next_url = [d.to_json() for d in page.items], paging.next_link(request.rel_url, page)
    except BadRequest as exc:
        error = exc.detail
    return _page(request, "devices.jinja2", {"status": status, "statuses": DEVICE_STATUSES, "rows": rows,
                                             "next_url": next_url, "error": error}, status=400 if error else 200)


async def device_page(request: web.Request) -> web.Response:
    devices = _devices(request)
    device_id = _device_id(request)
    device = (await devices.get(device_id)).to_json()
    bindings = [b.to_json() for b in await devices.bindings(device_id)]
    return _page(request, "device.jinja2", {
        "device": device, "bindings": bindings, "history": await devices.history(device_id),
        "actions": _device_actions(device["status"], any(b["current"] for b in bindings))})


def _device_action(request: web.Request) -> str:
    from ..binding.service import ACTIONS as DEVICE_ACTIONS

    action = request.match_info["action"]
    if action not in DEVICE_ACTIONS and action != REMOVE_CERT:
        raise web.HTTPNotFound()
    return action


async def device_confirm(request: web.Request) -> web.Response:
    devices = _devices(request)
    action = _device_action(request)
    device = (await devices.get(_device_id(request))).to_json()
    return _page(request, "device_confirm.jinja2", {"device": device, "action": action})


async def device_change(request: web.Request) -> web.Response:
    devices = _devices(request)
    action = _device_action(request)
    device_id = _device_id(request)
    reason = _form(request).get("reason")
    reason = reason[:1000] if isinstance(reason, str) and reason.strip() else None
    if action == REMOVE_CERT:  # as `scep-server device remove-cert` and DELETE /api/v1/devices/{id}/certificate
        await devices.remove_certificate(device_id, actor=request[SESSION].principal, reason=reason)
    else:
        await devices.transition(device_id, action, actor=request[SESSION].principal, reason=reason)
    return _redirect(f"{PREFIX}/devices/{device_id}")


# --- YubiKeys (the otp capability) -----------------------------------------------------------------------

KEY_ACTIONS = ("revoke", "delete")


def _report_values(request: web.Request) -> dict[str, str]:
    """The report's filters as the page's form shows them (every filter of `scep-server yubikey report`)."""
    from otp.report import DATE_FILTERS

    return {key: request.query.get(key, "") for key in ("status", "serial", "user", "public_id", *DATE_FILTERS,
                                                         "exclude_deleted")}


def _report_filter(values: dict[str, str]):
    from otp.report import ReportFilter

    exclude = values["exclude_deleted"]
    if exclude not in ("", "1", "on"):
        raise BadRequest("exclude_deleted: 1 or nothing", code="invalid_input")
    for name in ("user", "public_id"):
        if len(values[name]) > 255 or not values[name].isprintable():
            raise BadRequest(f"{name}: at most 255 printable characters", code="invalid_input")
    mapping = {k: v for k, v in values.items() if k != "exclude_deleted"}
    return ReportFilter.from_mapping({**mapping, "include_deleted": "0" if exclude else ""})


async def _report(request: web.Request):
    """(filter values, page, counts per status) of the report's query; a DomainError (400) on a bad value."""
    from otp.report import REPORT_KEY

    otp = _otp(request)
    values = _report_values(request)
    flt = _report_filter(values)
    page = await otp.report_page(flt, paging.page_request(request.query, REPORT_KEY, default=50), with_history=False)
    return values, flt, page


async def yubikeys(request: web.Request) -> web.Response:
    from otp.report import CSV_COLUMNS, STATUSES, csv_cells

    otp = _otp(request)
    values, error, rows, counts, next_url = _report_values(request), None, [], {}, None
    try:
        values, flt, page = await _report(request)
        counts = await otp.status_counts(flt)
        rows = [{"serial": r.serial, "status": r.status, "deleted": r.deleted, "cells": csv_cells(r)}
                for r in page.items]
        next_url = paging.next_link(request.rel_url, page)
    except DomainError as exc:
        if exc.status != 400:
            raise
        error = exc.detail
    csv_url = str(URL(PREFIX + "/yubikeys.csv").with_query(request.rel_url.query))
    return _page(request, "yubikeys.jinja2", {
        "filters": values, "statuses": STATUSES, "columns": CSV_COLUMNS, "rows": rows, "counts": counts,
        "next_url": next_url, "csv_url": csv_url, "error": error}, status=400 if error else 200)


async def yubikeys_csv(request: web.Request) -> web.Response:
    """Exactly the page the report shows (same filters, same cursor and limit), as spreadsheet-safe CSV."""
    from otp.report import render_csv

    _, _, page = await _report(request)
    return web.Response(text=render_csv(page.items), content_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="yubikeys.csv"'})


def _key_action(request: web.Request) -> tuple[str, int]:
    from otp.report import parse_serial

    action = request.match_info["action"]
    if action not in KEY_ACTIONS:
        raise web.HTTPNotFound()
    return action, parse_serial(request.match_info["serial"])


async def yubikey_confirm(request: web.Request) -> web.Response:
    from otp.report import ReportFilter, csv_cells

    otp = _otp(request)
    action, serial = _key_action(request)
    found = await otp.report(ReportFilter(serial=serial, include_deleted=False), with_history=False)
    if not found:
        raise NotFound(f"no YubiKey with serial {serial} in the inventory")
    key = found[0]
    return _page(request, "yubikey_confirm.jinja2", {"key": key, "action": action, "cells": csv_cells(key)})


async def yubikey_change(request: web.Request) -> web.Response:
    otp = _otp(request)
    action, serial = _key_action(request)
    actor = request[SESSION].principal
    if action == "revoke":
        await otp.revoke(serial, actor=actor)  # a Conflict (already revoked) becomes the error page
        return _redirect(f"{PREFIX}/yubikeys?serial={serial}")
    await otp.delete(serial, actor=actor)  # an ACTIVE key: Conflict (409), as on the command line
    return _redirect(f"{PREFIX}/yubikeys")


async def yubikey_import_page(request: web.Request) -> web.Response:
    _otp(request)
    return _page(request, "yubikey_import.jinja2", {"step": "choose", "result": None, "digest": None,
                                                    "error": None})


async def yubikey_import(request: web.Request) -> web.Response:
    """Preview (a dry run: every bad line named, nothing imported), then import (all or nothing).

    The import step takes the file again, chosen anew by the admin, and the digest of the previewed one: a
    secrets file never goes into a page nor stays on the server between the two steps."""
    import hashlib

    otp = _otp(request)
    form = _form(request)
    step = form.get("step")
    if step not in ("preview", "import"):
        raise BadRequest("step: preview or import", code="invalid_input")
    data = request.get(UPLOAD)
    if not data:
        return _page(request, "yubikey_import.jinja2", {"step": "choose", "result": None, "digest": None,
                                                        "error": "Choose a secrets file."}, status=400)
    digest = hashlib.sha256(data).hexdigest()
    if step == "import" and form.get("digest") != digest:
        return _page(request, "yubikey_import.jinja2", {
            "step": "choose", "result": None, "digest": None,
            "error": "That is not the file of the preview: preview the file you mean to import."}, status=400)
    result = await otp.import_secrets(data, dry_run=step == "preview", actor=request[SESSION].principal)
    return _page(request, "yubikey_import.jinja2", {"step": "imported" if step == "import" and result.ok else "preview",
                                                    "result": result, "digest": digest, "error": None},
                 status=200 if result.ok else 422)


def console_app() -> web.Application:
    app = web.Application(middlewares=[console_middleware])
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                               autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                               undefined=jinja2.StrictUndefined)
    env.globals["prefix"] = PREFIX
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", dashboard)
    app.router.add_get("/certificates", certificates)
    app.router.add_get("/certificates/{serial}", certificate)
    app.router.add_get("/certificates/{serial}/{action}", confirm)
    app.router.add_post("/certificates/{serial}/{action}", change)
    app.router.add_get("/enrolments", enrolment_list)
    app.router.add_get("/enrolments/one", enrolment_page)
    app.router.add_get("/enrolments/confirm", enrolment_confirm)
    app.router.add_post("/enrolments/decide", enrolment_decide)
    app.router.add_get("/devices", device_list)
    app.router.add_get("/devices/{device_id}", device_page)
    app.router.add_get("/devices/{device_id}/{action}", device_confirm)
    app.router.add_post("/devices/{device_id}/{action}", device_change)
    app.router.add_get("/yubikeys", yubikeys)
    app.router.add_get("/yubikeys.csv", yubikeys_csv)
    app.router.add_get("/yubikeys/import", yubikey_import_page)
    app.router.add_post("/yubikeys/import", yubikey_import)
    app.router.add_get("/yubikeys/{serial}/{action}", yubikey_confirm)
    app.router.add_post("/yubikeys/{serial}/{action}", yubikey_change)
    profiles.add_routes(app)  # /admin/profiles (scep_server.console.profiles)
    tokens.add_routes(app)  # /admin/tokens (scep_server.console.tokens)
    from . import audit, externalcas, otpclients  # pages of their own modules (which import this one)
    otpclients.add_routes(app)
    externalcas.add_routes(app)
    audit.add_routes(app)
    app.router.add_static("/static", HERE / "static", append_version=False)
    return app


def add_routes(app: web.Application) -> None:
    """Mount the console at /admin/ (with ``[console] enabled``)."""
    async def to_console(request: web.Request) -> web.Response:
        response = _redirect(PREFIX + "/")
        response.headers.update(HEADERS)
        return response

    app.router.add_get(PREFIX, to_console)
    app.add_subapp(PREFIX, console_app())
