"""RA renewal against the full application, on SQLite and PostgreSQL: `scep-server ca renew-ra`, the API route,
the server's own renewal before expiry (one process of several renews), and readiness when it cannot renew.
micromdm's scepclient and certmonger's scep-submit enrol with the new RA; a request encrypted to the old RA
certificate is still answered during the overlap."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
import sqlalchemy as sa
import structlog
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from scep_server.ca import lifecycle
from scep_server.runtime import initialise
from scep_server.scep import ContentCipher, FailInfo, MessageType, PKIStatus, client
from scep_server.scep.cms import parse_degenerate
from scep_server.store.tables import events
from tests.factories import rsa_key, settings_for
from tests.helpers import require_tool
from tests.server import run, serve_processes, start_app

from .conftest import device_key, load_key, pem_cert, pkcs_req, ra_and_ca

SCEP_SUBMIT = "/usr/lib/certmonger/scep-submit"
FAST = {"ra_check_interval": 0.2}


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url):
    return await start_app(aiohttp_server, tmp_path, db_url, ca=FAST)


def json_of(out: str):
    """The JSON document a command printed (indented: from a line "{" to a line "}"), without the lines the
    in-process server may log meanwhile on the same standard output."""
    lines = out.splitlines()
    start = lines.index("{")
    return json.loads("\n".join(lines[start:lines.index("}", start) + 1]))


def cli(server, db_url: str, *args: str) -> str:
    from scep_server.cli import main

    env = {"SCEP_SERVER_DATABASE__URL": db_url, "SCEP_SERVER_LOG__LEVEL": "warning"}
    with structlog.testing.capture_logs():  # the in-process server's lines stay out of the command's output
        result = CliRunner().invoke(main, ["--data-dir", str(server.data_dir), *args], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


async def served_ra(url: str) -> bytes:
    async with aiohttp.ClientSession() as session:
        return (await ra_and_ca(session, url))[0]


async def wait_for_ra(url: str, not_der: bytes, timeout: float = 15) -> bytes:
    """The RA certificate GetCACert serves once it is no longer ``not_der``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        der = await served_ra(url)
        if der != not_der:
            return der
        await asyncio.sleep(0.1)
    raise AssertionError("GetCACert still serves the previous RA certificate")


async def post(url: str, body: bytes, key) -> client.CertRepResult:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}?operation=PKIOperation", data=body) as resp:
            assert resp.status == 200
            return client.parse_cert_rep(await resp.read(), key)


async def renew_events(engine) -> list[dict]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events).where(events.c.kind == "pki.ra.renew")
                                   .order_by(events.c.id))).all()
    return [{**r._mapping, "data": json.loads(r._mapping["data"])} for r in rows]


def cert(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


async def test_renew_ra_on_the_command_line_then_scepclient_certmonger_and_the_old_ra(
        server, db_url, scepclient, openssl, tmp_path):
    submit = require_tool(SCEP_SUBMIT)
    url = f"{server.url}/scep/default"
    old_der = await served_ra(url)
    async with aiohttp.ClientSession() as session:
        _, ca_der = await ra_and_ca(session, url)
    # a device read the RA certificate just before the renewal and sends its request after it
    early_key = rsa_key()
    early = pkcs_req(early_key, old_der, challenge=server.challenge(), cn="early")

    renewed = json_of(await asyncio.to_thread(cli, server, db_url, "ca", "renew-ra", "default", "--format", "json"))
    new_der = await wait_for_ra(url, old_der)
    old, new, ca = cert(old_der), cert(new_der), cert(ca_der)
    assert renewed["ra_certificate"]["serial"] == format(new.serial_number, "x")
    assert [c["serial"] for c in renewed["previous_ra_certificates"]] == [format(old.serial_number, "x")]
    new.verify_directly_issued_by(ca)
    assert new.subject == old.subject and new.public_key() != old.public_key()
    assert new.not_valid_after_utc >= old.not_valid_after_utc  # whole seconds: the same when renewed at once

    # scepclient reads GetCACert (the new RA) and enrols
    work = tmp_path / "sc"
    work.mkdir()
    device_key(work / "k.pem")
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-challenge",
                             server.challenge(), "-cn", "after-renewal", cwd=work)
    assert rc == 0, out + err
    rc, out, err = await run(openssl, "verify", "-CAfile", str(server.data_dir / "ca" / "default" / "ca.crt"),
                             str(work / "client.pem"))
    assert rc == 0 and ": OK" in out, out + err

    # certmonger lists the new RA certificate and enrols with it
    rc, out, err = await run(submit, "-u", url, "-C")
    assert rc == 0, err
    listed = {x509.load_pem_x509_certificate((p.strip() + "\n-----END CERTIFICATE-----\n").encode())
              .fingerprint(hashes.SHA256()) for p in out.split("-----END CERTIFICATE-----") if "BEGIN CERTIFICATE" in p}
    assert new.fingerprint(hashes.SHA256()) in listed and old.fingerprint(hashes.SHA256()) not in listed
    key = load_key(device_key(tmp_path / "cm.pem"))
    signer_der = client.make_self_signed_signer(key)
    env = {"CERTMONGER_OPERATION": "SUBMIT",
           "CERTMONGER_PKCSREQ": base64.b64encode(pkcs_req(key, new_der, challenge=server.challenge(), cn="cm-new",
                                                           signer_der=signer_der)).decode(),
           "CERTMONGER_SCEP_RA_CERTIFICATE": pem_cert(new_der).decode(),
           "CERTMONGER_SCEP_CA_CERTIFICATE": pem_cert(ca_der).decode()}
    rc, out, err = await run(submit, "-u", url, env=env)
    assert rc == 0, out + err
    assert "-----BEGIN PKCS7-----" in out

    # the request encrypted to the old RA certificate is answered, signed by the new RA
    reply = await post(url, early, early_key)
    assert reply.status is PKIStatus.SUCCESS, reply.fail_text
    assert reply.signer_cert_der == new_der
    assert cert(reply.certs[0]).subject.rfc4514_string() == "CN=early"

    (event,) = await renew_events(server.runtime.engine)
    assert event["subject"] == "default" and event["actor"].startswith("cli")
    assert event["data"]["serial"] == format(new.serial_number, "x")
    assert event["data"]["previous_serial"] == format(old.serial_number, "x")


