"""HTTP surface of the OTP factor: protocol 2.0 `/wsapi/2.0/verify`, the sign-in API and admin JSON.

Handlers parse, call `OtpService`, render. `/api/v1/*` handlers need a bearer token of a scope
("signin" or "admin"): the host application passes an `authenticate` callable that maps a token to
its scope and the caller's name, and these routes check it themselves (without one, the handlers
only carry `required_scope` for the host's own middleware). `/wsapi/2.0/verify` authenticates with
the protocol's client id and HMAC. Admin errors are `application/problem+json` (RFC 9457) with a
`detail`.
"""
from __future__ import annotations

import functools
import json
import logging
from http import HTTPStatus
from typing import Any, Awaitable, Callable

from aiohttp import BodyPartReader, web

from .errors import InvalidInput, NotFound, OtpError, PayloadTooLarge
from .report import FORMATS, ReportFilter, parse_number, parse_serial, render_csv, render_json
from .service import MAX_CLIENT_ID, OtpService
from .store import BACKEND_ERRORS
from .yubico import parse_params

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (request, bearer token) -> (scope, actor) for a valid token, None for an unknown or disabled one.
Authenticate = Callable[[web.Request, str], Awaitable["tuple[str, str] | None"]]
# request -> the client's address, for throttling and security events.
ClientAddress = Callable[[web.Request], "str | None"]

PROBLEM_JSON = "application/problem+json"
# The application's authentication middleware stores who is calling (e.g. the token's name) here.
ACTOR_KEY = web.RequestKey("actor", str)
WSAPI_MAX_BODY = 8192  # a verify request is a few hundred bytes


def requires_scope(scope: str | None) -> Callable[[Handler], Handler]:
    """Mark a handler with the bearer-token scope the application's middleware must enforce."""
    def mark(handler: Handler) -> Handler:
        handler.required_scope = scope  # type: ignore[attr-defined]
        return handler
    return mark


def problem(status: int, detail: str, *, title: str | None = None, headers: dict[str, str] | None = None,
            **extra: Any) -> web.Response:
    """An RFC 9457 problem document."""
    body: dict[str, Any] = {"type": "about:blank", "title": title or HTTPStatus(status).phrase, "status": status,
                            "detail": detail}
    body.update(extra)
    return web.json_response(body, status=status, content_type=PROBLEM_JSON, headers=headers)


