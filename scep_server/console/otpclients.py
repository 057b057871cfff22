"""The console's OTP clients page (the Yubico validation protocol 2.0 API clients, `scep-server otp-client`,
/api/v1/otp-clients), with the rules of the command line and the API (``OtpService``):

    GET  /admin/otp-clients                    the clients by id, cursor pages (``limit``, ``cursor``)
    GET|POST /admin/otp-clients/new            a form (name, accept unsigned requests), then the new client: its
                                               API key is shown on that answer only (never stored in clear)
    GET|POST /admin/otp-clients/{id}/{allow-unsigned|require-signed|disable}   a confirmation form, the change

Every change is an ``otp.client.*`` event whose actor is the session's principal.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from trustkit import paging
from trustkit.problems import BadRequest, DomainError, NotFound

from .pages import PREFIX, SESSION, form as _form, otp as _otp, page as _page, redirect as _redirect

ACTIONS = ("allow-unsigned", "require-signed", "disable")
MAX_NAME = 255


def _client_id(request: web.Request) -> int:
    """The id of the path: 400 unless ASCII digits, 404 beyond the ids a client can have."""
    from otp.report import parse_number
    from otp.service import MAX_CLIENT_ID

    client_id = parse_number(request.match_info["id"], "client id")  # InvalidInput: 400
    if not 0 < client_id <= MAX_CLIENT_ID:
        raise NotFound(f"no OTP client with id {client_id}")
    return client_id


def _action(request: web.Request) -> str:
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise web.HTTPNotFound()
    return action


def _client_json(info: Any) -> dict[str, Any]:
    return info.to_json()


async def client_list(request: web.Request) -> web.Response:
    from otp.service import CLIENT_LIST_KEY

    otp = _otp(request)
    error, rows, next_url = None, [], None
    try:
        page = await otp.list_clients(paging.page_request(request.query, CLIENT_LIST_KEY, default=50))
        rows, next_url = [_client_json(c) for c in page.items], paging.next_link(request.rel_url, page)
    except DomainError as exc:
        if exc.status != 400:
            raise
        error = exc.detail
    return _page(request, "otp_clients.jinja2", {"rows": rows, "next_url": next_url, "error": error},
                 status=400 if error else 200)


async def new_client_page(request: web.Request) -> web.Response:
    _otp(request)
    return _page(request, "otp_client_new.jinja2", {"created": None, "key": None, "name": "", "error": None})


async def add_client(request: web.Request) -> web.Response:
    """Create a client; this answer is the only place its API key is ever shown."""
    otp = _otp(request)
    form = _form(request)
    name = form.get("name", "")
    unsigned = form.get("allow_unsigned", "")
    if not isinstance(name, str) or not isinstance(unsigned, str) or unsigned not in ("", "1", "on"):
        raise BadRequest("name: text; allow_unsigned: 1 or nothing", code="invalid_input")
    try:
        info, key = await otp.add_client(name, allow_unsigned=bool(unsigned), actor=request[SESSION].principal)
    except DomainError as exc:  # a name the service refuses: the form again, with what is wrong
        if exc.status != 400:
            raise
        return _page(request, "otp_client_new.jinja2", {"created": None, "key": None, "name": name[:MAX_NAME],
                                                        "error": exc.detail}, status=400)
    return _page(request, "otp_client_new.jinja2", {"created": _client_json(info), "key": key, "name": "",
                                                    "error": None}, status=201)


async def client_confirm(request: web.Request) -> web.Response:
    otp = _otp(request)
    action, client_id = _action(request), _client_id(request)
    info = await otp.get_client(client_id)
    return _page(request, "otp_client_confirm.jinja2", {"client": _client_json(info), "action": action})


async def client_change(request: web.Request) -> web.Response:
    otp = _otp(request)
    action, client_id = _action(request), _client_id(request)
    actor = request[SESSION].principal
    if action == "disable":
        await otp.disable_client(client_id, actor=actor)  # already disabled: Conflict (409), as on the CLI
    else:
        await otp.set_client_unsigned(client_id, action == "allow-unsigned", actor=actor)
    return _redirect(f"{PREFIX}/otp-clients")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/otp-clients", client_list)
    app.router.add_get("/otp-clients/new", new_client_page)
    app.router.add_post("/otp-clients/new", add_client)
    app.router.add_get("/otp-clients/{id}/{action}", client_confirm)
    app.router.add_post("/otp-clients/{id}/{action}", client_change)
