"""Text that reaches no store: a NUL or bytes that are not UTF-8 in a path, query, header, cookie, cursor or
form; a charset Python does not know; an Accept header prometheus_client cannot read. Each ends in a 4xx (or
the route's own refusal), never a 500, on SQLite and on PostgreSQL (which refuses NUL in text, where SQLite
stores it).
"""
from __future__ import annotations

import asyncio
import base64
import json
import re

import pytest

from scep_server.console.model import csrf_token
from tests.adversarial.conftest import armed  # noqa: F401 - the armed server fixture (tokens, dyn profile, device)
from tests.adversarial.routes import RIGHT, body_for, required


async def send(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), 30)
        return int(data.split(b" ", 2)[1]), data
    finally:
        writer.close()


def req(method: str, target: bytes, headers: dict[bytes, bytes] | None = None, body: bytes | None = None) -> bytes:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [k + b": " + v for k, v in (headers or {}).items()]
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def cursor(values) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).rstrip(b"=")


async def console_session(armed) -> tuple[dict[bytes, bytes], bytes]:  # noqa: F811
    status, data = await send(armed.url, req("POST", b"/admin/login", {
        b"Content-Type": b"application/x-www-form-urlencoded"}, b"token=" + armed.admin.encode()))
    assert status == 303, data[:300]
    sid = re.search(rb"console_session=([^;]+);", data).group(1)
    return {b"Cookie": b"console_session=" + sid}, csrf_token(sid.decode()).encode()


