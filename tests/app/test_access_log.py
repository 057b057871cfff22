"""Request ids and the access log, against a real server (in-process, on a loopback port)."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
import structlog
from aiohttp import web

from scep_server import logs
from scep_server.logs import access_line, configure, flush_access
from scep_server.web.access import UNMATCHED, request_id
from tests.factories import NOW
from tests.server import start_app

GENERATED = re.compile(r"[0-9a-f]{16}")


@pytest.fixture
def json_logs():
    """Logging set up as a server does it (JSON lines on stderr), removed afterwards."""
    root = logging.getLogger()
    before = list(root.handlers), root.level

    def setup(level: str = "info") -> None:
        configure(level, "json")

    yield setup
    flush_access()  # this test's lines, not the next one's
    for handler in list(root.handlers):
        if handler not in before[0]:
            root.removeHandler(handler)
    root.setLevel(before[1])


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def access_lines(capsys) -> list[dict]:
    """The access lines written so far, after writing those still waiting (what a worker's exit does)."""
    flush_access()
    return [line for line in lines(capsys) if line["event"] == "http.access"]


async def admin_token(server) -> str:
    return (await server.runtime.tokens.create(scope="admin", name="admin-tests", now=NOW))[1]


@pytest.fixture
async def server(aiohttp_server, tmp_path, json_logs):
    json_logs("warning")  # the access line is written whatever log.level is
    return await start_app(aiohttp_server, tmp_path, log={"access": True},
                           server={"trusted_proxies": ["127.0.0.0/8"]})


async def test_one_access_line_per_request_with_the_route_template(server, capsys):
    token = await admin_token(server)
    capsys.readouterr()
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get("/healthz") as r:
            assert r.status == 200
            healthz_id = r.headers["X-Request-ID"]
        async with http.get("/api/v1/devices/no-such-device", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 404 and r.content_type == "application/problem+json"
            problem_id = r.headers["X-Request-ID"]
        async with http.get("/api/v1/devices/also-missing") as r:  # refused before the handler: 401
            assert r.status == 401
            refused_id = r.headers["X-Request-ID"]
    healthz, problem, refused = access_lines(capsys)
    assert healthz == {"event": "http.access", "level": "info", "method": "GET", "route": "/healthz", "status": 200,
                       "duration_ms": healthz["duration_ms"], "client": "127.0.0.1", "request_id": healthz_id,
                       "timestamp": healthz["timestamp"]}
    assert isinstance(healthz["duration_ms"], float) and 0 <= healthz["duration_ms"] < 10_000
    assert GENERATED.fullmatch(healthz_id)
    assert (problem["route"], problem["status"], problem["request_id"]) == (
        "/api/v1/devices/{device_id}", 404, problem_id)
    assert (refused["route"], refused["status"], refused["request_id"]) == (
        "/api/v1/devices/{device_id}", 401, refused_id)
    assert len({healthz_id, problem_id, refused_id}) == 3


async def test_unmatched_paths_and_methods_log_a_placeholder_and_echo_the_id(server, capsys):
    hostile = "/" + "x" * 300 + "/%2e%2e/%00?" + "q=" + "y" * 50
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get(hostile) as r:
            assert r.status == 404 and GENERATED.fullmatch(r.headers["X-Request-ID"])
            not_found = r.headers["X-Request-ID"]
        async with http.post("/healthz", headers={"X-Request-ID": "proxy-7"}) as r:
            assert r.status == 405 and r.headers["X-Request-ID"] == "proxy-7"
        async with http.request("PROPFIND", "/healthz") as r:
            assert r.status == 405 and GENERATED.fullmatch(r.headers["X-Request-ID"])
    found = access_lines(capsys)
    assert [(a["method"], a["route"], a["status"]) for a in found] == [
        ("GET", UNMATCHED, 404), ("POST", UNMATCHED, 405), ("OTHER", UNMATCHED, 405)]
    assert [a["request_id"] for a in found][:2] == [not_found, "proxy-7"]
    assert "x" * 20 not in json.dumps(found)


async def test_client_address_honours_trusted_proxies(server, capsys):
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get("/healthz", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}) as r:
            assert r.status == 200
    (line,) = access_lines(capsys)
    assert line["client"] == "203.0.113.5"


@pytest.mark.parametrize("offered,accepted", [
    ("abc-123.x:y_Z", True),
    ("r" * 128, True),
    ("r" * 129, False),
    ("two words", False),
    ("caf\u00e9", False),
    ("a/b", False),
    ("", False),
    ("{\"json\": 1}", False),
])
def test_request_id_is_taken_only_when_short_and_safe(offered, accepted):
    rid = request_id(offered)
    assert (rid == offered) is accepted
    if not accepted:
        assert GENERATED.fullmatch(rid)
    assert request_id(None) != request_id(None)


async def test_offered_ids_echoed_and_unsafe_ones_replaced(server, capsys):
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get("/readyz", headers={"X-Request-ID": "lb:0a1b.2c-3d_4"}) as r:
            assert r.headers["X-Request-ID"] == "lb:0a1b.2c-3d_4"
        async with http.get("/readyz", headers={"X-Request-ID": "x" * 129}) as r:
            assert GENERATED.fullmatch(r.headers["X-Request-ID"])
        async with http.get("/readyz", headers={"X-Request-ID": "a\tb"}) as r:
            assert GENERATED.fullmatch(r.headers["X-Request-ID"])
    assert [a["request_id"] for a in access_lines(capsys)][0] == "lb:0a1b.2c-3d_4"


async def test_every_line_of_a_request_carries_its_id_and_the_next_request_does_not(server, capsys, json_logs):
    json_logs("info")
    token = await admin_token(server)
    headers = {"Authorization": f"Bearer {token}"}
    capsys.readouterr()
    async with aiohttp.ClientSession(server.url) as http:  # one keep-alive connection for both requests
        async with http.post("/api/v1/devices", json={"id": "laptop-17"},
                             headers={**headers, "X-Request-ID": "create-17"}) as r:
            assert r.status == 201, await r.text()
        async with http.post("/api/v1/devices", json={"id": "laptop-18"}, headers=headers) as r:
            assert r.status == 201
            second = r.headers["X-Request-ID"]
    events = lines(capsys)
    created = [e for e in events if e["event"] == "device.create"]
    assert [(e["device"], e["request_id"]) for e in created] == [("laptop-17", "create-17"), ("laptop-18", second)]


async def test_no_access_line_by_default_but_the_id_is_echoed(aiohttp_server, tmp_path, json_logs, capsys):
    json_logs("info")
    server = await start_app(aiohttp_server, tmp_path)
    assert server.settings.log.access is False
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get("/nowhere", headers={"X-Request-ID": "given"}) as r:
            assert r.status == 404 and r.headers["X-Request-ID"] == "given"
        async with http.post("/api/v1/devices", data=b"{") as r:
            assert r.status == 401 and GENERATED.fullmatch(r.headers["X-Request-ID"])
    assert access_lines(capsys) == []



def test_a_worker_writes_its_waiting_lines_and_increments_before_it_exits(monkeypatch):
    from scep_server import serve

    done = []
    monkeypatch.setattr(serve, "flush_access", lambda: done.append("access"))
    monkeypatch.setattr("scep_server.metrics.flush", lambda: done.append("metrics"))
    serve._flush_buffers()
    assert sorted(done) == ["access", "metrics"]


def test_the_json_access_line_escapes_what_it_is_given(json_logs, capsys):
    from scep_server.logs import access_line

    json_logs("error")
    access_line(method="GET", route='/a"b\\c', status=404, duration_ms=1.5, client="x\n\u00e9\"", request_id="r-1")
    (line,) = lines(capsys)
    assert (line["route"], line["client"], line["status"], line["duration_ms"], line["level"]) == (
        '/a"b\\c', "x\n\u00e9\"", 404, 1.5, "info")
    assert line["timestamp"].endswith("Z")


async def test_console_format_writes_the_access_line_too(aiohttp_server, tmp_path, capsys):
    root = logging.getLogger()
    handlers = list(root.handlers)
    configure("warning", "console")
    try:
        server = await start_app(aiohttp_server, tmp_path, log={"access": True, "format": "console"})
        async with aiohttp.ClientSession(server.url) as http, http.get("/healthz") as r:
            rid = r.headers["X-Request-ID"]
        (line,) = [x for x in capsys.readouterr().err.splitlines() if "http.access" in x]
        assert "route=/healthz" in line and "status=200" in line and f"request_id={rid}" in line
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)


