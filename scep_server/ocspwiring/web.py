"""`GET /ocsp/{ca}/{base64 request}` (RFC 5019 §5: URL-encoded base64 of the DER request) and `POST /ocsp/{ca}`
(application/ocsp-request). Both answer application/ocsp-response; a GET answer of a request without nonce
carries RFC 5019 §6 caching headers (max-age never beyond nextUpdate), and a matching If-None-Match gets a 304.

Hostile input is answered with the protocol's own failure (malformedRequest), a body announced larger than
``ocsp.max_request_bytes`` with 413, an internal failure with tryLater: never a 500."""
from __future__ import annotations

import base64
import binascii
import time
from email.utils import formatdate
from urllib.parse import unquote

import structlog
from aiohttp import web

from crl.ocsp import error_response
from trustkit.http import text_errors

from ..appkeys import RUNTIME
from .service import OcspService, Reply

log = structlog.get_logger("ocsp.web")

REQUEST_TYPE = "application/ocsp-request"
RESPONSE_TYPE = "application/ocsp-response"
PREFIX = "/ocsp/"


def _service(request: web.Request) -> OcspService:
    service = request.app[RUNTIME].ocsp
    assert service is not None
    return service


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


_NO_STORE = {"Content-Type": RESPONSE_TYPE, "Cache-Control": "no-store"}


def _caching_headers(reply: Reply, max_age_cap: int) -> dict[str, str]:
    """RFC 5019 §6 headers of a cacheable reply, prepared once per reply and second (a pre-signed reply is
    served many times a second)."""
    second = int(time.time())
    prepared = reply.__dict__.get("_headers")
    if prepared is not None and prepared[0] == second:
        return prepared[1]
    assert reply.this_update is not None and reply.next_update is not None
    remaining = int(reply.next_update.timestamp()) - second
    headers = {"Content-Type": RESPONSE_TYPE, "ETag": reply.etag,
               "Last-Modified": _http_date(reply.this_update.timestamp())}
    if remaining > 0:
        max_age = min(remaining, max_age_cap)
        headers["Cache-Control"] = f"max-age={max_age}, public, no-transform, must-revalidate"
        headers["Expires"] = _http_date(second + max_age)
    else:
        headers["Cache-Control"] = "no-cache"
    reply.__dict__["_headers"] = (second, headers)  # a memo beside the frozen fields
    return headers


def _answer(reply: Reply, *, cache_headers: bool, max_age_cap: int = 0, if_none_match: str | None = None
            ) -> web.Response:
    if not cache_headers or reply.this_update is None:
        return web.Response(body=reply.body, headers=_NO_STORE)
    headers = _caching_headers(reply, max_age_cap)
    if if_none_match is not None and reply.etag in (t.strip().removeprefix("W/") for t in if_none_match.split(",")):
        return web.Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
    return web.Response(body=reply.body, headers=headers)


async def _respond(request: web.Request, ca: str, der: bytes) -> Reply:
    try:
        return await _service(request).respond(ca, der)
    except Exception as exc:  # noqa: BLE001 - the database is away, a signer failed: the client tries later
        log.error("ocsp.respond.failed", ca=ca, error=f"{type(exc).__name__}: {exc}")
        return Reply(error_response("try_later"), "try_later")


def _decode_path(request: web.Request, max_bytes: int) -> bytes | None:
    """The request DER from the path after /ocsp/{ca}/ (percent-decoded base64), or None when unreadable."""
    raw = request.rel_url.raw_path[len(PREFIX):]
    _, _, encoded = raw.partition("/")
    if len(encoded) > 3 * (4 * max_bytes // 3 + 4):  # even fully percent-encoded, longer than any accepted request
        return None
    text = unquote(encoded).strip()
    if not text or not text.isascii():
        return None
    text = text.replace("-", "+").replace("_", "/")  # base64url, as some clients send it
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


@text_errors
async def ocsp_get(request: web.Request) -> web.Response:
    service = _service(request)
    ca = request.match_info["ca"]
    der = _decode_path(request, service.settings.max_request_bytes)
    if der is None:
        log.info("ocsp.request.malformed", ca=ca, error="the path is not base64", size=len(request.rel_url.raw_path))
        return _answer(Reply(error_response("malformed_request"), "malformed_request"), cache_headers=False)
    reply = await _respond(request, ca, der)
    return _answer(reply, cache_headers=reply.cacheable, max_age_cap=int(service.settings.http_max_age.total_seconds()),
                   if_none_match=request.headers.get("If-None-Match"))


@text_errors
async def ocsp_post(request: web.Request) -> web.Response:
    service = _service(request)
    ca = request.match_info["ca"]
    limit = service.settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length,
                                            text=f"an OCSP request is at most {limit} bytes\n")
    body = bytearray()
    while len(body) <= limit:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        log.info("ocsp.request.malformed", ca=ca, error="the body is too large", size=len(body))
        return _answer(Reply(error_response("malformed_request"), "malformed_request"), cache_headers=False)
    reply = await _respond(request, ca, bytes(body))
    return _answer(reply, cache_headers=False)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/ocsp/{ca}", ocsp_post)
    app.router.add_get("/ocsp/{ca}/{request:.+}", ocsp_get)
