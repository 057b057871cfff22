"""Preparing a CA rollover against the full application (SQLite and PostgreSQL): `scep-server ca rollover
prepare` and its API route; certmonger's scep-submit reads GetCACaps (GetNextCACert advertised), the
GetNextCACert reply is verified (signed by the current RA; the new CA, its RA, the cross certificate) and
micromdm's scepclient enrols before and after, from the current CA."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509

from scep_server.scep import client
from scep_server.store.tables import events
from tests.helpers import require_tool
from tests.server import run, start_app

from .conftest import device_key, ra_and_ca
from .test_ra_renewal import FAST, cli

SCEP_SUBMIT = "/usr/lib/certmonger/scep-submit"


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url):
    return await start_app(aiohttp_server, tmp_path, db_url, ca=FAST)


async def enrol(server, scepclient, work, cn: str) -> x509.Certificate:
    work.mkdir()
    device_key(work / "k.pem")
    rc, out, err = await run(scepclient, "-server-url", f"{server.url}/scep/default", "-private-key", "k.pem",
                             "-challenge", server.challenge(), "-cn", cn, cwd=work)
    assert rc == 0, out + err
    return x509.load_pem_x509_certificate((work / "client.pem").read_bytes())


async def test_prepare_a_rollover_then_get_next_ca_cert(server, db_url, scepclient, tmp_path):
    submit = require_tool(SCEP_SUBMIT)
    url = f"{server.url}/scep/default"
    async with aiohttp.ClientSession() as session:
        ra_der, ca_der = await ra_and_ca(session, url)
    current_ca, current_ra = x509.load_der_x509_certificate(ca_der), x509.load_der_x509_certificate(ra_der)
    before = await enrol(server, scepclient, tmp_path / "before", "before-rollover")
    assert before.issuer == current_ca.subject
    rc, out, _ = await run(submit, "-u", url, "-c")
    assert rc == 0 and "GetNextCACert" not in out.split()

    prepared = json.loads(await asyncio.to_thread(cli, server, db_url, "ca", "rollover", "prepare", "--cross-sign",
                                                  "--format", "json"))
    assert len(prepared["next_ca_certificates"]) == 3

    deadline = time.monotonic() + 15
    while True:  # every process picks the prepared CA up within ca.ra_check_interval
        rc, out, err = await run(submit, "-u", url, "-c")
        assert rc == 0, err
        if "GetNextCACert" in out.split():
            break
        assert time.monotonic() < deadline, out
        await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}?operation=GetNextCACert") as resp:
            assert resp.status == 200 and resp.content_type == "application/x-x509-next-ca-cert"
            ders = client.parse_next_ca_cert(await resp.read(), ra_cert_der=ra_der)  # signed by the current RA
    new_ca, new_ra, cross = (x509.load_der_x509_certificate(d) for d in ders)
    assert new_ca.subject.rfc4514_string() == "CN=Device Trust Issuing CA G2,O=Device Trust"
    assert new_ca.issuer == new_ca.subject and new_ca.public_key() != current_ca.public_key()
    new_ca.verify_directly_issued_by(new_ca)
    assert new_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    new_ra.verify_directly_issued_by(new_ca)
    assert new_ra.public_key() != current_ra.public_key()
    cross.verify_directly_issued_by(current_ca)
    assert cross.subject == new_ca.subject and cross.public_key() == new_ca.public_key()
    assert [c["serial"] for c in prepared["next_ca_certificates"]] == [format(c.serial_number, "x")
                                                                       for c in (new_ca, new_ra, cross)]
    # GetCACert still serves the current RA and CA, and enrolment goes on from the current CA
    async with aiohttp.ClientSession() as session:
        assert await ra_and_ca(session, url) == (ra_der, ca_der)
    after = await enrol(server, scepclient, tmp_path / "after", "after-prepare")
    assert after.issuer == current_ca.subject
    after.verify_directly_issued_by(current_ca)

    async with server.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(events).where(events.c.kind == "pki.ca.rollover.prepare"))).all()
    assert len(rows) == 1 and rows[0].subject == "default" and json.loads(rows[0].data)["cross_signed"] is True


async def test_prepare_over_the_api_once(server):
    _, token = await server.runtime.tokens.create(scope="admin", name="rollover", now=server.runtime.clock())
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{server.url}/api/v1/cas"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/default/rollover/prepare", headers=headers,
                                json={"subject": "CN=Not A Name Really,"}) as resp:
            assert resp.status == 400
        async with session.post(f"{base}/default/rollover/prepare", headers=headers, json={"cross_sign": "yes"}) as resp:
            assert resp.status == 400
        async with session.post(f"{base}/nope/rollover/prepare", headers=headers) as resp:
            assert resp.status == 404
        async with session.post(f"{base}/default/rollover/prepare", headers=headers,
                                json={"subject": "CN=Next Issuing CA,O=Example"}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert [c["subject"] for c in body["next_ca_certificates"]] == [
            "CN=Next Issuing CA,O=Example", server.runtime.cas["default"].ra_cert.subject.rfc4514_string()]
        async with session.post(f"{base}/default/rollover/prepare", headers=headers) as resp:
            assert resp.status == 409 and (await resp.json())["code"] == "rollover_prepared"
        async with session.get(f"{server.url}/scep/default?operation=GetCACaps") as resp:
            assert "GetNextCACert" in (await resp.text()).split()


async def test_expiry_of_ca_ra_and_next_ca_in_readyz_metrics_and_ca_list(server, db_url):
    ca = server.runtime.cas["default"]

    async def readyz_and_metrics() -> tuple[dict, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/readyz") as resp:
                body = await resp.json()
            async with session.get(f"{server.url}/metrics") as resp:
                return body, await resp.text()

    body, text = await readyz_and_metrics()
    assert body["expiry"] == {"default": {"ca": ca.cert.not_valid_after_utc.isoformat(),
                                          "ra": ca.ra_cert.not_valid_after_utc.isoformat()}}
    assert 'role="next-ca"' not in text
    assert 'ca_certificate_not_after_timestamp_seconds{ca="default",role="ra"}' in text

    await asyncio.to_thread(cli, server, db_url, "ca", "rollover", "prepare")
    await lifecycle_reload(server)
    nxt = server.runtime.cas["default"].next_ca_certs[0]
    body, text = await readyz_and_metrics()
    assert body["expiry"]["default"]["next_ca"] == nxt.not_valid_after_utc.isoformat()
    assert 'ca_certificate_not_after_timestamp_seconds{ca="default",role="next-ca"}' in text
    out = await asyncio.to_thread(cli, server, db_url, "ca", "list")
    assert f"next CA until {nxt.not_valid_after_utc.date().isoformat()}" in out
    assert f"RA until {ca.ra_cert.not_valid_after_utc.date().isoformat()}" in out


async def lifecycle_reload(server, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not server.runtime.cas["default"].next_ca_certs:
        assert time.monotonic() < deadline, "the prepared CA was not picked up"
        await asyncio.sleep(0.1)
