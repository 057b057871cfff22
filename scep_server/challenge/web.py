"""HTTP: the dynamic challenge endpoint (NDES page, JSON, Jamf SCEPChallenge webhook) and the admin API
for challenges and pending enrolments. Failures are raised `trustkit.problems.DomainError`s (problem+json),
except the NDES page's own "password cache is full" page."""
from __future__ import annotations

import structlog
from aiohttp import web
from cryptography.hazmat.primitives import hashes

from trustkit.http import BadJSON, read_json_object
from trustkit.paging import page_body, page_request
from trustkit.problems import BadRequest, Forbidden, NotFound, ServiceUnavailable, TooManyRequests, Unprocessable

from ..appkeys import RUNTIME
from ..enrolment import ApprovalRefused
from ..profiles import UnknownProfile
from ..web.auth import ACTOR, bad_credentials, basic_credentials, basic_realm, requires
from ..web.client import client_address
from .config import ChallengeConfigError
from .page import cache_full_page, challenge_page
from .service import ENROLMENT_KEY, ENROLMENT_STATES, CacheFull, ChallengeService, NotDynamic, enrolments, expectations_from

log = structlog.get_logger("challenge.http")


def _service(request: web.Request) -> ChallengeService:
    service = request.app[RUNTIME].challenges
    assert service is not None  # the routes exist only when the capability is on
    return service


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "").lower()


async def _dynamic_profile(service: ChallengeService, name: str):
    """(profile, settings) of a profile with dynamic challenges; 404 for another or none, 503 when its
    challenge settings cannot be read."""
    try:
        return await service.dynamic_profile(name)
    except (UnknownProfile, NotDynamic) as exc:
        raise NotFound(str(exc)) from None
    except ChallengeConfigError as exc:
        raise ServiceUnavailable(str(exc)) from None


async def _authorise(request: web.Request, service: ChallengeService, name: str):
    """(profile, settings, username) of a caller with the profile's Basic credentials; else raises 404, 403,
    401, 429 or 503."""
    profile, settings = await _dynamic_profile(service, name)
    if settings.credentials is None:
        raise Forbidden(f"no challenge credentials are configured for profile {name!r} "
                        "(scep-server challenge configure)")
    realm = basic_realm(profile.name)
    user, password = basic_credentials(request, realm)
    remote = client_address(request)
    login = await service.login(profile.name, settings.credentials, user, password, remote)
    if login.busy:
        log.warning("challenge.auth_busy", profile=profile.name, remote=remote)
        raise ServiceUnavailable("too many logins are being checked; try again shortly",
                                 headers={"Retry-After": str(login.retry_after)})
    if login.retry_after is not None:
        log.warning("challenge.auth_blocked", profile=profile.name, remote=remote, username=user[:64],
                    blocked_by=login.blocked_by)
        raise TooManyRequests("too many failed attempts; try again later",
                              headers={"Retry-After": str(login.retry_after)})
    if not login.ok:
        log.warning("challenge.auth_failed", profile=profile.name, remote=remote, username=user[:64])
        raise bad_credentials(realm)
    return profile, settings, user


