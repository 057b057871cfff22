"""Two `scep-server serve` processes on one database: a secret rotated through one is refused at once by the
other (which had the profile cached), and a token disabled through one is refused by the other within the
token cache period (docs/api.md "Profiles", "Authentication")."""
from __future__ import annotations

import asyncio
import time

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from scep_server.scep import MessageType, PKIStatus, client
from scep_server.scep.cms import parse_degenerate
from scep_server.tokens import TokenStore
from tests.admin.conftest import call
from tests.crlwiring.conftest import _request
from tests.server import serve_processes
from trustkit.clock import utcnow
from trustkit.db import create_engine

TOKEN_CACHE_SECONDS = 5.0


async def _enrol(session: aiohttp.ClientSession, url: str, profile: str, challenge: str) -> PKIStatus:
    async with session.get(f"{url}/scep/{profile}?operation=GetCACert") as resp:
        assert resp.status == 200
        ra_der = parse_degenerate(await resp.read())[0][0]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = _request(key, ra_der, MessageType.PKCS_REQ, client.make_csr(key, "device", challenge),
                    client.make_self_signed_signer(key))
    async with session.post(f"{url}/scep/{profile}?operation=PKIOperation", data=body) as resp:
        assert resp.status == 200, await resp.text()
        return client.parse_cert_rep(await resp.read(), key, ra_cert_der=ra_der).status


async def _admin_token(db_url: str) -> tuple[str, str]:
    engine = create_engine(db_url)
    try:
        return await TokenStore(engine).create(scope="admin", name="cross", now=utcnow())
    finally:
        await engine.dispose()


async def test_rotation_and_disable_reach_the_other_process(tmp_path, db_url):
    data_dir = tmp_path / "data"
    with serve_processes(data_dir, db_url, count=2) as (first, second):
        admin_id, admin = await _admin_token(db_url)
        async with aiohttp.ClientSession() as session:
            status, made, _ = await call(session, "POST", f"{first}/api/v1/profiles", admin, json={"name": "kiosk"})
            assert status == 201
            old = made["secret"]
            assert await _enrol(session, second, "kiosk", old) is PKIStatus.SUCCESS  # cached by the second

            status, rotated, _ = await call(session, "POST", f"{first}/api/v1/profiles/kiosk/rotate-secret", admin)
            assert status == 200
            assert await _enrol(session, second, "kiosk", old) is PKIStatus.FAILURE
            assert await _enrol(session, second, "kiosk", rotated["secret"]) is PKIStatus.SUCCESS

            _, other = await _admin_token(db_url)
            assert (await call(session, "GET", f"{second}/api/v1/tokens", admin))[0] == 200  # cached there
            status, _, _ = await call(session, "POST", f"{first}/api/v1/tokens/{admin_id}/disable", other)
            assert status == 200
            disabled = time.monotonic()
            assert (await call(session, "GET", f"{first}/api/v1/tokens", admin))[0] == 401  # at once here
            while (await call(session, "GET", f"{second}/api/v1/tokens", admin))[0] == 200:
                assert time.monotonic() - disabled < TOKEN_CACHE_SECONDS + 2, "still accepted past the period"
                await asyncio.sleep(0.2)
            assert (await call(session, "GET", f"{second}/api/v1/tokens", other))[0] == 200
