"""aiohttp helpers shared by every HTTP surface: the JSON body reader, the bearer-token check and its
``WWW-Authenticate`` format, and the answer to a failure a handler raised (docs/api.md "Errors").

- :func:`read_json_object`: a request body as one strict JSON object, with a bounded cost; anything else is
  a :class:`BadJSON` (400) or a :class:`~trustkit.problems.PayloadTooLarge` (413), both problem+json.
- :func:`www_authenticate` and :func:`bearer_caller`: one challenge format,
  ``<Scheme> realm="<realm>"[, name="value"]...``, and the check of ``Authorization: Bearer <token>``
  against a scope (401 with the challenge, or 403).
- :func:`error_response`: a :class:`~trustkit.problems.DomainError` becomes its problem document, an
  unavailable database (a refused or broken connection, a timeout) a 503 problem with ``Retry-After``, a
  body that cannot be read a 400; anything else is left to the caller (a logged 500).
"""
from __future__ import annotations

import errno
import ipaddress
import json
import math
import re
from typing import Any, Awaitable, Callable

import asyncpg
from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError
from sqlalchemy import exc as sa_exc

from .problems import (RETRY_AFTER_SECONDS, BadRequest, DomainError, Forbidden, PayloadTooLarge, Unauthorized,
                       problem)
from .text import unstorable

# ---- failures ---------------------------------------------------------------------------------------------


_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,  # cannot connect, the server went away, SQLite's "database is locked"
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # no pooled connection in time
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # a connection that was closed or broke
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, cannot connect now, statement timeout
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    OSError,  # a socket refused or reset, every address of a host refused (no errno), a Unix socket not there,
    # TLS broken; TimeoutError (and asyncio's) is one too
)
# an OSError of these kinds names a path no file system takes (a name too long, too many links, a file where a
# directory should be): the request's or the code's, never an unreachable database
_PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR})


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says a database (or another backing service) cannot be reached now, rather than that
    the request or the code is wrong: looked for in the exception, what it wraps and what caused it."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 16:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, _UNAVAILABLE) and not (isinstance(item, OSError) and item.errno in _PATH_ERRNOS):
            return True
        if isinstance(item, sa_exc.DBAPIError) and item.connection_invalidated:
            return True
        todo.extend((getattr(item, "orig", None), item.__cause__, item.__context__))
    return False


def text_errors(handler):
    """Mark a protocol handler (SCEP, CRLs, the OTP validation protocol) whose generic failures (an unreadable
    body, an internal error) are answered in plain text, as its own errors are; JSON APIs get problem+json."""
    handler.text_errors = True
    return handler


def wants_text(request: web.Request) -> bool:
    """Whether the request's route answers generic failures in plain text (see :func:`text_errors`)."""
    return bool(getattr(request.match_info.handler, "text_errors", False))


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain", headers=headers)


UNREADABLE_BODY = (web.RequestPayloadError, PayloadEncodingError)
"""What reading a request body raises when its framing or content coding is broken: aiohttp's C parser fails the
body with RequestPayloadError, its pure-Python parser (no C extension, or ``AIOHTTP_NO_EXTENSIONS``) with the
PayloadEncodingError it met (TransferEncodingError, ContentLengthError, ContentEncodingError)."""


