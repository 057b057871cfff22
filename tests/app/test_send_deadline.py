"""The send deadline's middleware (scep_server.web.sendtime) paces only large bodies: a body under LARGE bytes, a
HEAD, a streamed, chunked or compressed answer is left as aiohttp writes it (no timer, nothing per request but a
length test); a large body is written in slices of the answer itself, byte for byte."""
from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from scep_server.web import sendtime

BODY = bytes(range(256)) * (3 * sendtime.CHUNK // 256 + 7)  # several slices and a part of one


async def answered(response: web.StreamResponse, method: str = "GET") -> web.StreamResponse:
    async def handler(request):
        return response

    return await sendtime.middleware(20.0, 65536)(make_mocked_request(method, "/x"), handler)


@pytest.mark.parametrize("size", [0, 100, sendtime.LARGE - 1])
async def test_a_small_body_is_left_alone(size):
    body = bytes(size)
    response = await answered(web.Response(body=body, content_type="application/pkix-crl"))
    assert response.body is body


async def test_a_large_body_is_paced_with_its_type_and_length():
    response = await answered(web.Response(body=BODY, content_type="application/pkix-crl"))
    assert isinstance(response.body, sendtime.PacedBody)
    assert response.body.size == len(BODY) and response.content_type == "application/pkix-crl"
    assert await response.body.as_bytes() == BODY


@pytest.mark.parametrize("make", [
    lambda: web.StreamResponse(),
    lambda: _compressed(web.Response(body=BODY)),
    lambda: _chunked(web.Response(body=BODY)),
])
async def test_streamed_compressed_and_chunked_answers_are_left_alone(make):
    response = make()
    before = getattr(response, "body", None)
    assert getattr(await answered(response), "body", None) is before


async def test_a_head_is_left_alone():
    response = await answered(web.Response(body=BODY), method="HEAD")
    assert response.body is BODY


def _compressed(response: web.Response) -> web.Response:
    response.enable_compression()
    return response


def _chunked(response: web.Response) -> web.Response:
    response.enable_chunked_encoding()
    return response


class _Writer:
    """Records what a PacedBody hands to aiohttp's writer."""

    def __init__(self):
        self.chunks: list[bytes] = []

    async def write(self, chunk):
        self.chunks.append(bytes(chunk))

    async def drain(self):
        pass


class _Transport:
    def is_closing(self):
        return False

    def get_write_buffer_size(self):
        return 0

    def get_extra_info(self, name, default=None):
        return default


async def test_a_large_body_is_written_in_slices_byte_for_byte(monkeypatch):
    request = make_mocked_request("GET", "/x", transport=_Transport())
    paced = sendtime.PacedBody(BODY, request, 20.0, 65536, "application/pkix-crl")
    writer = _Writer()
    await paced.write(writer)
    assert b"".join(writer.chunks) == BODY
    assert max(map(len, writer.chunks)) == sendtime.CHUNK and len(writer.chunks) == -(-len(BODY) // sendtime.CHUNK)


async def serving(route, base: float, rate: int) -> tuple[web.AppRunner, int]:
    """`route` at GET /big behind the send deadline (`base` seconds, then `rate` bytes a second), on a loopback
    port: the runner (to clean up) and the port."""
    app = web.Application(middlewares=[sendtime.middleware(base, rate)])
    app.router.add_get("/big", route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_a_client_that_half_closes_and_reads_nothing_is_cut_too():
    """A FIN from the client makes asyncio close the transport once its buffer has drained (aiohttp does not keep a
    half-closed connection open): the transport is closing with the answer still buffered, and a client that never
    reads would hold the answer and the route's task for ever. It is cut at the deadline like one that keeps its
    side open, and whatever the route keeps until its answer is sent is released."""
    import asyncio
    import socket

    released: dict[str, bool] = {}

    async def big(request):
        tag = request.query["tag"]
        released[tag] = False
        sendtime.after_send(request, lambda: released.__setitem__(tag, True))
        return web.Response(body=b"x" * (8 * 1024 * 1024), content_type="application/pkix-crl")

    runner, port = await serving(big, 1.0, 65536)
    socks = []
    try:
        for tag in ("open", "half-closed"):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(f"GET /big?tag={tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(s)
        await asyncio.sleep(0.5)  # the answers are being written: the buffers are full
        socks[1].shutdown(socket.SHUT_WR)
        for _ in range(100):  # cut at about 1 s (nothing leaves: the stall rule), 10 s at most
            if released == {"open": True, "half-closed": True}:
                break
            await asyncio.sleep(0.1)
        assert released == {"open": True, "half-closed": True}
    finally:
        for s in socks:
            s.close()
        await runner.cleanup()


async def test_a_client_reading_at_the_rate_is_not_cut_by_the_systems_send_buffer():
    """The system's send buffer wakes a writer only once a third of it has drained: what the transport handed the
    system says nothing of a client reading. One reading at four times the minimum rate, slower than a third of the
    buffer drains within the stall time, was cut at the first wait; it gets the whole answer. (Linux grows the
    buffer to 4 MB, a 21 s wait at 64 KiB/s; here 128 KiB, the stall time and the rates scaled down with it.)"""
    import asyncio
    import socket
    import time

    body = bytes(range(256)) * 768  # 192 KiB: more than the system's buffer takes at once

    async def big(request):
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # the system doubles it
        return web.Response(body=body, content_type="application/pkix-crl")

    runner, port = await serving(big, 0.5, 8 * 1024)  # 0.5 s, then 8 KiB/s

    def fetch(rate: int) -> bytes:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.settimeout(10)
            data, started = b"", time.monotonic()
            while True:
                try:
                    chunk = s.recv(2048)
                except OSError:  # reset: cut
                    return data
                if not chunk:
                    return data
                data += chunk
                time.sleep(max(0.0, started + len(data) / rate - time.monotonic()))

    try:
        got = await asyncio.get_running_loop().run_in_executor(None, fetch, 32 * 1024)
    finally:
        await runner.cleanup()
    assert got.endswith(body) and len(got) - len(body) < 1024, len(got)  # the headers and the whole body
