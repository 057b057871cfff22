"""The error model (trustkit.problems), the shared HTTP helpers (trustkit.http), and the rule that a problem
document is built in one place only."""
from __future__ import annotations

import errno
import json
import re
import socket
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from sqlalchemy import exc as sa_exc

from otp import errors as otp_errors
from scep_server.binding import errors as binding_errors
from trustkit import problems
from trustkit.http import BadJSON, bearer_caller, read_json_object, unavailable, www_authenticate
from trustkit.problems import Conflict, DomainError, NotFound, problem

ROOT = Path(__file__).resolve().parents[1]


def _body(resp: web.Response) -> dict:
    return json.loads(resp.text)


def test_a_domain_error_renders_as_a_problem_document():
    resp = Conflict("enrolment 'x' was decided concurrently", headers={"Retry-After": "1"}).response()
    assert resp.status == 409 and resp.content_type == "application/problem+json"
    assert resp.headers["Retry-After"] == "1"
    assert _body(resp) == {"type": "about:blank", "title": "Conflict", "status": 409,
                           "detail": "enrolment 'x' was decided concurrently", "code": "conflict"}


def test_subclasses_name_status_and_code_and_instances_may_override():
    class Gone(DomainError):
        status = 410
        code = "gone_for_good"

    err = Gone("bye")
    assert (err.status, err.code, err.title, str(err)) == (410, "gone_for_good", "Gone", "bye")
    err = DomainError("rejected", status=403, code="replayed_otp", title="OTP rejected", reason="replayed_otp")
    assert _body(err.response()) == {"type": "about:blank", "title": "OTP rejected", "status": 403,
                                     "detail": "rejected", "code": "replayed_otp", "reason": "replayed_otp"}
    assert DomainError("x", status=499).code == "http_499"
    assert problems.ServiceUnavailable("down").response().headers["Retry-After"] == "5"
    assert problems.ServiceUnavailable("busy", headers={"Retry-After": "1"}).headers == {"Retry-After": "1"}
    assert "Retry-After" not in NotFound("x").headers


def test_extra_members_follow_the_standard_ones():
    body = _body(problem(422, "2 problems", code="import_rejected", errors=[{"line": 1}], valid=False))
    assert list(body) == ["type", "title", "status", "detail", "code", "errors", "valid"]
    assert body["title"] == "Unprocessable Content" and body["errors"] == [{"line": 1}]


def test_the_libraries_errors_are_domain_errors_with_one_status_name():
    assert issubclass(otp_errors.OtpError, DomainError) and issubclass(binding_errors.BindingError, DomainError)
    assert issubclass(otp_errors.Conflict, problems.Conflict) and issubclass(otp_errors.NotFound, problems.NotFound)
    assert issubclass(binding_errors.InvalidTransition, problems.Conflict)
    assert issubclass(binding_errors.ChangedConcurrently, binding_errors.InvalidTransition)
    assert binding_errors.DeviceNotFound("no device").status == 404
    assert binding_errors.ChangedConcurrently("d changed").code == "changed_concurrently"
    assert otp_errors.PayloadTooLarge("big", limit=5).response().status == 413
    assert not hasattr(binding_errors.BindingError, "http_status")


def test_www_authenticate_has_one_format_and_quotes_its_values():
    assert www_authenticate("Bearer", "device-trust", scope="admin") == {
        "WWW-Authenticate": 'Bearer realm="device-trust", scope="admin"'}
    assert www_authenticate("Basic", 'a "b"\\\r\nc', charset="UTF-8") == {
        "WWW-Authenticate": 'Basic realm="a \\"b\\"\\\\c", charset="UTF-8"'}


