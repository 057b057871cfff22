"""Admin API of the certificates and the CAs (`admin` token; docs/api.md).

    GET  /api/v1/certificates[?status=&profile=&device=&issued_after=&issued_before=&expires_after=
                              &expires_before=&serial_prefix=&limit=&cursor=]   newest first, paged
    GET  /api/v1/certificates/{serial}          the certificate, its PEM, CA, binding and events
    POST /api/v1/certificates/{serial}/revoke   {"reason"?, "invalidity_date"?}
    POST /api/v1/certificates/{serial}/hold     POST /api/v1/certificates/{serial}/release
    GET  /api/v1/cas[?limit=&cursor=]           our CAs, their RA certificates and CRLs

Status changes go through the one writer (`runtime.revocation`); the actor is the caller's token
(``token:<name>``). The CRL route of a CA (`POST /api/v1/cas/{ca}/crl/publish`) belongs to the CRL
capability (`scep_server.crlwiring.web`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from trustkit import paging
from trustkit.http import read_json_object
from trustkit.problems import BadRequest, ServiceUnavailable

from ..appkeys import RUNTIME
from ..ca.inventory import CERT_KEY
from ..ca.overview import CA_KEY, overview
from ..ca.queries import parse_filters, parse_serial, parse_time, summary
from ..ca.revocation import parse_reason
from .auth import ACTOR, requires

if TYPE_CHECKING:
    from ..runtime import Runtime


def _runtime(request: web.Request) -> "Runtime":
    return request.app[RUNTIME]


def _serial(request: web.Request) -> str:
    return parse_serial(request.match_info["serial"])


def _revocation(request: web.Request):
    service = _runtime(request).revocation
    if service is None:  # pragma: no cover - the server always opens it (Uses.server)
        raise ServiceUnavailable("certificate status changes are not available in this process")
    return service


async def _body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """An optional JSON object with only the keys `allowed`, each a string (or null)."""
    body = await read_json_object(request, empty={})
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown member {unknown[0]!r}; allowed: {', '.join(allowed) or 'none'}",
                         code="invalid_input")
    for key, value in body.items():
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= 64):
            raise BadRequest(f"{key}: a string of 1 to 64 characters", code="invalid_input")
    return body


@requires("admin")
async def list_certificates(request: web.Request) -> web.Response:
    filters = parse_filters(request.query)
    page_request = paging.page_request(request.query, CERT_KEY)
    page = await _runtime(request).certificates.list(page_request, filters)
    body, headers = paging.page_body("certificates", [summary(r) for r in page.items], page, request.rel_url)
    return web.json_response(body, headers=headers)


@requires("admin")
async def show_certificate(request: web.Request) -> web.Response:
    return web.json_response(await _runtime(request).certificates.show(_serial(request)))


@requires("admin")
async def revoke(request: web.Request) -> web.Response:
    serial = _serial(request)
    body = await _body(request, ("reason", "invalidity_date"))
    try:
        reason = parse_reason(body.get("reason") or "unspecified")
    except ValueError as exc:
        raise BadRequest(f"reason: {exc}", code="invalid_input") from None
    invalidity = None
    if body.get("invalidity_date") is not None:
        invalidity = parse_time(body["invalidity_date"], "invalidity_date")
        if invalidity > _runtime(request).clock():
            raise BadRequest("invalidity_date: a time in the past (when the key is known or suspected "
                             "to have been compromised)", code="invalid_input")
    record = await _revocation(request).revoke(serial, reason, actor=request[ACTOR], invalidity_date=invalidity)
    return web.json_response(summary(record))


@requires("admin")
async def hold(request: web.Request) -> web.Response:
    serial = _serial(request)
    await _body(request, ())
    return web.json_response(summary(await _revocation(request).hold(serial, actor=request[ACTOR])))


@requires("admin")
async def release(request: web.Request) -> web.Response:
    serial = _serial(request)
    await _body(request, ())
    return web.json_response(summary(await _revocation(request).release(serial, actor=request[ACTOR])))


@requires("admin")
async def list_cas(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    page_request = paging.page_request(request.query, CA_KEY)
    names = sorted(runtime.cas)
    if page_request.after is not None:
        names = [n for n in names if n > page_request.after[0]]
    page = paging.take(names[:page_request.limit + 1], page_request.limit, key=lambda n: (n,))
    items = await overview(runtime.cas, runtime.crl, names=page.items)
    body, headers = paging.page_body("cas", items, page, request.rel_url)
    return web.json_response(body, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/certificates", list_certificates)
    app.router.add_get("/api/v1/certificates/{serial}", show_certificate)
    app.router.add_post("/api/v1/certificates/{serial}/revoke", revoke)
    app.router.add_post("/api/v1/certificates/{serial}/hold", hold)
    app.router.add_post("/api/v1/certificates/{serial}/release", release)
    app.router.add_get("/api/v1/cas", list_cas)