async def test_the_key_is_chosen_by_the_recipient_named_not_by_trying(server):
    url = f"{server.url}/scep/default"
    old_der = await served_ra(url)
    await lifecycle.renew(server.runtime, "default", actor="test")
    new_der = await served_ra(url)
    assert new_der != old_der
    key = rsa_key()
    # names the old RA certificate, but the content key is encrypted to the new RA's key: the old key is used
    # (and fails); the new key, which would succeed, is not tried
    body = client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(key, "mixed", server.challenge()),
        signer_cert_der=client.make_self_signed_signer(key), signer_key=key, recipient_cert_der=old_der,
        recipient_key=cert(new_der).public_key(), transaction_id=client.transaction_id_for(key.public_key()),
        sender_nonce=os.urandom(16), cek=os.urandom(16), iv=os.urandom(16), cipher=ContentCipher.AES128_CBC)
    reply = await post(url, body, key)
    assert reply.status is PKIStatus.FAILURE and reply.fail_info is FailInfo.BAD_MESSAGE_CHECK
    # addressed to the new RA certificate with its key: issued
    key2 = rsa_key()
    reply = await post(url, pkcs_req(key2, new_der, challenge=server.challenge(), cn="new"), key2)
    assert reply.status is PKIStatus.SUCCESS, reply.fail_text


async def test_renew_ra_over_the_api(server):
    _, token = await server.runtime.tokens.create(scope="admin", name="ra-tests", now=server.runtime.clock())
    url = f"{server.url}/scep/default"
    old_der = await served_ra(url)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/api/v1/cas/default/ra/renew", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        async with session.post(f"{server.url}/api/v1/cas/nope/ra/renew", headers=headers) as resp:
            assert resp.status == 404 and (await resp.json())["code"] == "ca_not_found"
        async with session.post(f"{server.url}/api/v1/cas/default/ra/renew", headers=headers,
                                json={"x": 1}) as resp:
            assert resp.status == 400
        async with session.post(f"{server.url}/api/v1/cas/default/ra/renew", headers=headers,
                                json={"mode": "both"}) as resp:
            assert resp.status == 400 and "mode" in (await resp.json())["detail"]
        async with session.post(f"{server.url}/api/v1/cas/default/ra/renew") as resp:
            assert resp.status == 401
        new_der = await served_ra(url)  # this process serves it at once
        assert body["ra_mode"] == "single" and body["ra_encryption_certificate"] is None
        assert body["ra_certificate"]["serial"] == format(cert(new_der).serial_number, "x")
        assert body["previous_ra_certificates"][0]["serial"] == format(cert(old_der).serial_number, "x")
        # the switch to split RA certificates: GetCACert serves the signing one first, then the encryption one
        async with session.post(f"{server.url}/api/v1/cas/default/ra/renew", headers=headers,
                                json={"mode": "split"}) as resp:
            assert resp.status == 200, await resp.text()
            split = await resp.json()
        async with session.get(f"{url}?operation=GetCACert") as resp:
            served = [cert(c) for c in parse_degenerate(await resp.read())[0]]
    assert split["ra_mode"] == "split"
    assert [format(c.serial_number, "x") for c in served[:2]] == [
        split["ra_certificate"]["serial"], split["ra_encryption_certificate"]["serial"]]
    first, second = await renew_events(server.runtime.engine)
    assert first["actor"].startswith("token:") and first["actor"].endswith(":ra-tests")
    assert first["data"]["ra_mode"] == "single" and "encryption_serial" not in first["data"]
    assert second["data"]["ra_mode"] == "split"
    assert second["data"]["encryption_serial"] == split["ra_encryption_certificate"]["serial"]


