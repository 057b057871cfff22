"""A request aiohttp's HTTP parser refuses (a request line or a header too long, a malformed request line, method
or header, broken chunked framing) is answered with a problem document (414, 431 or 400) like every other failure,
not aiohttp's text/plain 400 that quoted the bytes it could not parse; the connection is closed after it, and the
log has one line for it, without traceback. Sent over raw sockets to the server `scep-server serve` runs (worker
processes) and to the same runner in-process."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from scep_server.web import protocol
from tests.app.test_access_log import json_logs, lines  # noqa: F401 - the JSON logging fixture
from tests.app.test_reuse_port import ROOT
from tests.factories import settings_for
from tests.server import _prepare_for_scepclient, child_pids, free_port, served_as_serve_does, start_app

SECRET = "dt_admin_TOPSECRET"  # on every line that does not parse: never in an answer or the log

CASES = {  # name: (request, status, code)
    "request line over the limit": (
        b"GET /scep/default?operation=PKIOperation&message=" + SECRET.encode() + b"A" * (17 * 1024)
        + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    "header over the limit": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: " + SECRET.encode() + b"c" * 9000 + b"\r\n\r\n",
        431, "header_too_large"),
    "too many headers": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, SECRET.encode()) for i in range(200))
        + b"\r\n", 431, "too_many_headers"),
    "malformed request line": (
        b"GET /healthz?token=" + SECRET.encode() + b" HTTP/1.1 trailing\r\nHost: x\r\n\r\n", 400,
        "malformed_request_line"),
    "malformed header": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SECRET.encode() + b"\x01\r\n\r\n", 400,
        "malformed_request"),
    "invalid method": (b"G\x01T /healthz?" + SECRET.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                       "invalid_method"),
    "bad chunk size": (
        b"POST /scep/default?operation=PKIOperation HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz" + SECRET.encode() + b"\r\n0\r\n\r\n", 400, "malformed_request"),
}


async def exchange(port: int, raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send `raw`, read until the server closes the connection: the status line, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # EOF: the server closed the connection
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers, body


def check(name: str, status_line: bytes, headers: dict[str, str], body: bytes) -> None:
    _, status, code = CASES[name]
    assert status_line.split(b" ")[1] == str(status).encode(), (name, status_line, body[:200])
    assert headers["content-type"].startswith("application/problem+json"), (name, headers)
    # (the connection is closed: `exchange` read to its end; an HTTP/1.0 answer, as aiohttp's, says so itself)
    assert int(headers["content-length"]) == len(body) < 512, (name, body)  # small, all of it sent
    document = json.loads(body)
    assert document["status"] == status and document["code"] == code, (name, document)
    assert set(document) == {"type", "title", "status", "detail", "code"}, (name, document)
    assert SECRET not in body.decode(), (name, body)  # nothing of the request is quoted


@pytest.fixture
async def running(tmp_path, json_logs):  # noqa: F811
    """The application served by the runner `serve` uses, on a loopback port."""
    json_logs("info")
    async with served_as_serve_does(settings_for(tmp_path / "data", None)) as port:
        yield port


@pytest.mark.parametrize("name", list(CASES))
async def test_a_request_the_parser_refuses_is_a_problem_document(running, name, capsys):
    capsys.readouterr()
    check(name, *await exchange(running, CASES[name][0]))
    events = lines(capsys)
    malformed = [e for e in events if e["event"] == "http.malformed_request"]
    if name == "invalid method":  # a client speaking something else than HTTP (TLS): debug only, as aiohttp does
        assert malformed == []
    else:
        assert [(e["level"], e["status"], e["peer"]) for e in malformed] == [("info", CASES[name][1], "127.0.0.1")]
    assert "Traceback" not in json.dumps(events) and SECRET not in json.dumps(events)
    if name == "request line over the limit":  # what aiohttp says, up to the bytes it quotes
        assert malformed[0]["detail"] == f"Got more than {protocol.MAX_REQUEST_LINE} bytes when reading"
    assert not [e for e in events if e.get("logger") == "aiohttp.server"]


@pytest.fixture(params=["C parser", "pure-Python parser"])
def parser(request, monkeypatch):
    """aiohttp's parser of requests: its C extension, or its pure-Python parser (no C extension for the platform, or
    ``AIOHTTP_NO_EXTENSIONS`` set), which fails a body with the TransferEncodingError it met."""
    if request.param == "pure-Python parser":
        from aiohttp import http_parser, web_protocol

        monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    return request.param


async def test_a_chunk_that_breaks_after_the_route_started_reading_ends_the_request(parser, running, capsys):
    """The headers and a good chunk first, the bad chunk size in a later packet, when the route is reading the
    body: the body fails at once (400, the route's own answer to an unreadable body), the connection is closed,
    one log line. (aiohttp's C parser dropped that body: the route waited for ever; its pure-Python parser failed
    the body with an error that was a 500.)"""
    capsys.readouterr()
    reader, writer = await asyncio.open_connection("127.0.0.1", running)
    try:
        writer.write(b"POST /scep/default?operation=PKIOperation HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\n4\r\n0123\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the route is waiting for the rest of the body
        writer.write(b"zz" + SECRET.encode() + b"\r\n0\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed the connection
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert data.endswith(b"\r\n\r\nthe request body could not be read\n"), data  # SCEP answers it in text
    assert data.count(b"HTTP/1.1 ") == 1 and SECRET.encode() not in data, data
    events = lines(capsys)
    assert [(e["event"], e["path"]) for e in events if e["event"].startswith("http.")] == [
        ("http.bad_body", "/scep/default")], events
    assert "Traceback" not in json.dumps(events) and SECRET not in json.dumps(events)


async def test_a_request_that_parses_is_answered_as_before(running):
    status_line, headers, body = await exchange(running, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 200 ")
    # a request line up to the raised limit reaches the route (its own answer: an unknown profile, in text)
    line = b"GET /scep/nosuch?operation=GetCACaps&pad=" + b"A" * 12000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status_line, headers, body = await exchange(running, line)
    assert status_line.startswith(b"HTTP/1.1 404 ") and headers["content-type"].startswith("text/plain"), body


def test_serve_answers_what_its_parser_refuses_with_a_problem_document(tmp_path):
    """The real `scep-server serve` with two workers: every case, each on a connection of its own."""
    data = tmp_path / "data"
    _prepare_for_scepclient(data, None)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCEP_SERVER_")}
    env.update({"SCEP_SERVER_LOG__LEVEL": "info", "PYTHONPATH": str(ROOT)})
    proc = subprocess.Popen([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data), "serve", "--listen",
                             f"127.0.0.1:{port}", "--workers", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    pass
                if len(child_pids(proc.pid)) == 2:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

        async def every_case() -> None:
            for _ in range(2):  # both workers, most likely
                for name, (raw, _, _) in CASES.items():
                    check(name, *await exchange(port, raw))

        asyncio.run(every_case())
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    assert "Traceback" not in text and SECRET not in text, text[-3000:]
    assert text.count('"http.malformed_request"') == 2 * (len(CASES) - 1), text[-3000:]


async def test_the_metrics_address_answers_what_its_parser_refuses_with_a_problem_document(aiohttp_server, tmp_path):
    """[metrics] listen: /metrics served on an address of its own, by a runner of its own."""
    port = free_port()
    await start_app(aiohttp_server, tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
    for name in ("request line over the limit", "header over the limit", "malformed request line", "bad chunk size"):
        check(name, *await exchange(port, CASES[name][0]))
