"""Request ids and the access log: the outermost middleware.

Every request gets a request id: the client's ``X-Request-ID`` when it is at most 128 characters of
``[A-Za-z0-9._:-]`` (a proxy's or a caller's id, so one id follows a request across systems), otherwise a new
one. The id is echoed in the response's ``X-Request-ID`` (problem documents, 404 and 405 included) and bound
to structlog's context variables for the request, so every log line written while it is handled carries
``request_id``, whether written through structlog or the standard library. A client can choose its id: it
correlates lines, it proves nothing.

With ``log.access`` on, each request also writes one ``http.access`` line: the method (one of the standard
methods, else ``OTHER``), the route's template (``/api/v1/devices/{device_id}``, never the raw path; a path
no route matches is :data:`UNMATCHED`), the status, the duration and the client address (honouring
``server.trusted_proxies``, see :mod:`scep_server.web.client`). The line is written whatever ``log.level`` is.
"""
from __future__ import annotations

import asyncio
import os
import re
import time

import structlog
from aiohttp import web

from .. import metrics
from ..logs import access_line
from . import client

HEADER = "X-Request-ID"
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
UNMATCHED = "<unmatched>"  # the route of a request no route matches (404, 405): never the raw path
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
CLIENT_CLOSED = 499  # the status logged for a request whose handler was cancelled (no answer was sent)


def request_id(offered: "str | None") -> str:
    """The request's id: the offered one when short and safe, otherwise a new random one (16 hex digits)."""
    if offered and len(offered) <= 128 and _SAFE_ID.fullmatch(offered):
        return offered
    return os.urandom(8).hex()


def route_template(request: web.BaseRequest) -> str:
    """The matched route's canonical path (``/api/v1/devices/{device_id}``), or :data:`UNMATCHED`: a value
    from a fixed set, whatever path a client sends (for log fields and metric labels)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def method_label(method: str) -> str:
    """The method, or ``OTHER`` for a non-standard one (a client may send any token as its method)."""
    return method if method in METHODS else "OTHER"


def middleware(access: bool):
    """Bind the request id for the request and echo it; with ``access``, write one ``http.access`` line; count
    the request in the metrics (when they are on)."""
    bind, reset = structlog.contextvars.bind_contextvars, structlog.contextvars.reset_contextvars
    clock = time.perf_counter

    @web.middleware
    async def request_context(request: web.Request, handler):
        rid = request_id(request.headers.get(HEADER))
        request[REQUEST_ID] = rid
        tokens = bind(request_id=rid)
        started = clock()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers[HEADER] = rid
            return response
        except web.HTTPException as exc:  # the router's 404 and 405, a handler's redirect
            status = exc.status
            exc.headers[HEADER] = rid
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            metrics.request_served()  # a no-op unless [metrics] is on: one middleware fewer per request
            if access:
                access_line(method=method_label(request.method), route=route_template(request), status=status,
                            duration_ms=(clock() - started) * 1000,
                            client=request.get(client.KEY) or request.remote or "", request_id=rid)
            reset(**tokens)

    return request_context
