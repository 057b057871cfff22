"""A large answer must be sent within server.send_timeout_seconds plus one second per server.send_min_rate bytes
sent, without stalling longer than send_timeout_seconds: a client that asks for a large CRL, or a SCEP GetCRL of
it, and reads nothing has its connection closed, and a GetCRL answer keeps its place in the worker's GetCRL lane
until it has been sent or cut (a further GetCRL is refused while it waits, served once it is gone). A client that
reads gets the whole body, byte for byte.

The CA's CRL here has 250,000 entries (8.7 MB): more than the system's socket buffers take from a client that
reads nothing. That client is a raw socket on 127.0.0.1 with a 4 KiB receive buffer; every wait is bounded."""
from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from crl.build import Issuer, build_crl
from crl.store import CrlStateStore
from scep_server.crlwiring.service import key_ops_signer
from scep_server.scep import MessageType
from scep_server.scep.client import issuer_and_serial
from tests.app.test_access_log import json_logs, lines  # noqa: F401 - the JSON logging fixture
from trustkit.db import create_engine
from trustkit.der import utc_seconds

from .conftest import FAST_CRL, _request, enrol_with_codec, get_crl_over_scep, publisher, ra_and_ca, wait_for
from tests.server import start_app

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BASE = 1.0  # server.send_timeout_seconds here
RATE = 1024 * 1024  # server.send_min_rate here (bytes per second)
ENTRIES = 250_000
GUARD = 20.0  # seconds: only bounds a test that fails


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url, json_logs):  # noqa: F811
    json_logs("info")
    srv = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL,
                          server={"send_timeout_seconds": BASE, "send_min_rate": RATE})
    srv.big_crl = await install_big_crl(srv)
    return srv


async def install_big_crl(srv) -> bytes:
    """Record a CRL of ENTRIES entries signed by the CA and have the server serve it; returns its DER."""
    ca = srv.runtime.cas["default"]
    engine = create_engine(srv.settings.database_url())
    try:
        store = CrlStateStore(engine, ca.name)
        number, this_update = await store.allocate(utc_seconds(datetime.now(timezone.utc)))
        this_update = utc_seconds(this_update)
        next_update = this_update + timedelta(days=7)
        rnd = random.Random(ENTRIES)
        rows = [(rnd.getrandbits(126) | 1 << 126, this_update - timedelta(seconds=rnd.randrange(86400)), None, None)
                for _ in range(ENTRIES)]
        der = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=key_ops_signer(ca), number=number,
                        this_update=this_update, next_update=next_update, entries=rows)
        assert await store.save(number=number, this_update=this_update, next_update=next_update, der=der,
                                sha256=hashlib.sha256(der).hexdigest(), entries=ENTRIES, published_at=this_update,
                                published_by="test")
    finally:
        await engine.dispose()
    pub = publisher(srv)
    await pub.refresh_from_store()
    assert pub.current.der == der
    return der


class NonReader:
    """A client that sends one request and reads nothing (a 4 KiB receive buffer: the system takes little)."""

    def __init__(self, url: str, request: bytes) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, int(port)))
        self.sock.sendall(request)
        self.sock.setblocking(False)
        self.started = time.monotonic()

    async def wait_answer_started(self) -> None:
        """Until the answer's first bytes are here (peeked, not read)."""
        async def started():
            try:
                return self.sock.recv(16, socket.MSG_PEEK) != b""
            except BlockingIOError:
                return False
        await wait_for(started, GUARD)

    async def read_to_end(self) -> tuple[int, bool]:
        """Read what the connection holds until it ends: (bytes read, whether the server closed it). A connection
        still open when the answer has arrived, or after GUARD, is reported open."""
        total, loop = 0, asyncio.get_running_loop()
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 20), 1.0)
            except asyncio.TimeoutError:
                return total, False  # nothing more comes and the connection is open
            except ConnectionResetError:
                return total, True
            if not chunk:
                return total, True
            total += len(chunk)
        return total, False

    def close(self) -> None:
        self.sock.close()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


async def getcrl_body(session, url: str, key, cert) -> bytes:
    ra_der, _ = await ra_and_ca(session, url)
    return _request(key, ra_der, MessageType.GET_CRL, issuer_and_serial(cert.issuer, cert.serial_number),
                    cert.public_bytes(serialization.Encoding.DER))


def cut_lines(capsys) -> list[dict]:
    return [e for e in lines(capsys) if e["event"] == "http.send_timeout"]