def _api(handler: Callable[..., Awaitable[web.StreamResponse]]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Map the service's typed failures to problem documents; never a 500 for client input."""
    @functools.wraps(handler)
    async def wrapped(*args: Any) -> web.StreamResponse:
        try:
            return await handler(*args)
        except OtpError as exc:
            return problem(exc.status, exc.detail, code=exc.code, **exc.extra)
        except BACKEND_ERRORS as exc:
            log.error("otp.api.backend_error", exc_info=exc)
            return problem(503, "the key store is unavailable", code="backend_error")
    return wrapped


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidInput("the body repeats a key in one object")
    return obj


def _no_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not JSON")


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """One JSON object without a repeated key, whose top-level strings carry no NUL or unpaired surrogate
    (neither can be stored); anything else, a nesting bomb included, is an InvalidInput (400)."""
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        data = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and the integer digit limit are ValueErrors
        raise InvalidInput("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    for text in (t for item in data.items() for t in item if isinstance(t, str)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("a string contains an unpaired surrogate") from None
        if "\x00" in text:
            raise InvalidInput("a string contains a NUL character")
    return data


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
        except (ValueError, AssertionError) as exc:  # aiohttp's multipart reader on a body that is not multipart
            raise InvalidInput(f"the multipart body does not parse: {str(exc)[:200]}") from None
        raise InvalidInput("the multipart body has no file part")
    return await _read_limited(request, limit)


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on", "")


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
    @_api
    async def otp_verify(self, request: web.Request) -> web.StreamResponse:
        """Sign-in API: {"user", "otp"} -> status, reason, key serial, whether this use enrolled the key."""
        data = await _json_object(request)
        outcome = await self._service(request).verify_signin(data.get("user"), data.get("otp"),
                                                             source=self._address(request), caller=_actor(request))
        if outcome.ok:
            return web.json_response(outcome.to_json())
        body = outcome.to_json()
        detail = body.pop("detail")
        body["result"] = body.pop("status")  # "status" of a problem document is the HTTP status (RFC 9457)
        return problem(outcome.reason.http_status, detail, title="OTP rejected" if outcome.reason.http_status == 403
                       else None, **body)

    @requires_scope("admin")
    @_api
    async def import_keys(self, request: web.Request) -> web.StreamResponse:
        """Import a secrets file (CSV body or multipart upload); `?dry_run=1` validates only."""
        dry_run = _flag(request.query.get("dry_run")) if "dry_run" in request.query else False
        data = await _upload(request, self._service(request).settings.import_max_bytes)
        result = await self._service(request).import_secrets(data, dry_run=dry_run, actor=_actor(request))
        if not result.ok:
            n = len(result.errors)
            return problem(422, f"{n} problem{'s' if n != 1 else ''} in the file; nothing was imported",
                           code="import_rejected", **result.to_json())
        return web.json_response(result.to_json(), status=200 if dry_run else 201)

    @requires_scope("admin")
    @_api
    async def report(self, request: web.Request) -> web.StreamResponse:
        """The YubiKey report with filters; `?format=json` (default, with history) or `csv`."""
        fmt = request.query.get("format", "json")
        if fmt not in FORMATS or fmt == "table":
            raise InvalidInput("format must be json or csv")
        flt = ReportFilter.from_mapping(request.query)
        with_history = request.query.get("history", "1").lower() not in ("0", "false", "no")
        rows = await self._service(request).report(flt, with_history=with_history and fmt == "json")
        if fmt == "csv":
            return web.Response(text=render_csv(rows), content_type="text/csv",
                                headers={"Content-Disposition": 'attachment; filename="yubikeys.csv"'})
        return web.Response(text=render_json(rows, with_history), content_type="application/json")

    @requires_scope("admin")
    @_api
    async def revoke(self, request: web.Request) -> web.StreamResponse:
        """Revoke a key by serial (lost or stolen)."""
        row = await self._service(request).revoke(parse_serial(request.match_info["serial"]), actor=_actor(request))
        return web.json_response(row.to_json())

    @requires_scope("admin")
    @_api
    async def delete(self, request: web.Request) -> web.StreamResponse:
        """Delete an unassigned or revoked key by serial; an ACTIVE key is refused (409)."""
        serial = parse_serial(request.match_info["serial"])
        before = await self._service(request).delete(serial, actor=_actor(request))
        return web.json_response({"serial": str(serial), "deleted": True, "status_before": before})

    @requires_scope("admin")
    @_api
    async def add_client(self, request: web.Request) -> web.StreamResponse:
        """Create a protocol 2.0 client; the base64 `api_key` is returned only here."""
        data = await _json_object(request, optional=True)
        name = data.get("name", "")
        if not isinstance(name, str):
            raise InvalidInput("name must be a string")
        allow_unsigned = data.get("allow_unsigned", False)
        if not isinstance(allow_unsigned, bool):
            raise InvalidInput("allow_unsigned must be true or false")
        info, key = await self._service(request).add_client(name, allow_unsigned=allow_unsigned)
        return web.json_response({**info.to_json(), "api_key": key}, status=201)

    @requires_scope("admin")
    @_api
    async def change_client(self, request: web.Request) -> web.StreamResponse:
        """{"allow_unsigned": bool}: whether a legacy client may send requests without `h`."""
        client_id = _client_id(request)
        data = await _json_object(request)
        if set(data) != {"allow_unsigned"}:
            raise InvalidInput("the body must be {\"allow_unsigned\": true|false}")
        return web.json_response((await self._service(request).set_client_unsigned(
            client_id, data["allow_unsigned"])).to_json())

    @requires_scope("admin")
    @_api
    async def list_clients(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"clients": [c.to_json() for c in await self._service(request).list_clients()]})

    @requires_scope("admin")
    @_api
    async def disable_client(self, request: web.Request) -> web.StreamResponse:
        client_id = _client_id(request)
        return web.json_response((await self._service(request).disable_client(client_id)).to_json())


def _client_id(request: web.Request) -> int:
    client_id = parse_number(request.match_info["id"], "client id")
    if client_id > MAX_CLIENT_ID:
        raise NotFound(f"no OTP client with id {client_id}")
    return client_id


async def _check_bearer(request: web.Request, scope: str, authenticate: Authenticate) -> web.Response | None:
    """None when the request carries a token of `scope` (the caller is then in `request[ACTOR_KEY]`),
    else the 401/403 problem to answer."""
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": f'Bearer realm="otp", scope="{scope}"'}
    token = token.strip()
    if kind.lower() != "bearer" or not token:
        return problem(401, f"a bearer token with scope {scope!r} is required", headers=challenge)
    try:
        granted = await authenticate(request, token)
    except BACKEND_ERRORS as exc:
        log.error("otp.api.auth_backend_error", exc_info=exc)
        return problem(503, "the token store is unavailable", code="backend_error")
    if granted is None:
        return problem(401, "unknown or disabled token", headers=challenge)
    granted_scope, actor = granted
    if granted_scope != scope:
        return problem(403, f"this endpoint needs a token with scope {scope!r}, not {granted_scope!r}")
    request[ACTOR_KEY] = actor
    return None


def _bind(method: Any, authenticate: Authenticate | None = None) -> Handler:
    """A plain function for a bound handler. With `authenticate`, it checks the bearer token itself;
    without, it keeps `required_scope` visible to the host application's middleware."""
    scope = getattr(method, "required_scope", None)

    @functools.wraps(method)
    async def handler(request: web.Request) -> web.StreamResponse:
        if authenticate is not None and scope is not None:
            refused = await _check_bearer(request, scope, authenticate)
            if refused is not None:
                return refused
        return await method(request)
    handler.required_scope = scope if authenticate is None else None  # type: ignore[attr-defined]
    return handler


def add_routes(app: web.Application, service: OtpService | Callable[[web.Request], OtpService], *,
               authenticate: Authenticate | None = None, client_address: ClientAddress = peer_address) -> None:
    """Add the OTP routes to `app` (the application owns the service's lifetime).

    `service` is the service, or a function of the request returning it. `authenticate` checks the
    bearer tokens of the `/api/v1/*` routes (see `Authenticate`); `client_address` says where a
    request comes from (default: the TCP peer)."""
    r = _Routes(service, client_address)

    bind = functools.partial(_bind, authenticate=authenticate)
    wsapi = bind(r.wsapi_verify)
    app.router.add_route("GET", "/wsapi/2.0/verify", wsapi)
    app.router.add_route("POST", "/wsapi/2.0/verify", wsapi)
    app.router.add_route("POST", "/api/v1/otp/verify", bind(r.otp_verify))
    app.router.add_route("POST", "/api/v1/yubikeys/import", bind(r.import_keys))
    app.router.add_route("GET", "/api/v1/yubikeys", bind(r.report))
    app.router.add_route("POST", "/api/v1/yubikeys/{serial}/revoke", bind(r.revoke))
    app.router.add_route("DELETE", "/api/v1/yubikeys/{serial}", bind(r.delete))
    app.router.add_route("POST", "/api/v1/otp-clients", bind(r.add_client))
    app.router.add_route("GET", "/api/v1/otp-clients", bind(r.list_clients))
    app.router.add_route("PATCH", "/api/v1/otp-clients/{id}", bind(r.change_client))
    app.router.add_route("POST", "/api/v1/otp-clients/{id}/disable", bind(r.disable_client))


__all__ = ["ACTOR_KEY", "Authenticate", "ClientAddress", "add_routes", "peer_address", "problem", "requires_scope"]