def error_response(exc: BaseException, *, text: bool = False) -> web.Response | None:
    """The answer to a failure a handler raised, or None when it is none of the known kinds (a 500 is then
    the caller's to log and answer: :func:`internal_error`). `text` answers an unreadable body in plain text."""
    if isinstance(exc, DomainError):
        return exc.response()
    if isinstance(exc, UNREADABLE_BODY):  # framing or content coding broken: the client's fault
        if text:
            return _text(400, "the request body could not be read")
        return problem(400, "the request body could not be read", code="unreadable_body")
    if unavailable(exc):
        return problem(503, "the database is unavailable; try again shortly", code="unavailable",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return None


def internal_error(*, text: bool = False) -> web.Response:
    """A 500 that says nothing of its cause (which goes to the log)."""
    if text:
        return _text(500, "internal error")
    return problem(500, "internal error")


# ---- authentication ---------------------------------------------------------------------------------------

# (request, bearer token) -> (scope, caller's name) for a valid token, None for an unknown or disabled one
Authenticate = Callable[[web.Request, str], Awaitable["tuple[str, str] | None"]]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _quoted(value: str) -> str:
    """A quoted-string (RFC 9110 §5.6.4): control characters dropped, quote and backslash escaped."""
    return '"' + _CONTROL.sub("", value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(scheme: str, realm: str, **params: str) -> dict[str, str]:
    """The ``WWW-Authenticate`` header of a 401 (RFC 9110 §11.6.1): ``<scheme> realm="<realm>", k="v"...``."""
    value = ", ".join([f"realm={_quoted(realm)}", *(f"{name}={_quoted(v)}" for name, v in params.items())])
    return {"WWW-Authenticate": f"{scheme} {value}"}


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None (also for one that is not ASCII: no token
    we issue is, and header bytes that are not UTF-8 arrive as unpaired surrogates)."""
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if kind.lower() == "bearer" and token and token.isascii() else None


async def bearer_caller(request: web.Request, scope: str, authenticate: Authenticate, *, realm: str) -> str:
    """The caller's name when the request carries an enabled token of `scope`; otherwise raises
    Unauthorized (no token, or an unknown or disabled one: with the challenge) or Forbidden (another scope).
    A failure of `authenticate` itself propagates (an unavailable token store answers 503)."""
    challenge = www_authenticate("Bearer", realm, scope=scope)
    token = bearer_token(request)
    if token is None:
        raise Unauthorized(f"a bearer token with scope {scope!r} is required", headers=challenge)
    granted = await authenticate(request, token)
    if granted is None:
        raise Unauthorized("unknown or disabled token", headers=challenge)
    granted_scope, actor = granted
    if granted_scope != scope:
        raise Forbidden(f"this endpoint needs a token with scope {scope!r}, not {granted_scope!r}")
    return actor


def is_loopback_host(host: str) -> bool:
    """Whether a host (a URL's hostname, a listen address's host) is this machine only: ``localhost`` or a loopback
    address. A host name is not, whatever it resolves to now."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- JSON bodies ------------------------------------------------------------------------------------------

MAX_DEPTH = 16
MAX_VALUES = 10_000
"""The most values (objects, arrays, keys, strings, numbers) a body may hold: the API's bodies hold a few dozen,
and checking each value of a body of 120,000 numbers cost ten times the work of a request."""


class BadJSON(BadRequest, ValueError):
    """The body is not an acceptable JSON object; the message says why (safe to show the caller).

    Refused: bytes that are not UTF-8 JSON, a top level that is not an object, nesting deeper than
    ``MAX_DEPTH``, more than ``MAX_VALUES`` values, a repeated key in one object (parsers disagree on which one
    wins), NaN/Infinity and numbers too large for a float or for Python's integer-parsing limit, strings with a
    NUL or an unpaired surrogate (neither can be stored in PostgreSQL or encoded as UTF-8). The API bodies are
    flat, so none of these refusals costs a legitimate caller anything.
    """

    code = "invalid_input"


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise BadJSON("the body repeats a key in one object")
    return obj


def _constant(name: str) -> Any:
    raise BadJSON(f"{name} is not JSON")


def _check(value: Any) -> None:
    """Depth, size, strings and numbers of a parsed document, walked without recursion."""
    stack = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise BadJSON(f"the body holds more than {MAX_VALUES} values")
        if isinstance(item, str):
            if (why := unstorable(item)) is not None:
                raise BadJSON(f"a string contains {why}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadJSON("a number is out of range")
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise BadJSON(f"the body is nested deeper than {MAX_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def loads_object(raw: bytes | str) -> dict[str, Any]:
    """Parse `raw` as one JSON object, or raise BadJSON."""
    try:
        data = json.loads(raw, object_pairs_hook=_pairs, parse_constant=_constant)
    except BadJSON:
        raise
    except RecursionError:
        raise BadJSON("the body is nested too deeply") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer beyond the digit limit
        raise BadJSON("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadJSON("the body must be a JSON object")
    _check(data)
    return data


async def read_json_object(request: web.Request, *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request body as one JSON object; an empty (or absent) body gives ``empty`` when set, else BadJSON.
    A body over the application's ``client_max_size`` is a PayloadTooLarge (413)."""
    if not request.body_exists and empty is not None:
        return dict(empty)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the body is larger than {request.client_max_size} bytes") from None
    if not raw.strip() and empty is not None:
        return dict(empty)
    return loads_object(raw)


__all__ = ["MAX_DEPTH", "MAX_VALUES", "Authenticate", "BadJSON", "bearer_caller", "bearer_token",
           "error_response", "internal_error", "is_loopback_host", "loads_object", "read_json_object", "text_errors",
           "unavailable", "wants_text", "www_authenticate"]