@SQLITE
async def test_a_client_that_reads_no_crl_is_cut_after_the_deadline(server, capsys):
    capsys.readouterr()
    size = len(server.big_crl)
    client = NonReader(server.url, get("/crl/default.crl"))
    try:
        await client.wait_answer_started()
        await asyncio.sleep(3 * BASE)  # the system's buffers are full at once: the answer stalls, and is cut
        got, closed = await client.read_to_end()
    finally:
        client.close()
    assert closed and got < size, (got, size, closed)
    cut = cut_lines(capsys)
    assert [(e["level"], e["route"] in ("/crl/{ca}.crl", "/crl/default.crl"), e["size"]) for e in cut] == [
        ("info", True, size)], cut
    assert BASE <= cut[0]["seconds"] < 3 * BASE and cut[0]["sent"] < size, cut


@SQLITE
async def test_a_fast_client_gets_the_whole_crl(server, capsys):
    async with aiohttp.ClientSession() as session:
        for path, expected in (("/crl/default.crl", server.big_crl), ("/crl/default.pem", publisher(server).current.pem)):
            async with session.get(server.url + path) as resp:
                assert resp.status == 200
                assert int(resp.headers["Content-Length"]) == len(expected)
                assert await resp.read() == expected
        async with session.head(server.url + "/crl/default.crl") as resp:  # HEAD: the length, no body
            assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(server.big_crl)
    assert not cut_lines(capsys)


@SQLITE
async def test_a_client_reading_at_the_minimum_rate_is_not_cut(server, capsys):
    """A client that reads at twice the minimum rate, in small steps, gets the whole answer however long it takes
    (longer than send_timeout_seconds)."""
    size = len(server.big_crl)
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(get("/crl/default.crl"))
        started, got = time.monotonic(), 0
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
        assert head.startswith(b"HTTP/1.1 200 ")
        while got < size:
            chunk = await asyncio.wait_for(reader.read(min(64 * 1024, size - got)), GUARD)
            assert chunk, f"the connection was closed after {got} of {size} bytes"
            got += len(chunk)
            await asyncio.sleep(max(0.0, started + got / (2 * RATE) - time.monotonic()))
        assert time.monotonic() - started > BASE
    finally:
        writer.close()
    assert not cut_lines(capsys)


@SQLITE
async def test_an_unread_getcrl_answer_keeps_its_lane_place_until_it_is_cut(server, monkeypatch, capsys):
    scep = server.runtime.scep
    monkeypatch.setattr(scep.getcrl, "limit", 1)
    capsys.readouterr()
    async with aiohttp.ClientSession() as session:
        key, cert = await enrol_with_codec(session, server.url, server.challenge(), "send-deadline")
        client = NonReader(server.url, post("/scep/default?operation=PKIOperation",
                                            await getcrl_body(session, server.url, key, cert)))
        try:
            await client.wait_answer_started()  # built and being sent: it still holds the lane's one place
            async with session.post(f"{server.url}/scep/default?operation=PKIOperation",
                                    data=await getcrl_body(session, server.url, key, cert)) as resp:
                assert resp.status == 503, resp.status
                assert (await resp.json(content_type=None))["code"] == "getcrl_busy"
            await asyncio.sleep(3 * BASE)
            got, closed = await client.read_to_end()
        finally:
            client.close()
        assert closed, got
        assert [e["route"] for e in cut_lines(capsys)] == ["/scep/{profile}"]
        await wait_for(lambda: _true(scep.getcrl.in_lane == 0), GUARD)
        # the place is free again: a GetCRL is answered, with the whole CRL
        assert await get_crl_over_scep(session, server.url, key, cert) == server.big_crl
    assert scep.getcrl.in_lane == 0


@SQLITE
async def test_a_getcrl_client_that_goes_away_gives_the_place_back_at_once(server, monkeypatch):
    scep = server.runtime.scep
    monkeypatch.setattr(scep.getcrl, "limit", 1)
    async with aiohttp.ClientSession() as session:
        key, cert = await enrol_with_codec(session, server.url, server.challenge(), "send-gone")
        client = NonReader(server.url, post("/scep/default?operation=PKIOperation",
                                            await getcrl_body(session, server.url, key, cert)))
        try:
            await client.wait_answer_started()
            assert scep.getcrl.in_lane == 1
        finally:
            client.close()  # unread data: the system resets the connection
        _, waited = await wait_for(lambda: _true(scep.getcrl.in_lane == 0), GUARD)
        assert waited < BASE, waited  # not the deadline: the connection's end
        assert await get_crl_over_scep(session, server.url, key, cert) == server.big_crl


async def _true(value: bool) -> bool:
    return value
