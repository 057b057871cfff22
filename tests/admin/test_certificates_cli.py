"""`cert list` filters, `cert show`, `cert revoke --invalidity-date` and `ca list` on the command line."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner

from scep_server.cli import main
from scep_server.clictx import cli_actor
from tests.factories import csr, record_issued, rsa_key, settings_for


def _issue(tmp_path, ages_days: list[int], profile: str = "default") -> list[str]:
    from scep_server.ca.authority import random_serial
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from scep_server.runtime import load_cas
    from trustkit.clock import utcnow
    from trustkit.db import create_engine

    settings = settings_for(tmp_path / "data")
    [ca] = load_cas(settings).values()
    key = rsa_key()
    now = utcnow()

    async def record():
        engine = create_engine(settings.database_url())
        try:
            return [await record_issued(engine, ca, ca.issue(csr(key), IssuancePolicy(CertificateTemplate()),
                                                             serial=random_serial(), now=now - timedelta(days=d)),
                                        issued_at=now - timedelta(days=d), profile=profile) for d in ages_days]
        finally:
            await engine.dispose()

    return asyncio.run(record())


def _invoke(tmp_path, *args, code=0):
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "data"), *args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def test_cert_list_filters(cli, tmp_path):
    recent, old = _issue(tmp_path, [0, 30])

    def serials(*args):
        return [line.split("\t")[0] for line in _invoke(tmp_path, "cert", "list", *args).stdout.splitlines()]

    assert serials() == [recent, old]
    week_ago = (datetime.now(timezone.utc) - timedelta(days=7)).date().isoformat()
    assert serials("--issued-after", week_ago) == [recent]
    assert serials("--issued-before", week_ago) == [old]
    assert serials("--serial-prefix", old[:10].upper()) == [old]
    assert serials("--expires-after", "2999-01-01") == []
    assert serials("--device", "nobody") == []
    rows = json.loads(_invoke(tmp_path, "cert", "list", "--format", "json", "--status", "valid").stdout)
    assert [r["serial"] for r in rows] == [recent, old] and rows[0]["revocation_reason"] is None
    for option, value in (("--issued-after", "last week"), ("--serial-prefix", "xyz"), ("--device", "a b"),
                          ("--expires-before", "2026-02-30")):
        result = _invoke(tmp_path, "cert", "list", option, value, code=2)
        assert option in result.output, result.output


def test_cert_show_and_revoke_with_invalidity_date(cli, tmp_path):
    [serial] = _issue(tmp_path, [0])
    shown = json.loads(_invoke(tmp_path, "cert", "show", serial.upper()).stdout)
    assert shown["serial"] == serial and shown["status"] == "valid" and shown["pem"].startswith("-----BEGIN")
    assert shown["events"] == [] and shown["binding"] is None

    future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    assert "--invalidity-date" in _invoke(tmp_path, "cert", "revoke", serial, "--invalidity-date", future,
                                          code=2).output
    assert "--invalidity-date" in _invoke(tmp_path, "cert", "revoke", serial, "--invalidity-date", "then",
                                          code=2).output
    out = _invoke(tmp_path, "cert", "revoke", serial, "--reason", "key-compromise",
                  "--invalidity-date", "2026-01-02T03:04:05Z").stdout
    assert out.strip() == f"{serial}: revoked (key_compromise)"
    shown = json.loads(_invoke(tmp_path, "cert", "show", serial).stdout)
    assert shown["invalidity_date"] == "2026-01-02T03:04:05+00:00"
    assert [(e["kind"], e["actor"]) for e in shown["events"]] == [("pki.cert.revoke", cli_actor())]

    unknown = _invoke(tmp_path, "cert", "show", "abcdef", code=1)
    assert "no certificate with serial abcdef" in unknown.output
    assert "not a hexadecimal serial" in _invoke(tmp_path, "cert", "show", "xyz", code=2).output


def test_ca_list(cli, tmp_path):
    from scep_server.runtime import load_cas

    [ca] = load_cas(settings_for(tmp_path / "data")).values()
    _invoke(tmp_path, "crl", "publish")
    [row] = json.loads(_invoke(tmp_path, "ca", "list", "--format", "json").stdout)
    assert row["name"] == "default" and row["certificate"]["subject"] == ca.cert.subject.rfc4514_string()
    assert row["ra_certificate"]["not_after"] == ca.ra_cert.not_valid_after_utc.isoformat()
    assert row["crl"]["number"] == 1 and row["crl"]["state"] == "ok"
    table = _invoke(tmp_path, "ca", "list").stdout
    assert table.startswith("default\t") and "CRL #1 (ok" in table


def test_with_binding_off_ca_list_works_and_device_means_enrolled_for(cli, tmp_path, monkeypatch):
    from trustkit.db import create_engine, writer
    from scep_server.store.tables import certificates

    enrolled, other = _issue(tmp_path, [0, 1])

    async def mark():
        engine = create_engine(settings_for(tmp_path / "data").database_url())
        try:
            async with writer(engine).begin() as conn:
                await conn.execute(certificates.update().where(certificates.c.serial == enrolled)
                                   .values(enrolled_device_id="kiosk-1"))
        finally:
            await engine.dispose()

    asyncio.run(mark())
    monkeypatch.setenv("SCEP_SERVER_BINDING__ENABLED", "false")
    assert "binding capability is switched off" in _invoke(tmp_path, "device", "list", code=1).output
    [row] = json.loads(_invoke(tmp_path, "ca", "list", "--format", "json").stdout)
    assert row["name"] == "default"
    rows = json.loads(_invoke(tmp_path, "cert", "list", "--device", "kiosk-1", "--format", "json").stdout)
    assert [r["serial"] for r in rows] == [enrolled] and rows[0]["enrolled_device_id"] == "kiosk-1"
    shown = json.loads(_invoke(tmp_path, "cert", "show", enrolled).stdout)
    assert shown["binding"] is None and shown["enrolled_device_id"] == "kiosk-1"