async def run(armed, cases) -> None:  # noqa: F811
    failures = []
    for name, request in cases:
        status, data = await send(armed.url, request)
        if status >= 500:
            line = request.split(b"\r\n")[0]
            failures.append(f"{name}: {status} {line!r}")
    assert not failures, "\n" + "\n".join(failures)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_any_database(armed):  # noqa: F811
    A = {b"Authorization": b"Bearer " + armed.admin.encode()}
    C, csrf = await console_session(armed)
    surrogate_dt_str = cursor(["2026-01-01T00:00:00", "\ud800"])
    cases = [
        # pre-auth, public routes
        ("challenge page, Basic with a non-ASCII credential", req("GET", b"/scep/dyn/challenge", {b"Authorization": b"Basic \xc3\xa9"})),
        ("jamf webhook, Basic with a non-ASCII credential", req("POST", b"/hooks/jamf", {b"Authorization": b"Basic \xc3\xa9"}, b"{}")),
        ("jamf webhook, X-Webhook-Secret not UTF-8", req("POST", b"/hooks/jamf", {b"X-Webhook-Secret": b"\xff"}, b"{}")),
        ("any bearer route, token not UTF-8", req("GET", b"/api/v1/devices", {b"Authorization": b"Bearer \xff"})),
        ("otp route, token not UTF-8", req("GET", b"/api/v1/yubikeys", {b"Authorization": b"Bearer \xff"})),
        ("metrics, OpenMetrics Accept with a non-numeric version", req("GET", b"/metrics", {b"Accept": b"application/openmetrics-text; version=abc"})),
        ("console sign-in, unknown form charset", req("POST", b"/admin/login", {b"Content-Type": b"application/x-www-form-urlencoded; charset=bogus"}, b"token=x")),
        # authenticated (admin token / console session)
        ("console sign-in with a non-UTF-8 old cookie", req("POST", b"/admin/login", {
            b"Content-Type": b"application/x-www-form-urlencoded", b"Cookie": b"console_session=\xff"}, b"token=" + armed.admin.encode())),
        ("console POST, unknown form charset", req("POST", b"/admin/tokens", {**C, b"Content-Type": b"application/x-www-form-urlencoded; charset=bogus"}, b"csrf=" + csrf)),
        ("API certificates, cursor with a lone surrogate", req("GET", b"/api/v1/certificates?cursor=" + surrogate_dt_str, A)),
        ("API devices, cursor with a lone surrogate", req("GET", b"/api/v1/devices?cursor=" + surrogate_dt_str, A)),
        ("API tokens, cursor with a lone surrogate", req("GET", b"/api/v1/tokens?cursor=" + surrogate_dt_str, A)),
        ("API profiles, cursor with a lone surrogate", req("GET", b"/api/v1/profiles?cursor=" + cursor(["\ud800"]), A)),
        ("API external-cas, cursor with a lone surrogate", req("GET", b"/api/v1/external-cas?cursor=" + cursor(["\ud800"]), A)),
        ("API enrolments, cursor with a lone surrogate", req("GET", b"/api/v1/enrolments?cursor=" + cursor(["2026-01-01T00:00:00", "\ud800", "x"]), A)),
        ("console certificates, cursor with a lone surrogate", req("GET", b"/admin/certificates?cursor=" + surrogate_dt_str, C)),
    ]
    await run(armed, cases)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_postgresql(armed):  # noqa: F811
    A = {b"Authorization": b"Bearer " + armed.admin.encode()}
    J = {**A, b"Content-Type": b"application/json"}
    basic = {b"Authorization": b"Basic " + base64.b64encode(b"mdm-user:correct horse battery staple")}
    C, csrf = await console_session(armed)
    cases = [
        # pre-auth, public routes
        ("SCEP GetCACaps, profile %00", req("GET", b"/scep/%00?operation=GetCACaps")),
        ("SCEP PKIOperation, profile %00", req("POST", b"/scep/%00?operation=PKIOperation", {}, b"\x30\x00")),
        ("challenge page, profile %00", req("GET", b"/scep/%00/challenge", basic)),
        # admin token
        ("API device %00", req("GET", b"/api/v1/devices/%00", A)),
        ("API profile %00", req("GET", b"/api/v1/profiles/%00", A)),
        ("API token %00 rotate", req("POST", b"/api/v1/tokens/%00/rotate", J, b"{}")),
        ("API external CA %00", req("DELETE", b"/api/v1/external-cas/%00", A)),
        ("API challenges/%00", req("POST", b"/api/v1/challenges/%00", J, b"{}")),
        ("API yubikeys user=%00", req("GET", b"/api/v1/yubikeys?user=%00", A)),
        ("API devices, cursor with a NUL", req("GET", b"/api/v1/devices?cursor=" + cursor(["2026-01-01T00:00:00", "\u0000"]), A)),
        ("API tokens, cursor time beyond 9999 in UTC", req("GET", b"/api/v1/tokens?cursor=" + cursor(["9999-12-31T23:59:59-14:00", "a"]), A)),
        ("API certificates, cursor time before year 1 in UTC", req("GET", b"/api/v1/certificates?cursor=" + cursor(["0001-01-01T00:00:00+14:00", "a"]), A)),
        # console session
        ("console profile %00", req("GET", b"/admin/profiles/%00", C)),
        ("console device suspend, reason %00", req("POST", b"/admin/devices/" + armed.device_id.encode() + b"/suspend", {
            **C, b"Content-Type": b"application/x-www-form-urlencoded"}, b"csrf=" + csrf + b"&reason=%00")),
    ]
    await run(armed, cases)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_nul_in_any_path_or_query_parameter_is_a_400(armed):  # noqa: F811
    """Every route of the router, with the right credential: each path parameter in turn, then an extra query
    parameter, holding `%00` (answered 400 before any handler looks it up) or an escape that is no UTF-8 (left as
    it is by yarl: never a 500)."""
    creds = armed.credentials()
    wrong, tried = [], 0
    async with armed.session() as session:
        for method, canonical in sorted({(r.method, r.resource.canonical) for r in armed.srv.app.router.routes()}):
            if method == "HEAD":
                continue
            need = required(canonical)
            headers = dict(creds[RIGHT[need]]) if need != "public" else {}
            names = re.findall(r"\{(\w+)\}", canonical)
            sep = "&" if "?" in canonical else "?"
            variants = [(re.sub(r"\{%s\}" % name, "%00", canonical), True) for name in names]
            variants += [(re.sub(r"\{%s\}" % name, "a%FFb", canonical), False) for name in names]
            variants += [(canonical + sep + "x=%00", True), (canonical + sep + "x=%ED%A0%80", False)]
            for variant, nul in variants:  # yarl leaves a %-escape that is no UTF-8 as it is: no 400 needed there
                body, ctype = body_for(armed, method, canonical)
                path = armed.route_path(variant)
                async with session.request(method, armed.raw_url(path), headers={**headers, **ctype}, data=body,
                                           allow_redirects=False) as resp:
                    tried += 1
                    if (resp.status != 400) if nul else (resp.status >= 500):
                        wrong.append(f"{method} {path} -> {resp.status} {(await resp.read())[:120]!r}")
    assert tried > 60
    assert not wrong, "\n".join(wrong)
