"""Preparing a CA rollover against the full application (SQLite and PostgreSQL): `scep-server ca rollover
prepare` and its API route; certmonger's scep-submit reads GetCACaps (GetNextCACert advertised), the
GetNextCACert reply is verified (signed by the current RA; the new CA, its RA, the cross certificate) and
micromdm's scepclient enrols before and after, from the current CA."""
from __future__ import annotations

import asyncio
import json
import shutil
import time

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509

from scep_server.scep import client
from scep_server.store.tables import events
from tests.helpers import require_tool
from tests.server import run, start_app

from .conftest import device_key, pem_cert, ra_and_ca, renew_any_time
from .test_ra_renewal import FAST, cli, json_of

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

    prepared = json_of(await asyncio.to_thread(cli, server, db_url, "ca", "rollover", "prepare", "--cross-sign",
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


@pytest.mark.parametrize("served_by", ["the running server", "a restarted server"])
async def test_activate_then_enrol_and_renew_an_old_ca_certificate(aiohttp_server, server, db_url, scepclient,
                                                                   openssl, tmp_path, served_by):
    url = f"{server.url}/scep/default"
    old_ca = server.runtime.cas["default"].cert
    # a device enrolled from the current CA
    work = tmp_path / "old"
    before = await enrol(server, scepclient, work, "old-device")
    assert before.issuer == old_ca.subject

    await asyncio.to_thread(cli, server, db_url, "ca", "rollover", "prepare", "--cross-sign")
    await lifecycle_reload(server)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}?operation=GetNextCACert") as resp:
            announced = client.parse_next_ca_cert(await resp.read(), ra_cert_der=await served_ra_der(session, url))
    done = json_of(await asyncio.to_thread(cli, server, db_url, "ca", "rollover", "activate", "--format", "json"))
    assert done["ca"] == "default" and done["active"] == "default-g2" and done["profiles"] == 1
    data = server.data_dir / "ca"
    assert (data / "active").read_text().strip() == "default-g2"

    if served_by == "a restarted server":  # a new process on the same data directory and database
        after = await start_app(aiohttp_server, tmp_path, db_url, ca=FAST)
        assert list(after.runtime.cas) == ["default-g2", "default"]
    else:  # the server that ran all along picks the new CA up (the command line activated it), no restart
        after = server
    url = f"{after.url}/scep/default"
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 20
        while True:  # within the profile cache's period and ca.ra_check_interval
            ra_der, ca_der = await ra_and_ca(session, url)
            if ca_der == announced[0] and list(after.runtime.cas) == ["default-g2", "default"]:
                break
            assert time.monotonic() < deadline, "the new CA was not picked up"
            await asyncio.sleep(0.2)
        assert [ra_der, ca_der] == announced[1::-1]  # what GetNextCACert announced: its RA, then the CA
        async with session.get(f"{url}?operation=GetCACaps") as resp:
            assert "GetNextCACert" not in (await resp.text()).split()
        for name, issuer in (("default", old_ca), ("default-g2", x509.load_der_x509_certificate(ca_der))):
            deadline = time.monotonic() + 15
            while True:  # 503 until the new process signed its first CRLs
                async with session.get(f"{after.url}/crl/{name}.crl") as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        break
                    assert resp.status == 503 and time.monotonic() < deadline, (name, resp.status)
                await asyncio.sleep(0.2)
            crl = x509.load_der_x509_crl(body)  # the previous CA keeps publishing its CRL
            assert crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key())
    new_ca = x509.load_der_x509_certificate(ca_der)
    (tmp_path / "new-ca.pem").write_bytes(pem_cert(ca_der))

    # a new device enrols from the new CA
    fresh = await enrol(after, scepclient, tmp_path / "new", "new-device")
    fresh.verify_directly_issued_by(new_ca)
    cdp = fresh.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == f"{after.url}/crl/default-g2.crl"

    # the old CA's certificate renews at the new CA (RenewalReq signed by it, no challenge)
    await renew_any_time(after)
    (work / "csr.pem").unlink()
    shutil.move(work / "client.pem", work / "issued.pem")
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-certificate", "issued.pem",
                             "-cn", "old-device", cwd=work)
    assert rc == 0, out + err
    renewed = x509.load_pem_x509_certificate((work / "issued.pem").read_bytes())
    assert renewed.serial_number != before.serial_number
    renewed.verify_directly_issued_by(new_ca)
    rc, out, err = await run(openssl, "verify", "-CAfile", str(tmp_path / "new-ca.pem"), str(work / "issued.pem"))
    assert rc == 0 and ": OK" in out, out + err
    # the superseded certificate is the old CA's: its CRL lists it soon after, not at its next scheduled re-sign
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 10
        while True:
            async with session.get(f"{after.url}/crl/default.crl") as resp:
                crl = x509.load_der_x509_crl(await resp.read())
            entry = crl.get_revoked_certificate_by_serial_number(before.serial_number)
            if entry is not None:
                break
            assert time.monotonic() < deadline, "the superseded certificate is not on its CA's CRL"
            await asyncio.sleep(0.2)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.superseded

    async with after.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(events).where(events.c.kind == "pki.ca.rollover.activate"))).all()
    assert len(rows) == 1 and json.loads(rows[0].data)["ca"] == "default-g2"


async def served_ra_der(session, url: str) -> bytes:
    return (await ra_and_ca(session, url))[0]
