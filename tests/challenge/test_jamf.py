"""Jamf's paths end to end: the NDES page fetched with Basic auth and scraped with the NDES regex, Jamf's
SCEPChallenge webhook, then enrolment with micromdm's scepclient; reuse, expiry and another profile fail."""
from __future__ import annotations

import base64
import json
import re

import aiohttp
import sqlalchemy as sa
from cryptography import x509

from scep_server.challenge.tables import challenges
from scep_server.scep import FailInfo, PKIStatus
from tests.challenge.conftest import PASSWORD, USER, add_profile, device_key_file, dynamic, enrol, load_key
from tests.factories import rsa_key
from tests.helpers import require_tool
from tests.server import run

NDES_REGEX = re.compile(r"(?i)The enrollment challenge password is: <B> (?P<password>\S*)")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic(USER, PASSWORD)


async def fetch_page(session, url, *, auth=AUTH, encoding="utf-8") -> str:
    async with session.get(url, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/html" and resp.charset == encoding
        assert resp.headers["Cache-Control"] == "no-store"
        page = (await resp.read()).decode(encoding)
    m = NDES_REGEX.search(page)
    assert m, page
    assert "This password can be used only once and will expire within 60 minutes." in page
    return m.group("password")


async def scepclient_enrol(scepclient, srv, profile, challenge, workdir, cn):
    workdir.mkdir()
    device_key_file(workdir / "k.pem")
    rc, out, err = await run(scepclient, "-server-url", f"{srv.url}/scep/{profile}", "-private-key", "k.pem",
                             "-challenge", challenge, "-cn", cn, cwd=workdir)
    return rc, out + err


async def test_jamf_ndes_page_end_to_end(server, tmp_path, clock):
    scepclient = require_tool("scepclient")
    await add_profile(server, "jamf", "dynamic", dynamic(), allow_single_des=True)  # scepclient sends DES
    await add_profile(server, "other", "dynamic", dynamic())
    url = f"{server.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        challenge = await fetch_page(s, url)
        assert len(challenge) >= 32

        # Jamf's device enrols with the scraped challenge
        rc, out = await scepclient_enrol(scepclient, server, "jamf", challenge, tmp_path / "dev1", "mac-1")
        assert rc == 0, out
        cert = x509.load_pem_x509_certificate((tmp_path / "dev1" / "client.pem").read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "mac-1"

        # the same challenge again: scepclient fails, and the CertRep says why
        rc, out = await scepclient_enrol(scepclient, server, "jamf", challenge, tmp_path / "dev2", "mac-2")
        assert rc != 0 and not (tmp_path / "dev2" / "client.pem").exists()
        rep = await enrol(s, server, "jamf", load_key(tmp_path / "dev2" / "k.pem"), challenge, cn="mac-2")
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "already been used" in rep.fail_text

        # a challenge of another profile
        other = await fetch_page(s, f"{server.url}/scep/other/challenge")
        rc, out = await scepclient_enrol(scepclient, server, "jamf", other, tmp_path / "dev3", "mac-3")
        assert rc != 0 and not (tmp_path / "dev3" / "client.pem").exists()
        rep = await enrol(s, server, "jamf", load_key(tmp_path / "dev3" / "k.pem"), other, cn="mac-3")
        assert rep.fail_info is FailInfo.BAD_REQUEST and "another SCEP profile" in rep.fail_text

        # an expired one (61 minutes later on the server's clock)
        late = await fetch_page(s, url)
        clock.advance(minutes=61)
        rc, out = await scepclient_enrol(scepclient, server, "jamf", late, tmp_path / "dev4", "mac-4")
        assert rc != 0 and not (tmp_path / "dev4" / "client.pem").exists()
        rep = await enrol(s, server, "jamf", load_key(tmp_path / "dev4" / "k.pem"), late, cn="mac-4")
        assert rep.fail_info is FailInfo.BAD_REQUEST and "expired" in rep.fail_text

        # a made-up one
        rep = await enrol(s, server, "jamf", load_key(tmp_path / "dev4" / "k.pem"), "F" * 40, cn="mac-4")
        assert rep.fail_info is FailInfo.BAD_REQUEST and "unknown challenge" in rep.fail_text


async def test_jamf_webhook_records_payload_identifier(server, tmp_path):
    scepclient = require_tool("scepclient")
    await add_profile(server, "jamf", "dynamic", dynamic(), allow_single_des=True)  # scepclient sends DES
    event = {"webhook": {"webhookEvent": "SCEPChallenge", "id": 1, "eventTimestamp": 1700000000000, "name": ""},
             "event": {"scepServerUrl": f"{server.url}/scep/jamf", "payloadIdentifier": "7A1B2C3D-PAYLOAD",
                       "payloadTypes": ["com.apple.security.scep"]}}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{server.url}/scep/jamf/challenge", json=event, headers=AUTH) as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            challenge = await resp.text()
        assert re.fullmatch(r"[0-9A-F]{40}", challenge)
        rc, out = await scepclient_enrol(scepclient, server, "jamf", challenge, tmp_path / "d", "iphone-1")
        assert rc == 0, out
        for bad, status in ((b"not json", 400), (b"[1]", 400),
                            (json.dumps({"webhook": {"webhookEvent": "ComputerAdded"}}).encode(), 400)):
            async with s.post(f"{server.url}/scep/jamf/challenge", data=bad, headers=AUTH) as resp:
                assert resp.status == status
                assert resp.content_type == "application/problem+json"
    async with server.runtime.engine.connect() as conn:
        row = (await conn.execute(sa.select(challenges))).one()
    assert row.payload_identifier == "7A1B2C3D-PAYLOAD" and row.source == "webhook"
    assert row.used_at is not None and row.transaction_id


async def test_json_and_utf16_page(server):
    await add_profile(server, "ndes", "dynamic", dynamic(page_encoding="utf-16le", ttl_minutes=30))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{server.url}/scep/ndes/challenge", headers=AUTH) as resp:
            body = await resp.read()
            assert resp.charset == "utf-16le"
        assert not body.startswith(b"\xff\xfe")  # no BOM, like NDES
        page = body.decode("utf-16-le")
        assert NDES_REGEX.search(page) and "expire within 30 minutes" in page
        async with s.get(f"{server.url}/scep/ndes/challenge", headers={**AUTH, "Accept": "application/json"}) as resp:
            assert resp.status == 200
            data = await resp.json()
        assert set(data) == {"challenge", "expires_at"}
        rep = await enrol(s, server, "ndes", rsa_key(), data["challenge"])
        assert rep.status is PKIStatus.SUCCESS


async def test_basic_auth_failures_and_throttling(server):
    await add_profile(server, "jamf", "dynamic", dynamic())
    await add_profile(server, "nocreds", "dynamic", {})
    url = f"{server.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith('Basic realm="SCEP challenge jamf"')
        garbage = {"Authorization": "Basic !!!"}
        async with s.get(url, headers=garbage) as resp:
            assert resp.status == 401
        async with s.get(url, headers=basic(USER, "wrong")) as resp:
            assert resp.status == 401 and "WWW-Authenticate" in resp.headers
        async with s.get(url, headers=basic("someone", PASSWORD)) as resp:
            assert resp.status == 401
        async with s.get(f"{server.url}/scep/nocreds/challenge", headers=AUTH) as resp:
            assert resp.status == 403
        for name in ("default", "missing"):  # a static profile, an unknown one
            async with s.get(f"{server.url}/scep/{name}/challenge", headers=AUTH) as resp:
                assert resp.status == 404
        # 5 failures in a row lock this client out, even with the right password
        for _ in range(3):
            async with s.get(url, headers=basic(USER, "wrong")) as resp:
                assert resp.status == 401
        async with s.get(url, headers=AUTH) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    async with server.runtime.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(challenges))).scalar_one() == 0


