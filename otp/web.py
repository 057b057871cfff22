"""HTTP surface of the OTP factor: protocol 2.0 `/wsapi/2.0/verify`, the sign-in API and admin JSON.

Handlers parse, call `OtpService`, render. `/api/v1/*` handlers need a bearer token of a scope
("signin" or "admin"): the host application passes an `authenticate` callable that maps a token to
its scope and the caller's name, and these routes check it themselves with `trustkit.http.bearer_caller`
(without one, the handlers only carry `required_scope` for the host's own middleware). `/wsapi/2.0/verify`
authenticates with the protocol's client id and HMAC. API errors are raised `trustkit.problems.DomainError`s
answered as problem+json documents (RFC 9457) by `trustkit.http.error_response` (docs/api.md "Errors").
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from trustkit.http import Authenticate, bearer_caller, error_response, read_json_object, text_errors, unavailable
from trustkit.paging import page_body, page_request
from trustkit.problems import PROBLEM_JSON, DomainError, Unprocessable

from .errors import InvalidInput, NotFound, PayloadTooLarge
from .report import FORMATS, REPORT_KEY, ReportFilter, parse_number, parse_serial, render_csv
from .service import CLIENT_LIST_KEY, MAX_CLIENT_ID, OtpService
from .yubico import parse_params

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# request -> the client's address, for throttling and security events.
ClientAddress = Callable[[web.Request], "str | None"]

REALM = "otp"  # the realm of the bearer challenge unless the application names its own
# The application's authentication middleware stores who is calling (e.g. the token's name) here.
ACTOR_KEY = web.RequestKey("actor", str)
WSAPI_MAX_BODY = 8192  # a verify request is a few hundred bytes


def requires_scope(scope: str | None) -> Callable[[Handler], Handler]:
    """Mark a handler with the bearer-token scope the application's middleware must enforce."""
    def mark(handler: Handler) -> Handler:
        handler.required_scope = scope  # type: ignore[attr-defined]
        return handler
    return mark


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The request body up to `limit` bytes (streamed: the app's client_max_size does not apply)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload(request: web.Request, limit: int) -> bytes:
    """A secrets file: the raw body, or the first file part of a multipart/form-data upload."""
    if request.content_type == "multipart/form-data":
        try:
            reader = await request.multipart()
            async for part in reader:
                if isinstance(part, BodyPartReader) and (part.filename or part.name in ("file", "secrets")):
                    data = bytearray()
                    while chunk := await part.read_chunk(65536):
                        data += chunk
                        if len(data) > limit:
                            raise PayloadTooLarge(f"the file is larger than {limit} bytes")
                    return bytes(data)
        except (ValueError, AssertionError, HttpProcessingError) as exc:  # a body that is not multipart (a part
            # header line that does not parse is aiohttp's InvalidHeader)
            raise InvalidInput(f"the multipart body does not parse: {str(exc)[:200]}") from None
        raise InvalidInput("the multipart body has no file part")
    return await _read_limited(request, limit)


def _flag(name: str, value: str | None) -> bool:
    """A yes/no query parameter (absent: no); InvalidInput for any other spelling, so that a typo in `dry_run`
    never does what was not asked."""
    if value is None or value.lower() in ("0", "false", "no", "off"):
        return False
    if value.lower() in ("1", "true", "yes", "on", ""):
        return True
    raise InvalidInput(f"{name} must be 1, true, yes or on (or 0, false, no or off)")


def _actor(request: web.Request) -> str | None:
    """Who is calling, as the application's authentication recorded it (`request[ACTOR_KEY]`), for the audit trail."""
    actor = request.get(ACTOR_KEY)
    return str(actor) if actor is not None else None


def peer_address(request: web.Request) -> str | None:
    """The address of the TCP peer (the default `ClientAddress`)."""
    return request.remote


class _Routes:
    def __init__(self, service: OtpService | Callable[[web.Request], OtpService],
                 client_address: ClientAddress = peer_address) -> None:
        self._service: Callable[[web.Request], OtpService] = (
            (lambda _request: service) if isinstance(service, OtpService) else service)
        self._address = client_address

    @requires_scope(None)
    @text_errors
    async def wsapi_verify(self, request: web.Request) -> web.StreamResponse:
        """Validation protocol 2.0 verify (GET, or POST form); always 200 text/plain, signed."""
        params = {}
        if request.method == "POST":
            try:
                body = await _read_limited(request, WSAPI_MAX_BODY)  # every chunk, not one read()
            except PayloadTooLarge:
                return web.Response(status=413, text="request too large\n")
            params = parse_params(body.decode("utf-8", "replace").strip())
        # The raw query: aiohttp's decoded view turns a `+` of the base64 signature into a space.
        params.update(parse_params(request.rel_url.raw_query_string))
        text = await self._service(request).verify_protocol(params, source=self._address(request))
        return web.Response(text=text, content_type="text/plain")

    @requires_scope("signin")
    async def otp_verify(self, request: web.Request) -> web.StreamResponse:
        """Sign-in API: {"user", "otp"} -> status, reason, key serial, whether this use enrolled the key."""
        data = await read_json_object(request)
        outcome = await self._service(request).verify_signin(data.get("user"), data.get("otp"),
                                                             source=self._address(request), caller=_actor(request))
        if outcome.ok:
            return web.json_response(outcome.to_json())
        body = outcome.to_json()
        detail = body.pop("detail")
        body["result"] = body.pop("status")  # "status" of a problem document is the HTTP status (RFC 9457)
        status = outcome.reason.http_status
        raise DomainError(detail, status=status, code=outcome.reason.value,
                          title="OTP rejected" if status == 403 else None, **body)

    @requires_scope("admin")
    async def import_keys(self, request: web.Request) -> web.StreamResponse:
        """Import a secrets file (CSV body or multipart upload); `?dry_run=1` validates only."""
        dry_run = _flag("dry_run", request.query.get("dry_run"))
        data = await _upload(request, self._service(request).settings.import_max_bytes)
        result = await self._service(request).import_secrets(data, dry_run=dry_run, actor=_actor(request))
        if not result.ok:
            n = result.errors_total
            listed = f" (the first {len(result.errors)} by line are listed)" if n > len(result.errors) else ""
            raise Unprocessable(f"{n} problem{'s' if n != 1 else ''} in the file{listed}; nothing was imported",
                                code="import_rejected", **result.to_json())
        return web.json_response(result.to_json(), status=200 if dry_run else 201)

    @requires_scope("admin")
    async def report(self, request: web.Request) -> web.StreamResponse:
        """A page of the YubiKey report with filters; `?format=json` (default, with history) or `csv`.

        Both formats page alike (docs/otp.md "Key report"): the JSON carries `next_cursor` and `next`, and
        both carry the `Link: <next>; rel="next"` header; a CSV page repeats the header row."""
        fmt = request.query.get("format", "json")
        if fmt not in FORMATS or fmt == "table":
            raise InvalidInput("format must be json or csv")
        flt = ReportFilter.from_mapping({k: v for k, v in request.query.items() if k not in ("limit", "cursor")})
        with_history = request.query.get("history", "1").lower() not in ("0", "false", "no")
        page = await self._service(request).report_page(flt, page_request(request.query, REPORT_KEY),
                                                        with_history=with_history and fmt == "json")
        items = [r.to_json(with_history) for r in page.items] if fmt == "json" else []
        body, headers = page_body("keys", items, page, request.rel_url)
        if fmt == "csv":
            return web.Response(text=render_csv(page.items), content_type="text/csv",
                                headers={"Content-Disposition": 'attachment; filename="yubikeys.csv"', **headers})
        return web.json_response({"count": len(items), **body}, headers=headers)

    @requires_scope("admin")
    async def revoke(self, request: web.Request) -> web.StreamResponse:
        """Revoke a key by serial (lost or stolen)."""
        row = await self._service(request).revoke(parse_serial(request.match_info["serial"]), actor=_actor(request))
        return web.json_response(row.to_json())

    @requires_scope("admin")
    async def delete(self, request: web.Request) -> web.StreamResponse:
        """Delete an unassigned or revoked key by serial; an ACTIVE key is refused (409)."""
        serial = parse_serial(request.match_info["serial"])
        before = await self._service(request).delete(serial, actor=_actor(request))
        return web.json_response({"serial": str(serial), "deleted": True, "status_before": before})

    @requires_scope("admin")
    async def delete_factor(self, request: web.Request) -> web.StreamResponse:
        """Delete the YubiKey OTP factor: every OTP-mode key (cannot be undone). The body must be
        ``{"confirm": true}``, as the command line asks for confirmation."""
        data = await read_json_object(request, empty={})
        if data.get("confirm") is not True:
            raise InvalidInput('deleting the YubiKey OTP factor cannot be undone: send {"confirm": true}')
        counts = await self._service(request).delete_factor(actor=_actor(request))
        return web.json_response(counts)

    @requires_scope("admin")
    async def add_client(self, request: web.Request) -> web.StreamResponse:
        """Create a protocol 2.0 client; the base64 `api_key` is returned only here."""
        data = await read_json_object(request, empty={})
        name = data.get("name", "")
        if not isinstance(name, str):
            raise InvalidInput("name must be a string")
        allow_unsigned = data.get("allow_unsigned", False)
        if not isinstance(allow_unsigned, bool):
            raise InvalidInput("allow_unsigned must be true or false")
        info, key = await self._service(request).add_client(name, allow_unsigned=allow_unsigned,
                                                                 actor=_actor(request))
        return web.json_response({**info.to_json(), "api_key": key}, status=201,
                                 headers={"Cache-Control": "no-store"})  # the key: shown once, kept by no cache

    @requires_scope("admin")
    async def change_client(self, request: web.Request) -> web.StreamResponse:
        """{"allow_unsigned": bool}: whether a legacy client may send requests without `h`."""
        client_id = _client_id(request)
        data = await read_json_object(request)
        if set(data) != {"allow_unsigned"}:
            raise InvalidInput("the body must be {\"allow_unsigned\": true|false}")
        return web.json_response((await self._service(request).set_client_unsigned(
            client_id, data["allow_unsigned"], actor=_actor(request))).to_json())

    @requires_scope("admin")
    async def list_clients(self, request: web.Request) -> web.StreamResponse:
        """A page of the protocol 2.0 clients by id (docs/api.md "Pagination")."""
        page = await self._service(request).list_clients(page_request(request.query, CLIENT_LIST_KEY))
        body, headers = page_body("clients", [c.to_json() for c in page.items], page, request.rel_url)
        return web.json_response(body, headers=headers)

    @requires_scope("admin")
    async def disable_client(self, request: web.Request) -> web.StreamResponse:
        client_id = _client_id(request)
        return web.json_response((await self._service(request).disable_client(client_id, actor=_actor(request))).to_json())


def _client_id(request: web.Request) -> int:
    client_id = parse_number(request.match_info["id"], "client id")
    if client_id > MAX_CLIENT_ID:
        raise NotFound(f"no OTP client with id {client_id}")
    return client_id


def _bind(method: Any, authenticate: Authenticate | None = None, realm: str = REALM) -> Handler:
    """A plain function for a bound handler. With `authenticate`, it checks the bearer token itself;
    without, it keeps `required_scope` visible to the host application's middleware. A raised
    `DomainError`, an unavailable store and an unreadable body are answered here (as the application's
    error middleware would), so that the routes answer alike on their own and mounted."""
    scope = getattr(method, "required_scope", None)
    text = getattr(method, "text_errors", False)

    @functools.wraps(method)
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            if authenticate is not None and scope is not None:
                request[ACTOR_KEY] = await bearer_caller(request, scope, authenticate, realm=realm)
            return await method(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            answer = error_response(exc, text=text)
            if answer is None:
                raise
            if not isinstance(exc, DomainError) and unavailable(exc):
                log.error("otp.api.backend_error", exc_info=exc)
            return answer
    handler.required_scope = scope if authenticate is None else None  # type: ignore[attr-defined]
    if text:
        text_errors(handler)
    return handler


def add_routes(app: web.Application, service: OtpService | Callable[[web.Request], OtpService], *,
               authenticate: Authenticate | None = None, realm: str = REALM,
               client_address: ClientAddress = peer_address) -> None:
    """Add the OTP routes to `app` (the application owns the service's lifetime).

    `service` is the service, or a function of the request returning it. `authenticate` checks the
    bearer tokens of the `/api/v1/*` routes (see `trustkit.http.Authenticate`), `realm` names them in the
    challenge of a 401; `client_address` says where a
    request comes from (default: the TCP peer)."""
    r = _Routes(service, client_address)

    bind = functools.partial(_bind, authenticate=authenticate, realm=realm)
    wsapi = bind(r.wsapi_verify)
    app.router.add_route("GET", "/wsapi/2.0/verify", wsapi)
    app.router.add_route("POST", "/wsapi/2.0/verify", wsapi)
    app.router.add_route("POST", "/api/v1/otp/verify", bind(r.otp_verify))
    app.router.add_route("POST", "/api/v1/yubikeys/import", bind(r.import_keys))
    app.router.add_route("GET", "/api/v1/yubikeys", bind(r.report))
    app.router.add_route("POST", "/api/v1/yubikeys/{serial}/revoke", bind(r.revoke))
    app.router.add_route("POST", "/api/v1/yubikeys/delete-factor", bind(r.delete_factor))
    app.router.add_route("DELETE", "/api/v1/yubikeys/{serial}", bind(r.delete))
    app.router.add_route("POST", "/api/v1/otp-clients", bind(r.add_client))
    app.router.add_route("GET", "/api/v1/otp-clients", bind(r.list_clients))
    app.router.add_route("PATCH", "/api/v1/otp-clients/{id}", bind(r.change_client))
    app.router.add_route("POST", "/api/v1/otp-clients/{id}/disable", bind(r.disable_client))


__all__ = ["ACTOR_KEY", "PROBLEM_JSON", "REALM", "Authenticate", "ClientAddress", "add_routes", "peer_address",
           "requires_scope"]