@pytest.mark.parametrize("exc, expected", [
    (sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError(111, "refused")), True),
    (sa_exc.InterfaceError("SELECT 1", {}, Exception("closed")), True),
    (sa_exc.TimeoutError("QueuePool limit reached"), True),
    (sa_exc.DBAPIError("SELECT 1", {}, Exception("x"), connection_invalidated=True), True),
    (asyncpg.exceptions.CannotConnectNowError("starting up"), True),
    (asyncpg.exceptions.TooManyConnectionsError("too many"), True),
    (TimeoutError(), True),
    (OSError(errno.EHOSTUNREACH, "No route to host"), True),
    (socket.gaierror(-2, "Name or service not known"), True),
    (OSError("Multiple exceptions: [Errno 111] Connect call failed"), True),  # every address of a host refused
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), True),  # PostgreSQL's Unix socket not there
    # a file name too long is the request's or the code's, not a database outage
    (OSError(errno.ENAMETOOLONG, "File name too long"), False),
    (sa_exc.IntegrityError("INSERT", {}, Exception("unique")), False),
    (sa_exc.ProgrammingError("SELECT", {}, Exception("no such column")), False),
    (ValueError("bad"), False),
    (KeyError("x"), False),
])
def test_what_counts_as_an_unavailable_database(exc, expected):
    assert unavailable(exc) is expected


def test_an_unavailable_database_is_found_behind_a_wrapper():
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as inner:
            raise RuntimeError("while committing") from inner
    except RuntimeError as outer:
        assert unavailable(outer)


async def _app(aiohttp_client, handler, *, client_max_size: int = 1024):
    async def wrapped(request):
        try:
            return await handler(request)
        except DomainError as exc:
            return exc.response()
    app = web.Application(client_max_size=client_max_size)
    app.router.add_post("/", wrapped)
    return await aiohttp_client(app)


async def test_the_json_reader_answers_400_and_413_problems(aiohttp_client):
    async def echo(request):
        return web.json_response(await read_json_object(request, empty={"empty": True}))

    client = await _app(aiohttp_client, echo)
    assert await (await client.post("/")).json() == {"empty": True}
    assert await (await client.post("/", data=b'{"a": 1}')).json() == {"a": 1}
    for bad in (b'{"a": 1, "a": 2}', b"[1]", b'{"a": NaN}', b'{"a": "\\u0000"}', b"\xff", b"[" * 100):
        resp = await client.post("/", data=bad)
        assert resp.status == 400 and resp.content_type == "application/problem+json", bad
        assert (await resp.json())["code"] == "invalid_input"
    resp = await client.post("/", data=b'{"a": "' + b"x" * 2048 + b'"}')
    assert resp.status == 413 and resp.content_type == "application/problem+json"
    assert "1024" in (await resp.json())["detail"]


async def test_the_bearer_check(aiohttp_client):
    async def authenticate(request, token):
        return {"a": ("admin", "token:a"), "s": ("signin", "token:s")}.get(token)

    async def handler(request):
        return web.json_response({"caller": await bearer_caller(request, "admin", authenticate, realm="here")})

    client = await _app(aiohttp_client, handler)
    for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer "},
                    {"Authorization": "Bearer nope"}):
        resp = await client.post("/", headers=headers)
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Bearer realm="here", scope="admin"'
    resp = await client.post("/", headers={"Authorization": "Bearer s"})
    assert resp.status == 403 and "'admin'" in (await resp.json())["detail"]
    assert "WWW-Authenticate" not in resp.headers
    resp = await client.post("/", headers={"Authorization": "bearer a"})
    assert resp.status == 200 and (await resp.json()) == {"caller": "token:a"}


def test_a_not_found_is_not_a_conflict():
    assert not isinstance(NotFound("x"), Conflict) and Conflict("x").status == 409
    assert isinstance(BadJSON("x"), ValueError) and BadJSON("x").status == 400


def test_one_problem_builder_in_the_tree():
    """Only trustkit/problems.py names the problem+json media type: every problem document is built there."""
    literal = re.compile(r"application/problem\+json")
    offenders = [str(path.relative_to(ROOT)) for package in ("scep_server", "crl", "otp", "trustkit", "bench")
                 for path in sorted((ROOT / package).rglob("*.py"))
                 if literal.search(path.read_text()) and path != ROOT / "trustkit" / "problems.py"]
    assert offenders == []
    builders = [str(path.relative_to(ROOT)) for package in ("scep_server", "crl", "otp", "trustkit")
                for path in sorted((ROOT / package).rglob("*.py"))
                if re.search(r"^\s*def problem\(", path.read_text(), re.MULTILINE)]
    assert builders == ["trustkit/problems.py"]
