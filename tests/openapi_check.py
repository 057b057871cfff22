"""Every /api/v1 exchange a test makes with an in-process server is checked against the OpenAPI document.

:func:`attach` puts :func:`middleware` outermost on an application (before it starts). The middleware lets
the request through and captures it with its answer; when the test ends, the autouse fixture of
tests/conftest.py checks them (:func:`drain`) with openapi-core against the assembled document
(scep_server/web/apidoc.py) and fails the test when one does not match. The rules:

- the answer must match the document: a documented status, content type, body and headers, whatever the
  request (a refused request's problem document included);
- a request the document says is invalid (a missing member, no token, a parameter out of range) must be
  refused: answered 4xx;
- a path the document does not hold may only be answered 404, a method it does not hold 404 or 405; a
  request the router has no route for (a capability switched off) is left to the router (404 or 405). The
  route-coverage test (tests/test_openapi.py) keeps the router of a fully-enabled application and the
  document equal.

What the check cannot see it leaves alone: a body the handler streamed or did not read (the request is
checked without it), HEAD (aiohttp's GET without a body), a path with a dot segment. A JSON body sent
under another content type is checked as JSON (the server reads it so).

The validator is built once per process; identical exchanges are checked once.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from aiohttp import web

PREFIX = "/api/v1/"

FAILURES: list[str] = []  # what did not match, since the current test started (see drain)
CHECKED: list[int] = [0]  # exchanges checked in this process
SECONDS: list[float] = [0.0]  # time spent checking them


@functools.cache
def _openapi():
    from openapi_core import Config, OpenAPI
    from openapi_core.deserializing.media_types.util import json_loads, plain_loads

    from scep_server.web.apidoc import assemble

    extra = {"application/problem+json": json_loads, "text/csv": plain_loads}
    # the document's validity is tests/test_openapi.py's to check: not again in every process
    return OpenAPI.from_dict(assemble(), config=Config(extra_media_type_deserializers=extra, spec_validator_cls=None))


@functools.cache
def _partial_validators():
    """The request checks that need no body (for a handler that streamed the body itself)."""
    from openapi_core.validation.request.validators import (V31RequestParametersValidator,
                                                            V31RequestSecurityValidator)

    spec = _openapi().spec
    return V31RequestParametersValidator(spec), V31RequestSecurityValidator(spec)


@dataclass
class _Request:
    """openapi-core's request protocol over what the server received."""

    method: str
    host_url: str
    path: str
    body: bytes | None
    content_type: str
    parameters: object = field(repr=False)


@dataclass
class _Response:
    status_code: int
    content_type: str
    data: bytes
    headers: object = field(repr=False)


def _exception_name(exc: BaseException) -> str:
    return type(exc).__name__


def _describe(exc: BaseException) -> str:
    parts = [f"{_exception_name(exc)}: {exc}"]
    cause = exc.__cause__ or exc.__context__
    for _ in range(4):
        if cause is None:
            break
        inner = getattr(cause, "schema_errors", None)
        parts.append(f"{_exception_name(cause)}: {str(cause)[:500]}")
        if inner:
            parts.extend(f"  - {getattr(e, 'message', e)} at {list(getattr(e, 'path', []))}" for e in inner)
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


def _chain(exc: BaseException) -> list[str]:
    names = []
    for _ in range(6):
        if exc is None:
            break
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return names


def _validate_request(api, request: _Request, body_known: bool) -> None:
    if not body_known:
        for validator in _partial_validators():
            validator.validate(request)
        return
    try:
        api.validate_request(request)
    except Exception as exc:
        # The JSON routes read the body as JSON whatever its Content-Type says (docs/api.md "The API
        # document"): a body sent under another type is checked as the JSON it was read as.
        if "MediaTypeNotFound" not in _chain(exc) or request.body is None or \
                request.content_type == "application/json":
            raise
        api.validate_request(replace(request, content_type="application/json"))


def check(request: _Request, response: _Response, *, body_known: bool = True) -> str | None:
    """What is wrong with this exchange, or None (`body_known`: False when the handler streamed the body,
    which is then not checked)."""
    from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound, ServerNotFound

    api = _openapi()
    status = response.status_code
    where = f"{request.method.upper()} {request.path} -> {status}"
    try:
        _validate_request(api, request, body_known)
        request_error = None
    except (PathNotFound, ServerNotFound):
        return None if status == 404 else f"{where}: the path is not in the OpenAPI document"
    except OperationNotFound:
        return None if status in (404, 405) else f"{where}: the method is not in the OpenAPI document"
    except Exception as exc:  # noqa: BLE001 - any validation error: the request is not as documented
        chain = _chain(exc)
        if "PathNotFound" in chain or "ServerNotFound" in chain:
            return None if status == 404 else f"{where}: the path is not in the OpenAPI document"
        if "OperationNotFound" in chain:
            return None if status in (404, 405) else f"{where}: the method is not in the OpenAPI document"
        request_error = exc
    if request_error is not None and not 400 <= status < 500:
        return f"{where}: the request does not match the document, yet was answered {status}:\n" \
               f"{_describe(request_error)}"
    try:
        api.validate_response(request, response)
    except Exception as exc:  # noqa: BLE001
        return f"{where}: the answer does not match the document:\n{_describe(exc)}\n" \
               f"body: {response.data[:600]!r}"
    return None


