"""HTTP API: management attestation (`signin` token) and device administration (`admin` token).

    POST /api/v1/attestation/challenge   {"device_id"}                       -> {"nonce", "expires_at", ...}
    POST /api/v1/attestation/verify      {"device_id", "nonce", "certificate", "signature", "algorithm"?}
                                         -> {"managed": bool, "reason": code, "detail", ...}
    GET  /api/v1/devices[?status=&limit=&cursor=]   POST /api/v1/devices {"id"?, "name"?}
    GET  /api/v1/devices/{id}            (device, bindings, history)
    POST /api/v1/devices/{id}/{suspend|unsuspend|deactivate|reactivate|delete}  {"reason"?}
    DELETE /api/v1/devices/{id}          (= delete)
    DELETE /api/v1/devices/{id}/certificate   (remove the current certificate: never accepted again)
    POST /api/v1/devices/{id}/enrolments {"profile", "transaction_id"}  (pre-register an enrolment)
    GET  /api/v1/external-cas[?limit=&cursor=]      POST /api/v1/external-cas {"name", "certificate", "policy"?}
    DELETE /api/v1/external-cas/{name}   (unregister: its certificates then have an unknown issuer)
    POST /api/v1/external-cas/{name}/forget-crls   (the next valid CRL of each of its URLs is taken, whatever its age)

The lists are cursor-paged (docs/api.md "Pagination"): {"devices"|"external_cas": [...], "next_cursor", "next"}.
The actor of every change is the caller's token (``token:<id>:<name>``, scep_server.web.auth.ACTOR); a body
never names it (an ``actor`` member is ignored).
"""
from __future__ import annotations

from aiohttp import web

from crl.config import Policy
from trustkit.http import BadJSON, read_json_object
from trustkit.paging import page_body, page_request
from trustkit.problems import NotFound

from .. import metrics
from ..appkeys import RUNTIME
from ..web.auth import ACTOR, requires
from .attestation import Verdict, b64decode, decode_certificate
from .errors import InvalidInput
from .external import load_certificate
from .service import ACTIONS, DEVICE_KEY, DEVICE_STATUSES, EXTERNAL_CA_KEY, is_device_id, services


def _verdict_400(detail: str) -> web.Response:
    metrics.attestation_verdict(Verdict.BAD_REQUEST.value)
    return web.json_response({"managed": False, "reason": Verdict.BAD_REQUEST.value, "detail": detail}, status=400)


async def _json(request: web.Request, *, optional: bool = False) -> dict:
    """The body as one JSON object (an absent body is {} when `optional`); anything else an InvalidInput."""
    try:
        return await read_json_object(request, empty={} if optional else None)
    except BadJSON as exc:
        raise InvalidInput(str(exc)) from None


def _str(body: dict, key: str, *, required: bool = True, limit: int = 16384) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidInput(f"{key!r} is required")
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInput(f"{key!r} must be a non-empty string of at most {limit} characters")
    return value


def _device_id(body: dict) -> str:
    device_id = _str(body, "device_id", limit=64)
    if not is_device_id(device_id):
        raise InvalidInput("'device_id' is not a valid device id")
    return device_id


@requires("signin")
async def challenge(request: web.Request) -> web.Response:
    svc = services(request.app[RUNTIME])
    device_id = _device_id(await _json(request))
    return web.json_response(await svc.attestation.challenge(device_id))


@requires("signin")
async def verify(request: web.Request) -> web.Response:
    svc = services(request.app[RUNTIME])
    try:
        body = await _json(request)
        device_id = _device_id(body)
        nonce = _str(body, "nonce", limit=256)
        cert_text = _str(body, "certificate", limit=32768)
        signature_text = _str(body, "signature", limit=4096)
        algorithm = _str(body, "algorithm", required=False, limit=64)
    except InvalidInput as exc:
        return _verdict_400(str(exc))
    try:
        der = decode_certificate(cert_text)
    except ValueError:
        return _verdict_400("'certificate' must be PEM or base64 DER")
    try:
        signature = b64decode(signature_text)
    except ValueError:
        return _verdict_400("'signature' must be base64")
    result = await svc.attestation.verify(device_id=device_id, nonce=nonce, certificate=der, signature=signature,
                                          algorithm=algorithm)
    return web.json_response(result.to_json())


def _actor(request: web.Request) -> str:
    """The authenticated principal (set by the bearer middleware before the handler runs)."""
    return request[ACTOR]


