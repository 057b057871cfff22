"""A compressed request body is not inflated: a 100 KB gzip of 128 MiB of zeros costs the server no more than
any 100 KB body (no client of ours compresses what it sends; the JSON routes then see bytes that are not JSON)."""
from __future__ import annotations

import asyncio
import os
import zlib

import aiohttp
import pytest

from tests.server import serve_processes


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gzip_bomb(mib: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    return b"".join(c.compress(zeros) for _ in range(mib)) + c.flush()


async def test_a_gzip_bomb_is_not_inflated(tmp_path):
    bomb = _gzip_bomb(128)
    assert len(bomb) < 200_000
    with serve_processes(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'scep.db'}") as urls:
        url = urls[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz") as resp:
                assert resp.status == 200
            pid = int(open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()[-1])
            before = _cpu_seconds(pid)
            for path in ("/wsapi/2.0/verify", "/scep/default?operation=PKIOperation", "/api/v1/devices"):
                for encoding in ("gzip", "deflate", "br"):
                    async with session.post(url + path, data=bomb, headers={
                            "Content-Encoding": encoding, "Content-Type": "application/json"}) as resp:
                        assert resp.status < 500, (path, encoding, resp.status)
            spent = _cpu_seconds(pid) - before
    # inflating 9 x 128 MiB takes several CPU seconds; reading 9 x 100 KB takes a few milliseconds
    assert spent < 1.0, f"the server spent {spent:.2f} s of CPU on 9 compressed bodies"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_body_that_does_not_decode_is_a_400_under_any_runner(armed):
    """Under a runner that does inflate (aiohttp's default, as in tests), a broken deflate stream is a 400."""
    port = int(armed.url.rsplit(":", 1)[1])
    for path in ("/api/v1/devices", "/wsapi/2.0/verify", "/scep/default?operation=PKIOperation",
                 "/api/v1/yubikeys/import", "/api/v1/otp/verify"):
        token = armed.signin if path == "/api/v1/otp/verify" else armed.admin
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nContent-Encoding: deflate\r\nContent-Length: 10\r\n\r\n"
                     "0123456789".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status.split()[1] == b"400", (path, status)
