"""Admin API of our CAs' lifecycle (`admin` token; docs/api.md "Certificates and CAs").

    POST /api/v1/cas/{ca}/ra/renew            {"mode"?}: a new RA certificate and key (split mode: both RA
                                              certificates); the previous RA still decrypts until it expires
    POST /api/v1/cas/{ca}/rollover/prepare    {"cross_sign"?, "subject"?}: the next CA, served by GetNextCACert
    POST /api/v1/cas/{ca}/rollover/activate   the prepared next CA issues (every server picks it up)

The actor recorded is the caller's token. `GET /api/v1/cas` is in `scep_server.web.admin_certs`.
"""
from __future__ import annotations

from aiohttp import web

from trustkit.http import read_json_object
from trustkit.problems import BadRequest, Conflict

from ..appkeys import RUNTIME
from ..ca import lifecycle
from .auth import ACTOR, requires


@requires("admin")
async def renew_ra(request: web.Request) -> web.Response:
    body = await read_json_object(request, empty={})
    unknown = sorted(set(body) - {"mode"})
    if unknown:
        raise BadRequest(f"unknown member {unknown[0]!r}; allowed: mode", code="invalid_input")
    mode = body.get("mode")
    if mode not in (None, "single", "split"):
        raise BadRequest("mode: \"single\" or \"split\"", code="invalid_input")
    renewed = await lifecycle.renew(request.app[RUNTIME], request.match_info["ca"], actor=request[ACTOR], mode=mode)
    assert renewed is not None  # an unconditional renewal always issues
    return web.json_response(renewed)


@requires("admin")
async def prepare_rollover(request: web.Request) -> web.Response:
    from ..ca.pkcs11 import HsmError, TokenUnavailable
    from ..ca.rollover import LabelTaken, PrepareNotUndone, RolloverPrepared

    body = await read_json_object(request, empty={})
    unknown = sorted(set(body) - {"cross_sign", "subject"})
    if unknown:
        raise BadRequest(f"unknown member {unknown[0]!r}; allowed: cross_sign, subject", code="invalid_input")
    cross_sign, subject = body.get("cross_sign", False), body.get("subject")
    if not isinstance(cross_sign, bool):
        raise BadRequest("cross_sign: true or false", code="invalid_input")
    if subject is not None and not (isinstance(subject, str) and 0 < len(subject) <= 1024):
        raise BadRequest("subject: an RFC 4514 name of 1 to 1024 characters", code="invalid_input")
    try:
        prepared = await lifecycle.prepare_rollover(request.app[RUNTIME], request.match_info["ca"],
                                                    actor=request[ACTOR], subject=subject, cross_sign=cross_sign)
    except RolloverPrepared as exc:
        raise Conflict(str(exc), code="rollover_prepared") from None
    except LabelTaken as exc:
        raise Conflict(str(exc), code="key_label_taken") from None
    except PrepareNotUndone as exc:
        raise Conflict(str(exc), code="rollover_prepare_not_undone") from None
    except HsmError as exc:
        if isinstance(exc, TokenUnavailable):
            raise  # its own answer: 503, try again
        # the token refused or failed a key (a mechanism, full): what the prepare made is removed
        raise Conflict(str(exc), code="token_refused") from None
    except ValueError as exc:
        raise BadRequest(f"subject: {exc}", code="invalid_input") from None
    return web.json_response(prepared)


@requires("admin")
async def activate_rollover(request: web.Request) -> web.Response:
    from ..ca.rollover import NotPrepared

    if await read_json_object(request, empty={}):
        raise BadRequest("the body is empty or {}", code="invalid_input")
    try:
        done = await lifecycle.activate_rollover(request.app[RUNTIME], request.match_info["ca"],
                                                 actor=request[ACTOR])
    except NotPrepared as exc:
        raise Conflict(str(exc), code="rollover_not_prepared") from None
    return web.json_response(done)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/cas/{ca}/ra/renew", renew_ra)
    app.router.add_post("/api/v1/cas/{ca}/rollover/prepare", prepare_rollover)
    app.router.add_post("/api/v1/cas/{ca}/rollover/activate", activate_rollover)