async def initialise_in_the_past(tmp_path, db_url, days: int) -> None:
    """A deployment whose CA and RA were created ``days`` ago (the RA has 730 - days left)."""
    settings = settings_for(tmp_path / "data", db_url)
    await initialise(settings, clock=lambda: datetime.now(timezone.utc) - timedelta(days=days))


async def test_the_server_renews_an_ra_that_is_due(aiohttp_server, tmp_path, db_url, scepclient):
    await initialise_in_the_past(tmp_path, db_url, 700)  # 30 days left, renewal is due (60 days before)
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=FAST)
    first = x509.load_pem_x509_certificate((server.data_dir / "ca" / "default" / "ra.crt").read_bytes())
    url = f"{server.url}/scep/default"
    deadline = time.monotonic() + 15
    while not await renew_events(server.runtime.engine):
        assert time.monotonic() < deadline, "the RA was not renewed"
        await asyncio.sleep(0.1)
    (event,) = await renew_events(server.runtime.engine)
    assert event["actor"] == "system:ra-renewal"
    # the event is committed before the process that renewed serves the new certificate
    served = cert(await wait_for_ra(url, first.public_bytes(serialization.Encoding.DER)))
    assert format(served.serial_number, "x") == event["data"]["serial"]
    assert served.not_valid_after_utc - datetime.now(timezone.utc) > timedelta(days=700)
    assert first.serial_number != served.serial_number
    assert first.not_valid_after_utc - datetime.now(timezone.utc) < timedelta(days=31)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/readyz") as resp:
            body = await resp.json()
    assert body["checks"]["ca.ra"] == "ok"
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-challenge",
                             server.challenge(), "-cn", "renewed-ra",
                             cwd=device_key(tmp_path / "k.pem").parent)
    assert rc == 0, out + err
    await asyncio.sleep(0.5)  # more rounds of the job: nothing more is due
    assert len(await renew_events(server.runtime.engine)) == 1


async def test_an_ra_that_cannot_be_renewed_makes_the_server_not_ready(aiohttp_server, tmp_path, db_url):
    # the CA itself ends in 10 days: a new RA certificate could end no later, so none is issued
    server = await start_app(aiohttp_server, tmp_path, db_url, ca={**FAST, "validity_days": 10})
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["ca.ra"] == "failed"
        async with session.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
    assert 'scep_server_ready{check="ca.ra"} 0.0' in text
    assert await renew_events(server.runtime.engine) == []


def test_of_several_processes_one_renews(tmp_path, db_url):
    asyncio.run(initialise_in_the_past(tmp_path, db_url, 700))
    data = tmp_path / "data"
    directory = data / "ca" / "default"
    env = {"SCEP_SERVER_CA__RA_CHECK_INTERVAL": "0.1"}
    with serve_processes(data, db_url, count=2, workers=2, env=env) as urls:
        async def served() -> set[bytes]:
            return {await served_ra(f"{u}/scep/default") for u in urls}

        deadline = time.monotonic() + 20
        renewed = list(directory.glob("ra-*.crt"))
        while not renewed:
            assert time.monotonic() < deadline, "the RA was not renewed"
            time.sleep(0.1)
            renewed = list(directory.glob("ra-*.crt"))
        time.sleep(1.0)  # every process had several rounds
        assert len(list(directory.glob("ra-*.crt"))) == 1
        new = x509.load_pem_x509_certificate(renewed[0].read_bytes()).public_bytes(serialization.Encoding.DER)
        assert asyncio.run(served()) == {new}

    async def count() -> int:
        from trustkit.db import create_engine

        engine = create_engine(db_url)
        try:
            return len(await renew_events(engine))
        finally:
            await engine.dispose()
    assert asyncio.run(count()) == 1
