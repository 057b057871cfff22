"""HTTP: the dynamic challenge endpoint (NDES page, JSON, Jamf SCEPChallenge webhook) and the admin API
for challenges and pending enrolments."""
from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from cryptography.hazmat.primitives import hashes

from ..appkeys import RUNTIME
from ..enrolment import ApprovalRefused
from ..profiles import UnknownProfile
from ..web.auth import problem, requires
from ..web.client import client_address
from ..web.jsonbody import BadJSON, read_object
from .basic import parse_basic
from .config import ChallengeConfigError
from .enrolments import STATES, list_enrolments
from .page import cache_full_page, challenge_page
from .service import EXTRAS_KEY, ChallengeService, NotDynamic
from .store import CacheFull, expectations_from

log = structlog.get_logger("challenge.http")


def _service(request: web.Request) -> ChallengeService:
    return request.app[RUNTIME].extras[EXTRAS_KEY]


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "").lower()


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain", headers=headers)


async def _authorise(request: web.Request, service: ChallengeService, name: str):
    """(profile, settings, username) or an error response: 404, 403, 401 or 429."""
    try:
        profile, settings = await service.dynamic_profile(name)
    except UnknownProfile as exc:
        return None, problem(404, "Not Found", str(exc))
    except NotDynamic as exc:
        return None, problem(404, "Not Found", str(exc))
    except ChallengeConfigError as exc:
        return None, problem(503, "Service Unavailable", str(exc))
    if settings.credentials is None:
        return None, problem(403, "Forbidden", f"no challenge credentials are configured for profile {name!r} "
                                               "(scep-server challenge configure)")
    www = {"WWW-Authenticate": f'Basic realm="SCEP challenge {profile.name}", charset="UTF-8"'}
    given = parse_basic(request.headers.get("Authorization"))
    if given is None:
        return None, problem(401, "Unauthorized", "HTTP Basic credentials are required", **www)
    user, password = given
    remote = client_address(request)
    login = await service.login(profile.name, settings.credentials, user, password, remote)
    if login.busy:
        log.warning("challenge.auth_busy", profile=profile.name, remote=remote)
        return None, problem(503, "Service Unavailable", "too many logins are being checked; try again shortly",
                             **{"Retry-After": str(login.retry_after)})
    if login.retry_after is not None:
        log.warning("challenge.auth_blocked", profile=profile.name, remote=remote, username=user[:64])
        return None, problem(429, "Too Many Requests", "too many failed attempts; try again later",
                             **{"Retry-After": str(login.retry_after)})
    if not login.ok:
        log.warning("challenge.auth_failed", profile=profile.name, remote=remote, username=user[:64])
        return None, problem(401, "Unauthorized", "invalid username or password", **www)
    return (profile, settings, user), None


async def get_challenge(request: web.Request) -> web.Response:
    """NDES-style page (default) or JSON {"challenge", "expires_at"} for Accept: application/json."""
    service = _service(request)
    name = request.match_info["profile"]
    ok, error = await _authorise(request, service, name)
    if error is not None:
        return error
    profile, settings, user = ok
    want_json = _wants_json(request)
    ca = request.app[RUNTIME].cas[profile.ca]
    charset = settings.page_encoding
    try:
        issued = await service.new_challenge(profile.name, source="json" if want_json else "page",
                                             requested_by=user)
    except CacheFull as exc:
        if want_json:
            return problem(429, "Too Many Requests", f"The password cache is full: {exc}")
        page = cache_full_page(ca_name=ca.name, charset=charset)
        return web.Response(status=429, body=page.encode(charset), content_type="text/html", charset=charset)
    headers = {"Cache-Control": "no-store"}
    if want_json:
        return web.json_response({"challenge": issued.challenge, "expires_at": issued.expires_at.isoformat()},
                                 headers=headers)
    page = challenge_page(challenge=issued.challenge, ca_thumbprint_hex=ca.cert.fingerprint(hashes.SHA1()).hex(),
        minutes=settings.ttl_minutes, ca_name=ca.name, charset=charset)
    return web.Response(body=page.encode(charset), content_type="text/html", charset=charset, headers=headers)


