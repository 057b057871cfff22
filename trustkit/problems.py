"""One error type for every HTTP API, and one renderer of RFC 9457 problem documents.

A handler or a service raises a :class:`DomainError` (or a subclass naming its status and a stable
``code``); the application's error middleware (or, for a library mounted on its own, the library's
handler wrapper) answers it with :func:`problem`:

    HTTP/1.1 409 Conflict
    Content-Type: application/problem+json

    {"type": "about:blank", "title": "Conflict", "status": 409, "detail": "...", "code": "conflict"}

``type``, ``title``, ``status`` and ``detail`` are RFC 9457's members; ``code`` is ours, a stable
machine-readable name of the failure. An error may carry more members (``extra``). docs/api.md "Errors" lists the codes.
"""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # aiohttp is loaded when a problem is rendered, not by the modules that only raise
    from aiohttp import web

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 5  # what a 503 asks the client to wait unless it says otherwise

# the code and title of a problem that names neither (titles spelled as RFC 9110 spells them)
_STANDARD: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad Request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not Found"),
    405: ("method_not_allowed", "Method Not Allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Content Too Large"),
    414: ("uri_too_long", "URI Too Long"),
    415: ("unsupported_media_type", "Unsupported Media Type"),
    422: ("unprocessable_content", "Unprocessable Content"),
    429: ("too_many_requests", "Too Many Requests"),
    500: ("internal_error", "Internal Server Error"),
    503: ("service_unavailable", "Service Unavailable"),
}


def default_code(status: int) -> str:
    """The code of a problem of `status` that names none."""
    known = _STANDARD.get(status)
    return known[0] if known else f"http_{status}"


def default_title(status: int) -> str:
    """The title of a problem of `status` that names none: the status's reason phrase."""
    known = _STANDARD.get(status)
    if known:
        return known[1]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(status: int, detail: str, *, title: str | None = None, code: str | None = None,
            headers: Mapping[str, str] | None = None, type: str = "about:blank", **extra: Any) -> web.Response:
    """The problem document (RFC 9457) of a failure, as a response; the only place one is built."""
    body: dict[str, Any] = {"type": type, "title": title or default_title(status), "status": status,
                            "detail": detail, "code": code or default_code(status)}
    body.update(extra)  # (a keyword cannot name a standard member twice)
    from aiohttp import web  # here, not at the top: modules that only raise these errors load no HTTP stack

    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_JSON,
                        headers=dict(headers) if headers else None)


class DomainError(Exception):
    """A failure the caller is told about: an HTTP status, a stable code, a title and a detail.

    Subclasses name their ``status`` (and usually a ``code``) at class level; an instance may override
    either. ``detail`` (also ``str(error)``) must be safe to show the caller. ``headers`` go on the answer
    (``WWW-Authenticate``, ``Retry-After``: a 503 has one, ``RETRY_AFTER_SECONDS`` unless given); keyword
    ``extra`` members go into the problem document.
    """

    status: int = 400
    code: str | None = None
    title: str | None = None

    def __init__(self, detail: str = "", *, status: int | None = None, code: str | None = None,
                 title: str | None = None, headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status if status is not None else type(self).status
        self.code = code or type(self).code or default_code(self.status)
        self.title = title or type(self).title or default_title(self.status)
        self.headers: dict[str, str] = dict(headers or {})
        if self.status == 503 and not any(name.lower() == "retry-after" for name in self.headers):
            self.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        self.extra = extra

    def response(self) -> web.Response:
        """This error's problem document."""
        return problem(self.status, self.detail, title=self.title, code=self.code, headers=self.headers,
                       **self.extra)


class BadRequest(DomainError):
    status = 400


class Unauthorized(DomainError):
    status = 401


class Forbidden(DomainError):
    status = 403


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    """The request lost a race or contradicts the current state (another writer changed it)."""

    status = 409


class PayloadTooLarge(DomainError):
    status = 413


class UnsupportedMediaType(DomainError):
    status = 415


class Unprocessable(DomainError):
    status = 422


class TooManyRequests(DomainError):
    status = 429


class ServiceUnavailable(DomainError):
    status = 503


__all__ = ["PROBLEM_JSON", "RETRY_AFTER_SECONDS", "BadRequest", "Conflict", "DomainError", "Forbidden", "NotFound",
           "PayloadTooLarge", "ServiceUnavailable", "TooManyRequests", "Unauthorized", "Unprocessable",
           "UnsupportedMediaType", "default_code", "default_title", "problem"]
