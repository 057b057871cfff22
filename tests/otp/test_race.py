"""One OTP submitted 100 times in parallel through two server processes on one database: one OK."""
from __future__ import annotations

import asyncio
import base64
import os
import secrets
import sys
from pathlib import Path

import aiohttp
import pytest

from otp import yubico
from otp.config import OtpSettings
from otp.kek import load_or_create_kek
from otp.service import OtpService
from scep_server.store.db import create_engine
from tests.otp.conftest import import_keys, make_key

ROOT = Path(__file__).resolve().parents[2]


async def start_server(db_url: str, kek_file: Path) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.otp.serve_otp", "--db", db_url, "--port", "0", "--kek-file", str(kek_file),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    if not line.startswith("READY "):
        proc.kill()
        await proc.wait()
        pytest.fail(f"server process did not start: {line!r}")
    return proc, int(line.split()[1])


async def stop_server(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("db_url", ["postgresql", "sqlite"], indirect=True)
async def test_one_otp_100_times_through_two_processes(db_url, tmp_path):
    kek_file = tmp_path / "otp.kek"
    kek = load_or_create_kek(kek_file)
    engine = create_engine(db_url)
    try:
        async with OtpService(engine, OtpSettings(), kek) as service:
            keys = [make_key(77_000 + i) for i in range(3)]
            await import_keys(service, keys)
            info, b64 = await service.add_client("race")
    finally:
        await engine.dispose()
    key = base64.b64decode(b64)
    servers = await asyncio.gather(start_server(db_url, kek_file), start_server(db_url, kek_file))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:
            async def submit(port: int, otp: str, nonce: str) -> str:
                params = {"id": str(info.id), "otp": otp, "nonce": nonce}
                params["h"] = yubico.sign(params, key)
                async with http.get(f"http://127.0.0.1:{port}/wsapi/2.0/verify", params=params) as resp:
                    assert resp.status == 200
                    fields = yubico.decode_response(await resp.text())
                assert yubico.signature_matches(fields, key)
                assert fields["otp"] == otp and fields["nonce"] == nonce
                return fields["status"]

            for k in keys:
                otp = k.otp()
                # 100 submissions, alternating between the two processes; every tenth shares a nonce with
                # another, so a retry of the accepted request may come back as REPLAYED_REQUEST
                nonces = [f"race{secrets.token_hex(8)}" for _ in range(90)]
                nonces += nonces[:10]
                statuses = await asyncio.gather(*[
                    submit(servers[i % 2][1], otp, nonce) for i, nonce in enumerate(nonces)])
                assert statuses.count("OK") == 1, statuses
                assert set(statuses) <= {"OK", "REPLAYED_OTP", "REPLAYED_REQUEST"}, statuses
                # and the key goes on working with its next OTP, through either process
                assert await submit(servers[0][1], k.otp(), secrets.token_hex(10)) == "OK"
                assert await submit(servers[1][1], k.otp(), secrets.token_hex(10)) == "OK"
    finally:
        await asyncio.gather(*(stop_server(p) for p, _ in servers))
    assert all(p.returncode == 0 for p, _ in servers)