async def _body_read(request: web.Request) -> bytes | None:
    """The request's body if the handler read it whole (or there is none); None when the handler streamed it
    or left it unread (the check never reads a body the server did not: that would change what it does)."""
    data = getattr(request, "_read_bytes", None)
    if data is not None:
        return data
    return b"" if not request.body_exists else None


def _document_path(raw_path: str) -> str:
    """The path as the router matches it: each segment decoded, a slash inside a segment kept as %2F."""
    return "/".join(unquote(segment).replace("%", "%25").replace("/", "%2F") if "%" in segment else segment
                    for segment in raw_path.split("/"))


def _as_request(request: web.Request, body: bytes | None) -> _Request:
    from multidict import CIMultiDict, MultiDict
    from openapi_core.datatypes import RequestParameters

    return _Request(method=request.method.lower(), host_url=f"{request.scheme}://{request.host}",
                    path=_document_path(request.rel_url.raw_path), body=body or None,
                    content_type=request.content_type if request.body_exists else "",
                    parameters=RequestParameters(query=MultiDict(request.query), header=CIMultiDict(request.headers),
                                                 cookie=dict(request.cookies)))


def _as_response(response: web.StreamResponse) -> _Response:
    from multidict import CIMultiDict

    from scep_server.web.sendtime import PacedBody

    body = getattr(response, "body", None)
    if isinstance(body, PacedBody):  # a large answer, sent in slices of these bytes
        body = body.value
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, (bytes, bytearray)):
        body = b""
    return _Response(status_code=response.status, content_type=response.content_type or "",
                     data=bytes(body), headers=CIMultiDict(response.headers))


@web.middleware
async def middleware(request: web.Request, handler):
    if not request.path.startswith(PREFIX):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _capture(request, await _body_read(request), exc)
        raise
    _capture(request, await _body_read(request), response)
    return response


# Exchanges are captured while the server runs and checked when the test ends (drain): the checks cost
# milliseconds each, and a server whose event loop they held up would answer its timing-sensitive tests late.
PENDING: list[tuple[_Request, _Response, bool]] = []
_RESULTS: dict[tuple, str | None] = {}  # identical exchanges are checked once per process
_RESULTS_MAX = 50_000
_REQUEST_HEADERS = ("authorization", "content-type")  # the only request headers the document refers to


def _capture(request: web.Request, body: bytes | None, response: web.StreamResponse) -> None:
    if request.match_info.http_exception is not None:  # no route: a capability switched off, a wrong path
        if response.status not in (404, 405):
            FAILURES.append(f"{request.method} {request.path} -> {response.status}: no route, yet not 404 or 405")
        return
    if request.method == "HEAD" or \
            any(part in (".", "..") for part in _document_path(request.rel_url.raw_path).split("/")):
        return  # HEAD is GET without a body (aiohttp's); a dot segment the document's URLs cannot spell
    PENDING.append((_as_request(request, body), _as_response(response), body is not None))


def _key(request: _Request, response: _Response, body_known: bool) -> tuple:
    headers = request.parameters.header
    return (request.method, request.path, tuple(request.parameters.query.items()),
            tuple(headers.get(h) for h in _REQUEST_HEADERS), request.content_type, request.body, body_known,
            response.status_code, response.content_type, response.data, tuple(sorted(response.headers.items())))


def drain() -> list[str]:
    """Check the captured exchanges; what does not match (also in FAILURES)."""
    found = []
    started = time.perf_counter()
    try:
        while PENDING:
            request, response, body_known = PENDING.pop(0)
            CHECKED[0] += 1
            key = _key(request, response, body_known)
            if key in _RESULTS:
                problem = _RESULTS[key]
            else:
                problem = check(request, response, body_known=body_known)
                if len(_RESULTS) < _RESULTS_MAX:
                    _RESULTS[key] = problem
            if problem:
                found.append(problem)
    finally:
        SECONDS[0] += time.perf_counter() - started
    FAILURES.extend(found)
    return found


def attach(app: web.Application) -> web.Application:
    """Check every /api/v1 exchange of `app` (call before it starts)."""
    app.middlewares.insert(0, middleware)
    return app