async def test_cache_full(server):
    await add_profile(server, "capped", "dynamic", dynamic(max_unused=2))
    url = f"{server.url}/scep/capped/challenge"
    async with aiohttp.ClientSession() as s:
        for _ in range(3):  # a HEAD (a monitor's) issues nothing: it would fill the cache with challenges nobody saw
            async with s.head(url, headers=AUTH) as resp:
                assert resp.status == 405
        async with server.runtime.engine.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(challenges))).scalar_one() == 0
        for _ in range(2):
            await fetch_page(s, url)
        async with s.get(url, headers=AUTH) as resp:
            assert resp.status == 429
            assert "The password cache is full." in await resp.text()
        async with s.get(url, headers={**AUTH, "Accept": "application/json"}) as resp:
            assert resp.status == 429 and resp.content_type == "application/problem+json"


async def test_expectations_bound_to_challenge(server):
    await add_profile(server, "bound", "dynamic", dynamic(), template={"san_types": ["dns"]})
    token_id, token = await server.runtime.tokens.create(scope="admin", name="t", now=server.runtime.clock())
    hdrs = {"Authorization": f"Bearer {token}"}


    async with aiohttp.ClientSession() as s:
        async with s.post(f"{server.url}/api/v1/challenges/bound", headers=hdrs,
                          json={"subject": "CN=kiosk-7", "sans": ["dns:kiosk-7.example"]}) as resp:
            assert resp.status == 201
            challenge = (await resp.json())["challenge"]
        async with server.runtime.engine.connect() as conn:  # the caller's token, as the audit trail names it
            requested_by = (await conn.execute(sa.select(challenges.c.requested_by))).scalars().all()
        assert requested_by == [f"token:{token_id}:t"]
        async with s.post(f"{server.url}/api/v1/challenges/bound", headers=hdrs, json={"sans": ["bogus"]}) as resp:
            assert resp.status == 400
        async with s.post(f"{server.url}/api/v1/challenges/bound", json={}) as resp:
            assert resp.status == 401
        key = rsa_key()
        rep = await enrol(s, server, "bound", key, challenge, cn="kiosk-8", sans=["kiosk-7.example"])
        assert rep.status is PKIStatus.FAILURE and "subject" in rep.fail_text
        # a mismatch does not use the challenge up: the right device still enrols
        rep = await enrol(s, server, "bound", rsa_key(), challenge, cn="kiosk-7", sans=["kiosk-7.example"])
        assert rep.status is PKIStatus.SUCCESS
