"""What every console page handler uses: the request keys the middleware fills (the session, its id, the
checked form), the runtime, rendering a template with the session's principal and CSRF token, and the redirect
after a POST, the multipart forms' registry, the OTP service. The page modules (web.py, profiles.py, tokens.py,
otpclients.py, externalcas.py, audit.py) import it; it imports none of them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp_jinja2
from aiohttp import web

from ..appkeys import RUNTIME
from .model import Session, csrf_token

if TYPE_CHECKING:
    from ..runtime import Runtime

PREFIX = "/admin"
SESSION = web.RequestKey("console_session", Session)
SESSION_ID = web.RequestKey("console_session_id", str)
FORM = web.RequestKey("console_form", object)  # the checked form of a POST
UPLOAD = web.RequestKey("console_upload", bytes)  # the file of a multipart POST (the YubiKey import)
# other pages' multipart forms: path -> the bound on the request's file (each page adds its own)
MULTIPART: dict[str, Any] = {}


def runtime(request: web.Request) -> "Runtime":
    return request.config_dict[RUNTIME]


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def page(request: web.Request, template: str, context: dict[str, Any], *, status: int = 200) -> web.Response:
    base = {"principal": request[SESSION].principal if SESSION in request else None,
            "csrf": csrf_token(request[SESSION_ID]) if SESSION_ID in request else None}
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


def form(request: web.Request) -> Any:
    """The POSTed form, its CSRF token checked (by the console's middleware)."""
    return request[FORM]


def otp(request: web.Request):
    """The OTP service (404 where the otp capability is off: no YubiKeys here)."""
    service = runtime(request).otp
    if service is None:
        raise web.HTTPNotFound()
    return service