@requires("admin")
async def list_devices(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status and status not in DEVICE_STATUSES:
        raise InvalidInput("status: active, suspended, deactivated or deleted")
    page = await services(request.app[RUNTIME]).devices.page(page_request(request.query, DEVICE_KEY),
                                                                status=status or None)
    body, headers = page_body("devices", [d.to_json() for d in page.items], page, request.rel_url)
    return web.json_response(body, headers=headers)


@requires("admin")
async def create_device(request: web.Request) -> web.Response:
    body = await _json(request)
    device_id = _str(body, "id", required=False, limit=64)
    name = _str(body, "name", required=False, limit=255) or ""
    device = await services(request.app[RUNTIME]).devices.create(device_id, name=name, actor=_actor(request))
    return web.json_response(device.to_json(), status=201)


@requires("admin")
async def show_device(request: web.Request) -> web.Response:
    store = services(request.app[RUNTIME]).devices
    device_id = request.match_info["device_id"]
    device = await store.get(device_id)
    return web.json_response({**device.to_json(), "certificates": [b.to_json() for b in await store.bindings(device_id)],
                              "history": await store.history(device_id)})


async def _transition(request: web.Request, action: str) -> web.Response:
    body = await _json(request, optional=True)
    reason = _str(body, "reason", required=False, limit=1000)
    device, changes = await services(request.app[RUNTIME]).devices.transition(
        request.match_info["device_id"], action, actor=_actor(request), reason=reason)
    return web.json_response({**device.to_json(), "certificate_changes": [c.to_json() for c in changes]})


@requires("admin")
async def device_action(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise NotFound(f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
    return await _transition(request, action)


@requires("admin")
async def delete_device(request: web.Request) -> web.Response:
    return await _transition(request, "delete")


@requires("admin")
async def remove_certificate(request: web.Request) -> web.Response:
    body = await _json(request, optional=True)
    binding = await services(request.app[RUNTIME]).devices.remove_certificate(
        request.match_info["device_id"], actor=_actor(request), reason=_str(body, "reason", required=False))
    return web.json_response(binding.to_json())


@requires("admin")
async def preregister(request: web.Request) -> web.Response:
    body = await _json(request)
    done = await services(request.app[RUNTIME]).devices.preregister(
        request.match_info["device_id"], profile=_str(body, "profile", limit=64),
        transaction_id=_str(body, "transaction_id", limit=255), actor=_actor(request))
    return web.json_response(done, status=201)


@requires("admin")
async def list_external(request: web.Request) -> web.Response:
    page = await services(request.app[RUNTIME]).external.page(page_request(request.query, EXTERNAL_CA_KEY))
    body, headers = page_body("external_cas", [c.to_json() for c in page.items], page, request.rel_url)
    return web.json_response(body, headers=headers)


@requires("admin")
async def add_external(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    body = await _json(request)
    name = _str(body, "name", limit=64)
    cert = load_certificate(_str(body, "certificate", limit=32768).encode())
    try:
        policy = Policy(body.get("policy") or "fail-closed")
    except ValueError:
        raise InvalidInput("'policy': fail-open or fail-closed") from None
    ca = await services(rt).external.add(name, cert, policy=policy, actor=_actor(request), now=rt.clock())
    await services(rt).external.reload()
    return web.json_response(ca.to_json(), status=201)


@requires("admin")
async def remove_external(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    ca = await services(rt).external.remove(request.match_info["name"], actor=_actor(request), now=rt.clock())
    await services(rt).external.reload()
    return web.json_response(ca.to_json())


@requires("admin")
async def forget_external_crls(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    done = await services(rt).external.forget_crls(request.match_info["name"], actor=_actor(request),
                                                   now=rt.clock())
    await services(rt).external.reload()
    return web.json_response(done)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/attestation/challenge", challenge)
    app.router.add_post("/api/v1/attestation/verify", verify)
    app.router.add_get("/api/v1/devices", list_devices)
    app.router.add_post("/api/v1/devices", create_device)
    app.router.add_get("/api/v1/devices/{device_id}", show_device)
    app.router.add_delete("/api/v1/devices/{device_id}", delete_device)
    app.router.add_delete("/api/v1/devices/{device_id}/certificate", remove_certificate)
    app.router.add_post("/api/v1/devices/{device_id}/enrolments", preregister)
    app.router.add_post("/api/v1/devices/{device_id}/{action}", device_action)
    app.router.add_get("/api/v1/external-cas", list_external)
    app.router.add_post("/api/v1/external-cas", add_external)
    app.router.add_delete("/api/v1/external-cas/{name}", remove_external)
    app.router.add_post("/api/v1/external-cas/{name}/forget-crls", forget_external_crls)
