"""SCEP over HTTP (RFC 8894 §4.1): /scep/{profile}[/pkiclient.exe|/cgi-bin/pkiclient.exe]."""
from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

from trustkit.http import text_errors

from ..appkeys import RUNTIME
from ..enrolment import NoNextCA
from ..enrolment.getcrl import delivering
from ..profiles import UnknownProfile
from trustkit.der import DERError
from ..scep.message import decode_get_message
from ..scep.types import MalformedMessage
from . import sendtime

CT_CAPS = "text/plain"
CT_CA_RA = "application/x-x509-ca-ra-cert"
CT_NEXT_CA = "application/x-x509-next-ca-cert"
CT_PKI = "application/x-pki-message"

MAX_MESSAGE_BYTES = 64 * 1024
"""The largest pkiMessage accepted. A PKCSReq with an RSA-4096 key, a self-signed signer certificate, a
64-character challenge and twelve 50-character SANs is 4.6 KiB; 64 KiB leaves ten times that room and
bounds what a hostile body can make the codec walk (every codec step is linear in it)."""
MAX_GET_MESSAGE_CHARS = 4 * (MAX_MESSAGE_BYTES // 3 + 1) * 3
"""The ``message=`` of a GET: base64 of the largest message, every character percent-escaped."""


def _raw_query_param(request: web.Request, name: str) -> str | None:
    """A query value before form decoding: base64 '+' must not become a space (macOS, Cisco)."""
    for part in request.rel_url.raw_query_string.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return value
    return None


async def _read_body(request: web.Request) -> bytes | None:
    """The body, or None when it is longer than MAX_MESSAGE_BYTES (never buffering more than that)."""
    if request.content_length is not None and request.content_length > MAX_MESSAGE_BYTES:
        return None
    try:
        return await request.clone(client_max_size=MAX_MESSAGE_BYTES).read()
    except web.HTTPRequestEntityTooLarge:
        return None


_in_flight: dict[tuple[int, str, bytes], asyncio.Future] = {}


async def _pki_operation(service, profile: str, body: bytes) -> bytes:
    """One pkiMessage, handled once however many identical copies arrive together (a replayed body).

    Copies that arrive while the first is being handled share its answer (the same bytes get the same
    answer: a FAILURE is then kept by the service for later copies, a retry of a good request is idempotent).
    """
    digest = hashlib.sha256(body).digest()  # hashed once: the service keys its cache of FAILUREs by it too
    key = (id(service), profile, digest)
    first = _in_flight.get(key)
    if first is not None:
        try:
            return await asyncio.shield(first)
        except asyncio.CancelledError:
            if not first.cancelled():
                raise  # this request was cancelled
            return await service.pki_operation(profile, body, digest)  # the first one was: answer on our own
    fut = asyncio.get_running_loop().create_future()
    _in_flight[key] = fut
    try:
        reply = await service.pki_operation(profile, body, digest)
    except asyncio.CancelledError:
        fut.cancel()
        raise
    except BaseException as exc:
        fut.set_exception(exc)
        fut.exception()  # retrieved: nobody may be waiting
        raise
    finally:
        _in_flight.pop(key, None)
    fut.set_result(reply)
    return reply


def _text(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", content_type="text/plain")


@text_errors
async def scep(request: web.Request) -> web.StreamResponse:
    service = request.app[RUNTIME].scep
    profile = request.match_info["profile"]
    operation = request.query.get("operation", "")
    try:
        if operation == "GetCACaps":
            return web.Response(text=await service.get_ca_caps(profile), content_type=CT_CAPS)
        if operation == "GetCACert":
            return web.Response(body=await service.get_ca_cert(profile), content_type=CT_CA_RA)
        if operation == "GetNextCACert":
            return web.Response(body=await service.get_next_ca_cert(profile), content_type=CT_NEXT_CA)
        if operation == "PKIOperation":
            if request.method == "POST":
                # Content-Type is not checked: clients send application/octet-stream, x-pki-message or none
                body = await _read_body(request)
                if body is None:
                    return _text(413, f"a pkiMessage is at most {MAX_MESSAGE_BYTES} bytes")
            else:
                raw = _raw_query_param(request, "message")
                if not raw:
                    return _text(400, "PKIOperation over GET needs a message parameter")
                if len(raw) > MAX_GET_MESSAGE_CHARS:
                    return _text(414, f"a pkiMessage is at most {MAX_MESSAGE_BYTES} bytes")
                body = decode_get_message(raw)
            if not body:
                return _text(400, "empty PKIOperation message")
            # a GetCRL answer keeps its place in the GetCRL lane until it has been sent (or cut, or the request
            # ended otherwise): built answers waiting on slow readers are bounded by the lane too
            with delivering() as delivery:
                sendtime.after_send(request, delivery.done)
                reply = await _pki_operation(service, profile, body)
            return web.Response(body=reply, content_type=CT_PKI)
    except UnknownProfile as exc:
        return _text(404, str(exc))
    except NoNextCA as exc:
        return _text(404, str(exc))
    except (MalformedMessage, DERError) as exc:
        return _text(400, f"not a signed SCEP message: {exc}")
    if not operation:
        return _text(400, "missing operation parameter (GetCACaps, GetCACert, GetNextCACert, PKIOperation)")
    return _text(400, f"unknown operation {operation!r}")


def add_routes(app: web.Application) -> None:
    for suffix in ("", "/", "/pkiclient.exe", "/cgi-bin/pkiclient.exe"):
        path = "/scep/{profile}" + suffix
        app.router.add_route("GET", path, scep)
        app.router.add_route("POST", path, scep)
