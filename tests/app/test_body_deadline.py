"""A request's body must arrive within server.body_timeout_seconds plus one second per server.body_min_rate bytes
received: a client that announces a body and sends part of it, or trickles it slower, gets a 408 problem document
and its connection is closed; a body sent at the rate, however long it takes, and a handler slow after the body
is in are not cut. Raw sockets on 127.0.0.1 against the runner `serve` uses, with a deadline of half a second.
Every exchange is bounded on the client's side (READ_TIMEOUT), so a server that waits for ever fails the test."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from scep_server.web import bodytime, scep
from tests.app.test_access_log import json_logs, lines  # noqa: F401 - the JSON logging fixture
from tests.factories import settings_for
from tests.server import served_as_serve_does

BASE = 0.5  # server.body_timeout_seconds here
RATE = 1000  # server.body_min_rate here (bytes per second)
READ_TIMEOUT = 5.0  # the client's own bound on every exchange
SCEP_POST = b"/scep/default?operation=PKIOperation"


def head(target: bytes, length: int | None, *, close: bool = False) -> bytes:
    lines_ = [b"POST " + target + b" HTTP/1.1", b"Host: x", b"Content-Type: application/x-pki-message"]
    lines_.append(b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked")
    if close:
        lines_.append(b"Connection: close")
    return b"\r\n".join(lines_) + b"\r\n\r\n"


async def exchange(port: int, first: bytes, then: list[tuple[float, bytes]] = ()) -> tuple[float, bytes, dict, bytes]:
    """Send `first`, then each (delay, bytes) of `then` while reading until the server closes the connection
    (at most READ_TIMEOUT): (seconds until that end, status line, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def send() -> None:
        try:
            for delay, data in then:
                await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, RuntimeError):
            pass  # the server closed the connection

    chunks: list[bytes] = []

    async def receive() -> None:
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:  # the answer came, then a part sent after the server closed: reset
                assert chunks, "the connection was reset before any answer"
                return
            if not chunk:  # EOF: the server closed the connection
                return
            chunks.append(chunk)
            sending.cancel()  # an answer is coming: nothing more is sent

    writer.write(first)
    await writer.drain()
    sending = asyncio.create_task(send())
    try:
        await asyncio.wait_for(receive(), READ_TIMEOUT)
        elapsed = time.monotonic() - started
    finally:
        sending.cancel()
        writer.close()
    data = b"".join(chunks)
    header_part, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = header_part.split(b"\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return elapsed, status_line, headers, body


def timed_out(status_line: bytes, headers: dict, body: bytes) -> None:
    assert status_line.startswith(b"HTTP/1.1 408 "), (status_line, body[:300])
    assert headers["content-type"].startswith("application/problem+json"), headers
    assert headers.get("connection", "").lower() == "close", headers
    document = json.loads(body[:int(headers["content-length"])])
    assert document["status"] == 408 and document["code"] == "body_timeout", document


@pytest.fixture
async def running(tmp_path, json_logs, monkeypatch):  # noqa: F811
    """The application on a loopback port, with a body deadline of BASE seconds and RATE bytes per second. Its
    SCEP PKIOperation takes 1.5 s once the body is read (as an enrolment waiting on Intune may)."""
    json_logs("info")

    async def slow_operation(service, profile: str, body: bytes) -> bytes:
        await asyncio.sleep(3 * BASE)
        return b"answered:%d" % len(body)

    monkeypatch.setattr(scep, "_pki_operation", slow_operation)
    settings = settings_for(tmp_path / "data", None,
                            server={"body_timeout_seconds": BASE, "body_min_rate": RATE})
    async with served_as_serve_does(settings) as port:
        yield port


async def test_a_body_announced_and_not_sent_is_a_408_and_the_connection_is_closed(running, capsys):
    capsys.readouterr()
    elapsed, status_line, headers, body = await exchange(running, head(SCEP_POST, 60000) + b"\x30\x82" + b"A" * 100)
    timed_out(status_line, headers, body)
    assert BASE <= elapsed < BASE + 2, elapsed
    events = lines(capsys)
    cut = [e for e in events if e["event"] == "http.body_timeout"]
    assert [(e["level"], e["path"], e["received"], e["announced"]) for e in cut] == [
        ("info", "/scep/default", 102, 60000)], cut
    assert "Traceback" not in json.dumps(events)
    assert not [e for e in events if e.get("logger") == "aiohttp.server" or e["level"] == "error"], events


async def test_a_chunked_body_that_stops_is_a_408(running):
    elapsed, status_line, headers, body = await exchange(running, head(SCEP_POST, None) + b"10\r\n0123456789abcdef\r\n")
    timed_out(status_line, headers, body)
    assert elapsed < BASE + 2, elapsed


async def test_a_body_trickled_slower_than_the_rate_is_cut(running, capsys):
    capsys.readouterr()
    trickle = [(0.1, b"A")] * 40  # 10 bytes a second, for 4 s if let
    elapsed, status_line, headers, body = await exchange(running, head(SCEP_POST, 60000), trickle)
    timed_out(status_line, headers, body)
    assert BASE <= elapsed < BASE + 2, elapsed
    assert [e["event"] for e in lines(capsys)].count("http.body_timeout") == 1


async def test_a_body_sent_in_time_is_answered_by_its_route(running):
    elapsed, status_line, headers, body = await exchange(running, head(SCEP_POST, 2000, close=True) + b"B" * 2000)
    assert status_line.startswith(b"HTTP/1.1 200 ") and body == b"answered:2000", (status_line, body)


async def test_a_slow_body_within_the_rate_is_not_cut(running):
    """2000 bytes over 1.5 s: past the base time, but each part arrives before BASE + received / RATE."""
    parts = [(0.15, b"C" * 200)] * 10
    elapsed, status_line, headers, body = await exchange(running, head(SCEP_POST, 2000, close=True), parts)
    assert status_line.startswith(b"HTTP/1.1 200 ") and body == b"answered:2000", (status_line, body)
    assert elapsed > 1.5, elapsed  # the whole exchange outlived the base time


async def test_a_handler_slow_after_the_body_is_in_is_not_cut(running, capsys):
    """The body is in at once; the operation then takes three times the base deadline, and is answered, on a
    connection that stays open for the next request."""
    capsys.readouterr()
    reader, writer = await asyncio.open_connection("127.0.0.1", running)
    try:
        for _ in range(2):
            started = time.monotonic()
            writer.write(head(SCEP_POST, 10) + b"D" * 10)
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            header_lines = {}
            while (line := await asyncio.wait_for(reader.readline(), READ_TIMEOUT)) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                header_lines[name.strip().lower()] = value.strip()
            body = await asyncio.wait_for(reader.readexactly(int(header_lines["content-length"])), READ_TIMEOUT)
            assert status_line.startswith(b"HTTP/1.1 200 ") and body == b"answered:10", (status_line, body)
            assert time.monotonic() - started >= 3 * BASE
            assert header_lines.get("connection", "").lower() != "close"
    finally:
        writer.close()
    assert "http.body_timeout" not in [e["event"] for e in lines(capsys)]


async def test_a_request_without_a_body_arms_nothing(running, monkeypatch):
    armed = []

    class Counted(bodytime._Deadline):
        __slots__ = ()

        def __init__(self, *args) -> None:
            armed.append(args)
            super().__init__(*args)

    monkeypatch.setattr(bodytime, "_Deadline", Counted)
    _, status_line, _, _ = await exchange(running, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 200 ")
    assert armed == []
    # a body still to come arms one timer (one that came with the headers is in already: none)
    await exchange(running, head(SCEP_POST, 10, close=True), [(0.1, b"E" * 10)])
    assert len(armed) == 1


@pytest.mark.parametrize("target", [b"/ocsp/default", b"/wsapi/2.0/verify", b"/admin/login"])
async def test_every_route_reading_a_body_gets_the_deadline(running, target):
    """OCSP, the OTP validation protocol and the console's sign-in (its HTML error page): a 408, the connection
    closed. None needs a credential before reading (1000 bytes announced: within what each of them reads)."""
    elapsed, status_line, headers, body = await exchange(
        running, head(target, 1000).replace(b"application/x-pki-message", b"application/x-www-form-urlencoded")
        + b"a=1")
    assert status_line.startswith(b"HTTP/1.1 408 "), (status_line, body[:300])
    assert elapsed < BASE + 2, elapsed
