"""The audit trail: the actor of an admin change is the authenticated principal (never the body's word),
`GET /api/v1/events` and `scep-server audit list` filter and page it, and the CLI's changes name the
OS user."""
from __future__ import annotations

import asyncio
import getpass
import json
from datetime import timedelta

import aiohttp
import pytest

from scep_server.store.events import record_event
from tests.factories import NOW, settings_for
from tests.server import start_app
from trustkit.db import create_engine, writer


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _seed(engine, rows: list[tuple]) -> None:
    async with writer(engine).begin() as conn:
        for at, kind, subject, actor in rows:
            await record_event(conn, at=at, kind=kind, subject=subject, actor=actor, data={"n": kind})


def _customer_ca() -> str:
    """A customer's CA certificate (PEM) with a CRL distribution point (on loopback: never fetched here, the
    checker refuses non-public destinations by default)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from tests.factories import rsa_key

    key = rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Acme Devices CA")])
    cdp = x509.CRLDistributionPoints([x509.DistributionPoint(
        [x509.UniformResourceIdentifier("http://127.0.0.1:9/devices.crl")], None, None, None)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(cdp, critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_admin_changes_name_the_token_never_a_body_actor(aiohttp_server, tmp_path, db_url):
    app = await start_app(aiohttp_server, tmp_path, db_url)
    rt = app.runtime
    admin_id, admin = await rt.tokens.create(scope="admin", name="ops", now=NOW)
    me = f"token:{admin_id}:ops"
    forged = {"actor": "mallory"}
    async with aiohttp.ClientSession(app.url, headers=bearer(admin)) as http:
        async with http.post("/api/v1/devices", json={"id": "dev-1", **forged}) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["created_by"] == me
        async with http.post("/api/v1/devices/dev-1/suspend", json={"reason": "lost", **forged}) as r:
            assert r.status == 200, await r.text()
        async with http.post("/api/v1/devices/dev-1/enrolments",
                             json={"profile": "default", "transaction_id": "tx-1", **forged}) as r:
            assert r.status == 201, await r.text()
        async with http.post("/api/v1/external-cas", json={"name": "acme", "certificate": _customer_ca(), **forged}) as r:
            assert r.status == 201, await r.text()
        async with http.post("/api/v1/otp-clients", json={"name": "rp"}) as r:
            assert r.status == 201, await r.text()
            client_id = (await r.json())["id"]
        async with http.post(f"/api/v1/otp-clients/{client_id}/disable") as r:
            assert r.status == 200, await r.text()
        async with http.get("/api/v1/events", params={"subject": "dev-1"}) as r:
            assert r.status == 200
            events = (await r.json())["events"]
    assert [e["kind"] for e in events] == ["device.enrolment.preregister", "device.suspend", "device.create"]
    assert {e["actor"] for e in events} == {me}
    async with aiohttp.ClientSession(app.url, headers=bearer(admin)) as http:
        async with http.get("/api/v1/events", params={"kind": "pki.ca.add"}) as r:
            assert [(e["subject"], e["actor"]) for e in (await r.json())["events"]] == [("acme", me)]
    otp_events = await rt.otp.store.events(kind_prefix="otp.client.")
    assert [(e["kind"], e["actor"]) for e in otp_events] == [("otp.client.added", me), ("otp.client.disabled", me)]


async def test_event_list_filters_and_pages(aiohttp_server, tmp_path, db_url):
    app = await start_app(aiohttp_server, tmp_path, db_url)
    rt = app.runtime
    t0 = NOW.replace(microsecond=0)
    await _seed(rt.engine, [
        (t0, "pki.cert.issue", "01", "scep:default"),
        (t0 + timedelta(seconds=1), "pki.cert.revoke", "01", "cli:root"),
        (t0 + timedelta(seconds=2), "pki.certificate", "02", "cli:root"),  # not under the prefix pki.cert.
        (t0 + timedelta(seconds=3), "device.create", "dev-1", "token:ab:ops"),
        (t0 + timedelta(seconds=4), "PKI.CERT.odd", "03", "cli:root"),  # case counts
        (t0 + timedelta(seconds=5), "pki_cert_x", "04", "cli:root"),  # '_' is no wildcard
    ])
    _, admin = await rt.tokens.create(scope="admin", name="ops", now=NOW)
    _, signin = await rt.tokens.create(scope="signin", name="rp", now=NOW)

    async with aiohttp.ClientSession(app.url, headers=bearer(admin)) as http:
        async def kinds(**params) -> list[str]:
            async with http.get("/api/v1/events", params=params) as r:
                assert r.status == 200, await r.text()
                return [e["kind"] for e in (await r.json())["events"]]

        async def problem(**params) -> dict:
            async with http.get("/api/v1/events", params=params) as r:
                assert r.status == 400 and r.content_type == "application/problem+json"
                return await r.json()

        assert await kinds(kind="pki.cert.*") == ["pki.cert.revoke", "pki.cert.issue"]
        assert await kinds(kind="pki.cert.") == ["pki.cert.revoke", "pki.cert.issue"]
        assert await kinds(kind="pki_cert.*") == []
        assert await kinds(kind="pki.cert.issue") == ["pki.cert.issue"]
        assert await kinds(kind="pki.cert") == []  # exact
        assert await kinds(actor="cli:root", subject="01") == ["pki.cert.revoke"]
        since = (t0 + timedelta(seconds=1)).isoformat()
        until = (t0 + timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
        assert await kinds(since=since, until=until) == ["pki.certificate", "pki.cert.revoke"]
        # the same instant written with another offset
        assert await kinds(since=(t0 + timedelta(seconds=4)).astimezone(
            __import__("datetime").timezone(timedelta(hours=5, minutes=30))).isoformat()) == [
            "pki_cert_x", "PKI.CERT.odd"]
        for bad in ({"since": "2026-12-01T00:00:00"}, {"since": "yesterday"}, {"until": "2026-13-01T00:00:00Z"},
                    {"kind": "*"}, {"kind": "pki.*x"}, {"kind": "a" * 70}, {"kind": "pki cert"},
                    {"actor": "x" * 300}, {"cursor": "not-a-cursor"}, {"limit": "0"}):
            assert (await problem(**bad))["status"] == 400, bad

        # pages: newest first by id, every row once through `next`
        seen, url = [], "/api/v1/events?limit=4"
        for _ in range(10):
            async with http.get(url) as r:
                body = await r.json()
            seen += [e["id"] for e in body["events"]]
            assert ("Link" in r.headers) == (body["next"] is not None)
            if body["next"] is None:
                break
            url = body["next"]
        all_ids = [e["id"] for e in (await (await http.get("/api/v1/events?limit=1000")).json())["events"]]
        assert seen == all_ids == sorted(all_ids, reverse=True) and len(all_ids) >= 6
        event = (await (await http.get("/api/v1/events", params={"kind": "device.create"})).json())["events"][0]
        assert event["data"] == {"n": "device.create"} and event["subject"] == "dev-1"
        assert event["at"] == (t0 + timedelta(seconds=3)).isoformat()

    async with aiohttp.ClientSession(app.url) as http:
        async with http.get("/api/v1/events") as r:
            assert r.status == 401
        async with http.get("/api/v1/events", headers=bearer(signin)) as r:
            assert r.status == 403


def test_cli_audit_list_and_cli_actor(cli, tmp_path):
    user = getpass.getuser()
    cli("device", "add", "dev-9")
    settings = settings_for(tmp_path / "data")

    async def seed():
        engine = create_engine(settings.database_url())
        try:
            await _seed(engine, [(NOW, "pki.cert.issue", "=HYPERLINK(\"http://x\")", "+cmd"),
                                 (NOW, "security.binding.refused", "dev-9", "attestation")])
        finally:
            await engine.dispose()

    asyncio.run(seed())
    listed = json.loads(cli("audit", "list", "--format", "json", "--subject", "dev-9"))
    assert [(e["kind"], e["actor"]) for e in listed] == [("security.binding.refused", "attestation"),
                                                         ("device.create", f"cli:{user}")]
    table = cli("audit", "list", "--kind", "device.*").splitlines()
    assert len(table) == 1 and table[0].split("\t")[2:5] == ["device.create", "dev-9", f"cli:{user}"]
    rows = cli("audit", "list", "--format", "csv", "--kind", "pki.cert.*").splitlines()
    assert rows[0] == "id,at,kind,subject,actor,data,chain_seq,chain_hash"
    assert ",\"'=HYPERLINK(\"\"http://x\"\")\",'+cmd," in rows[1]
    assert "since: an ISO 8601" in cli("audit", "list", "--since", "2026-12-01", code=2)
    assert "--cursor" in cli("audit", "list", "--cursor", "zz", code=2)


@pytest.mark.parametrize("value", ["pki.cert.*", "pki.cert.", "x"])
def test_kind_parse(value):
    from scep_server.audit.service import parse_kind

    kind, prefix = parse_kind(value)
    assert (kind, prefix) == ({"pki.cert.*": "pki.cert.", "pki.cert.": "pki.cert.", "x": "x"}[value], value != "x")