async def jamf_webhook(request: web.Request) -> web.Response:
    """Jamf Pro's SCEPChallenge webhook: the response body is the challenge."""
    service = _service(request)
    name = request.match_info["profile"]
    ok, error = await _authorise(request, service, name)
    if error is not None:
        return error
    profile, _settings, user = ok
    try:
        payload = await read_object(request, empty={})
    except BadJSON as exc:
        return problem(400, "Bad Request", f"{exc} (expected Jamf's SCEPChallenge webhook event)")
    hook = payload.get("webhook") if isinstance(payload.get("webhook"), dict) else {}
    event = payload.get("event") if isinstance(payload.get("event"), dict) else {}
    kind = hook.get("webhookEvent")
    if kind is not None and kind != "SCEPChallenge":
        return problem(400, "Bad Request", f"webhook event {kind!r} is not SCEPChallenge")
    payload_id = event.get("payloadIdentifier")
    if payload_id is not None and (not isinstance(payload_id, str) or len(payload_id) > 255):
        return problem(400, "Bad Request", "event.payloadIdentifier must be a string of at most 255 characters")
    try:
        issued = await service.new_challenge(profile.name, source="webhook", requested_by=user,
                                             payload_identifier=payload_id)
    except CacheFull as exc:
        return problem(429, "Too Many Requests", f"The password cache is full: {exc}")
    return web.Response(text=issued.challenge, content_type="text/plain", headers={"Cache-Control": "no-store"})


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    if not request.can_read_body:
        return {}
    try:
        return await read_object(request, empty={})
    except BadJSON as exc:
        return problem(400, "Bad Request", str(exc))


@requires("admin")
async def api_new_challenge(request: web.Request) -> web.Response:
    """POST /api/v1/challenges/{profile} {"subject"?, "sans"?} -> {"challenge", "expires_at"}."""
    data = await _json_body(request)
    if isinstance(data, web.Response):
        return data
    try:
        expectations = expectations_from(data)
    except ValueError as exc:
        return problem(400, "Bad Request", str(exc))
    try:
        issued = await _service(request).new_challenge(request.match_info["profile"], source="api",
                                                       requested_by="api", expectations=expectations)
    except (UnknownProfile, NotDynamic) as exc:
        return problem(404, "Not Found", str(exc))
    except ChallengeConfigError as exc:
        return problem(503, "Service Unavailable", str(exc))
    except CacheFull as exc:
        return problem(429, "Too Many Requests", str(exc))
    return web.json_response({"challenge": issued.challenge, "expires_at": issued.expires_at.isoformat()},
                             status=201, headers={"Cache-Control": "no-store"})


@requires("admin")
async def api_list_enrolments(request: web.Request) -> web.Response:
    """GET /api/v1/enrolments?state=pending|issued|rejected|all&profile=NAME"""
    state = request.query.get("state", "pending")
    if state not in (*STATES, "all"):
        return problem(400, "Bad Request", f"state must be one of {', '.join(STATES)} or all")
    rows = await list_enrolments(request.app[RUNTIME].engine, state=None if state == "all" else state,
                                 profile=request.query.get("profile") or None)
    return web.json_response({"enrolments": rows})


async def _decide(request: web.Request, approve: bool) -> web.Response:
    data = await _json_body(request)
    if isinstance(data, web.Response):
        return data
    txid = data.get("transaction_id")
    reason = data.get("reason")
    if not isinstance(txid, str) or not txid:
        return problem(400, "Bad Request", "transaction_id (string) is required")
    if reason is not None and not isinstance(reason, str):
        return problem(400, "Bad Request", "reason must be a string")
    rt = request.app[RUNTIME]
    try:
        result = await rt.scep.decide(request.match_info["profile"], txid, approve=approve, actor="api:admin",
                                      reason=(reason or None) and reason[:500])
    except UnknownProfile as exc:
        return problem(404, "Not Found", str(exc))
    except ApprovalRefused as exc:
        return problem(422, "Unprocessable Content", str(exc))
    except LookupError as exc:
        return problem(409 if "concurrently" in str(exc) else 404, "Not Found", str(exc))
    log.info("enrolment.decided", profile=request.match_info["profile"], transaction_id=txid,
             approve=approve, actor="api:admin")
    return web.json_response({"profile": request.match_info["profile"], "transaction_id": txid,
                              "result": "rejected" if not approve else "issued",
                              "serial": result if approve else None})


@requires("admin")
async def api_approve(request: web.Request) -> web.Response:
    """POST /api/v1/enrolments/{profile}/approve {"transaction_id"}"""
    return await _decide(request, True)


@requires("admin")
async def api_reject(request: web.Request) -> web.Response:
    """POST /api/v1/enrolments/{profile}/reject {"transaction_id", "reason"?}"""
    return await _decide(request, False)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/scep/{profile}/challenge", get_challenge)
    app.router.add_post("/scep/{profile}/challenge", jamf_webhook)
    app.router.add_post("/api/v1/challenges/{profile}", api_new_challenge)
    app.router.add_get("/api/v1/enrolments", api_list_enrolments)
    app.router.add_post("/api/v1/enrolments/{profile}/approve", api_approve)
    app.router.add_post("/api/v1/enrolments/{profile}/reject", api_reject)
