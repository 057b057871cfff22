"""The one error middleware: how every route answers a failure (docs/api.md "Errors").

Handlers raise; they do not build error responses. A :class:`~trustkit.problems.DomainError` becomes its
problem document (RFC 9457, problem+json), an unavailable database a 503 problem with
``Retry-After`` on every path, a body that cannot be read a 400, anything else a 500 whose cause goes to
the log and never to the client. A path or query parameter that no store can hold (a NUL, what ``%00``
decodes to) is a 400 on every route, before any handler looks it up (:func:`check_url_text`; a
sub-application, the console, calls it itself to answer in its pages). Protocol routes marked with
:func:`trustkit.http.text_errors` (SCEP, the validation protocol) answer an unreadable body (400) and the 500 in
plain text, as their own errors are; a DomainError, the `%00` 400 included, is a problem document there too.
"""
from __future__ import annotations

import structlog
from aiohttp import web

from trustkit.http import UNREADABLE_BODY, error_response, internal_error, unavailable, wants_text
from trustkit.problems import BadRequest, DomainError
from trustkit.text import unstorable

log = structlog.get_logger("http")


@web.middleware
async def errors(request: web.Request, handler):
    try:
        if "%00" in request.raw_path and len(request.match_info.apps) <= 1:
            check_url_text(request)
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure gets an answer that leaks nothing
        text = wants_text(request)
        answer = error_response(exc, text=text)
        if answer is None:
            log.exception("http.unhandled", method=request.method, path=request.path)
            return internal_error(text=text)
        if isinstance(exc, UNREADABLE_BODY):
            # named, not quoted: aiohttp's parsers quote the bytes they could not parse in their messages
            detail = (exc.__cause__ or exc).__class__.__name__
            log.info("http.bad_body", method=request.method, path=request.path, detail=detail)
        elif not isinstance(exc, DomainError) and unavailable(exc):
            log.warning("http.database_unavailable", method=request.method, path=request.path,
                        error=f"{exc.__class__.__name__}: {str(exc)[:200]}")
        return answer


def check_url_text(request: web.Request) -> None:
    """Raise BadRequest for a path or query parameter that holds text no store can hold. Only a URL with a `%00`
    can: the HTTP parser refuses control characters and bytes beyond ASCII written as they are, and yarl leaves a
    %-escape that is no UTF-8 as it is. Other URLs are not decoded again here."""
    if "%00" not in request.raw_path:
        return
    for where, items in (("path", request.match_info.items()), ("query", request.query.items())):
        for name, value in items:
            why = unstorable(name) or unstorable(value)
            if why is not None:
                raise BadRequest(f"a {where} parameter contains {why}", code="invalid_input")