def test_console_format_escapes_the_control_characters_a_client_chose(capsys):
    root = logging.getLogger()
    handlers = list(root.handlers)
    configure("info", "console")
    try:
        capsys.readouterr()
        # no space, quote or line break: such a value is written unquoted, as it is
        forged = "admin\x1b[2K\x1b[1Gotp.verified\u2028\x85\x00"
        structlog.get_logger("challenge").warning("challenge.page_refused", username=forged)
        logging.getLogger("otp").warning("otp.refused", extra={"user": forged})
        access_line(method="GET", route="/x", status=400, duration_ms=1.0, client=forged, request_id="r-1")
        try:
            raise ValueError(f"boom {forged}")  # an exception's message may quote what a client sent
        except ValueError:
            structlog.get_logger("x").exception("failed")
        err = capsys.readouterr().err
        lines = err.splitlines()
        for event in ("challenge.page_refused", "otp.refused", "http.access"):
            (line,) = [x for x in lines if event in x]
            assert r"admin\x1b[2K\x1b[1Gotp.verified\u2028\x85\x00" in line
        assert "\x1b" not in err and "\u2028" not in err  # nothing that moves a terminal's cursor or ends a line
        assert "Traceback (most recent call last):\n" in err  # a traceback keeps its lines
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)


def test_log_access_setting(monkeypatch):
    from scep_server.config import ConfigError, load_settings

    assert load_settings(None).log.access is False
    monkeypatch.setenv("SCEP_SERVER_LOG__ACCESS", "true")
    assert load_settings(None).log.access is True
    with pytest.raises(ConfigError, match="log.acces"):
        load_settings(None, log={"acces": True})  # a misspelt key is an error, not a silent no-op