async def get_challenge(request: web.Request) -> web.Response:
    """NDES-style page (default) or JSON {"challenge", "expires_at"} for Accept: application/json."""
    service = _service(request)
    name = request.match_info["profile"]
    profile, settings, user = await _authorise(request, service, name)
    want_json = _wants_json(request)
    runtime = request.app[RUNTIME]
    ca = await runtime.scep.ca_of(profile) if runtime.scep is not None else runtime.cas[profile.ca]
    charset = settings.page_encoding
    try:
        issued = await service.new_challenge(profile.name, source="json" if want_json else "page",
                                             requested_by=user)
    except CacheFull as exc:
        if want_json:
            raise TooManyRequests(f"The password cache is full: {exc}") from None
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
    profile, _settings, user = await _authorise(request, service, name)
    try:
        payload = await read_json_object(request, empty={})
    except BadJSON as exc:
        raise BadJSON(f"{exc} (expected Jamf's SCEPChallenge webhook event)") from None
    hook = payload.get("webhook") if isinstance(payload.get("webhook"), dict) else {}
    event = payload.get("event") if isinstance(payload.get("event"), dict) else {}
    kind = hook.get("webhookEvent")
    if kind is not None and kind != "SCEPChallenge":
        raise BadRequest(f"webhook event {kind!r} is not SCEPChallenge")
    payload_id = event.get("payloadIdentifier")
    if payload_id is not None and (not isinstance(payload_id, str) or len(payload_id) > 255):
        raise BadRequest("event.payloadIdentifier must be a string of at most 255 characters")
    try:
        issued = await service.new_challenge(profile.name, source="webhook", requested_by=user,
                                             payload_identifier=payload_id)
    except CacheFull as exc:
        raise TooManyRequests(f"The password cache is full: {exc}") from None
    return web.Response(text=issued.challenge, content_type="text/plain", headers={"Cache-Control": "no-store"})


@requires("admin")
async def api_new_challenge(request: web.Request) -> web.Response:
    """POST /api/v1/challenges/{profile} {"subject"?, "sans"?} -> {"challenge", "expires_at"}."""
    data = await read_json_object(request, empty={})
    try:
        expectations = expectations_from(data)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    try:
        issued = await _service(request).new_challenge(request.match_info["profile"], source="api",
                                                       requested_by=request[ACTOR], expectations=expectations)
    except (UnknownProfile, NotDynamic) as exc:
        raise NotFound(str(exc)) from None
    except ChallengeConfigError as exc:
        raise ServiceUnavailable(str(exc)) from None
    except CacheFull as exc:
        raise TooManyRequests(str(exc)) from None
    return web.json_response({"challenge": issued.challenge, "expires_at": issued.expires_at.isoformat()},
                             status=201, headers={"Cache-Control": "no-store"})


@requires("admin")
async def api_list_enrolments(request: web.Request) -> web.Response:
    """GET /api/v1/enrolments?state=pending|issued|rejected|all&profile=NAME&limit=&cursor= (a page, oldest first)"""
    state = request.query.get("state", "pending")
    if state not in (*ENROLMENT_STATES, "all"):
        raise BadRequest(f"state must be one of {', '.join(ENROLMENT_STATES)} or all", code="invalid_input")
    profile = request.query.get("profile") or None
    if profile is not None and (len(profile) > 64 or not profile.isprintable()):
        raise BadRequest("profile: a profile name (at most 64 printable characters)", code="invalid_input")
    rt = request.app[RUNTIME]
    page = await enrolments(rt.engine, page_request(request.query, ENROLMENT_KEY),
                            state=None if state == "all" else state, profile=profile, now=rt.clock())
    body, headers = page_body("enrolments", page.items, page, request.rel_url)
    return web.json_response(body, headers=headers)


async def _decide(request: web.Request, approve: bool) -> web.Response:
    data = await read_json_object(request, empty={})
    txid = data.get("transaction_id")
    reason = data.get("reason")
    if not isinstance(txid, str) or not txid:
        raise BadRequest("transaction_id (string) is required")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest("reason must be a string")
    rt = request.app[RUNTIME]
    try:
        result = await rt.scep.decide(request.match_info["profile"], txid, approve=approve, actor=request[ACTOR],
                                      reason=(reason or None) and reason[:500])
    except UnknownProfile as exc:
        raise NotFound(str(exc)) from None
    except ApprovalRefused as exc:
        raise Unprocessable(str(exc)) from None
    except LookupError as exc:  # no such pending enrolment (a lost race is a Conflict, answered as raised)
        raise NotFound(str(exc)) from None
    log.info("enrolment.decided", profile=request.match_info["profile"], transaction_id=txid,
             approve=approve, actor=request[ACTOR])
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