async def test_a_request_that_does_not_parse_is_one_info_line_without_traceback(server, capsys, json_logs):
    import asyncio

    json_logs("info")
    capsys.readouterr()
    host, port = server.url.removeprefix("http://").split(":")
    secrets = (base64.b64encode(b"admin:S3cretPassw0rd").decode(), "dt_admin_TOPSECRET")
    for raw in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n",
                # a credential on the line that does not parse is not copied into the log
                f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {secrets[0]}\x01\r\n\r\n".encode(),
                f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secrets[1]}\x7f\r\n\r\n".encode()):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert b" 400 Bad Request\r\n" in answer
    events = [e for e in lines(capsys) if e.get("logger") != "aiohttp.access"]  # the test server's own log
    malformed = [e for e in events if e["event"] == "http.malformed_request"]
    assert [(e["level"], e["status"], e["peer"]) for e in malformed] == [("info", 400, "127.0.0.1")] * 4
    assert not any(secret in json.dumps(events) for secret in secrets)
    assert malformed[2]["detail"] == "Invalid header value char", malformed[2]
    assert "exception" not in json.dumps(malformed)
    assert not [e for e in events if e.get("logger") == "aiohttp.server"]


async def test_malformed_requests_are_not_logged_above_info(server, capsys):
    import asyncio

    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\n\r\n")
    assert b" 400 Bad Request\r\n" in await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert [e["event"] for e in lines(capsys)
            if e["event"] != "http.access" and e.get("logger") != "aiohttp.access"] == []


@pytest.mark.parametrize("raised,status", [(asyncio.CancelledError, 499), (RuntimeError, 500)])
async def test_a_handler_that_does_not_answer_is_logged_with_its_status(json_logs, capsys, raised, status):
    from aiohttp.test_utils import make_mocked_request
    from scep_server.web.access import middleware

    json_logs("info")

    async def handler(request):
        raise raised("boom")

    from aiohttp.web_urldispatcher import MatchInfoError
    from scep_server.web import client

    request = make_mocked_request("GET", "/x", headers={"X-Request-ID": "gone-1"})
    request._match_info = MatchInfoError(web.HTTPNotFound())
    request[client.KEY] = "192.0.2.1"
    with pytest.raises(raised):
        await middleware(True)(request, handler)
    await asyncio.sleep(0)  # the line goes out when the loop's turn ends
    (line,) = access_lines(capsys)
    assert (line["status"], line["request_id"], line["client"]) == (status, "gone-1", "192.0.2.1")


def test_an_access_line_that_cannot_be_written_does_not_fail_the_request(json_logs, monkeypatch):
    from scep_server.logs import access_line

    class Gone:
        def write(self, _text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise ValueError("I/O operation on closed file")

    json_logs("info")
    monkeypatch.setattr("sys.stderr", Gone())
    access_line(method="GET", route="/healthz", status=200, duration_ms=0.1, client="127.0.0.1", request_id="r")


async def test_access_lines_wait_a_moment_or_for_a_batch_then_go_out_in_one_write(json_logs, monkeypatch):
    """A write costs more than a line: the lines of ACCESS_FLUSH_SECONDS, or ACCESS_FLUSH_LINES of them, go out in
    one write, each stamped with the time it was queued (not the time of the write)."""
    from scep_server.logs import access_line

    json_logs("info")
    writes: list[str] = []

    class Stream:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr("sys.stderr", Stream())
    before = datetime.now(timezone.utc) - timedelta(milliseconds=1)  # the stamp is cut to the microsecond
    for i in range(3):
        access_line(method="GET", route="/healthz", status=200, duration_ms=0.1, client="192.0.2.1",
                    request_id=f"r{i}")
    queued = datetime.now(timezone.utc)
    await asyncio.sleep(0)
    assert writes == []  # not yet: a few turns of the loop later, more may come
    await asyncio.sleep(logs.ACCESS_FLUSH_SECONDS * 2)
    assert len(writes) == 1 and [json.loads(x)["request_id"] for x in writes[0].splitlines()] == ["r0", "r1", "r2"]
    for line in writes[0].splitlines():
        stamp = json.loads(line)["timestamp"]
        assert stamp.endswith("Z") and before <= datetime.fromisoformat(stamp[:-1] + "+00:00") <= queued
    monkeypatch.setattr(logs, "ACCESS_FLUSH_LINES", 3)
    for i in range(3, 7):
        access_line(method="GET", route="/healthz", status=200, duration_ms=0.1, client="192.0.2.1",
                    request_id=f"r{i}")
    assert len(writes) == 2 and [json.loads(x)["request_id"] for x in writes[1].splitlines()] == ["r3", "r4", "r5"]
    flush_access()  # what a worker's exit does
    assert len(writes) == 3 and json.loads(writes[2])["request_id"] == "r6"
