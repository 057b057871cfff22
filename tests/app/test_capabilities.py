"""Optional capabilities switched by configuration, and CLI commands that open only what they use."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from scep_server.app import JOBS
from scep_server.runtime import CaKeysUnavailable, CapabilityOff, Uses, load_cas, open_runtime
from tests.factories import csr, record_issued, rsa_key, settings_for
from tests.server import start_app

ROOT = Path(__file__).resolve().parents[2]
OFF = {"otp": {"enabled": False}, "binding": {"enabled": False}, "challenge": {"enabled": False}}

# (method, path) of one route of each optional capability
OPTIONAL_ROUTES = {
    "otp": [("GET", "/wsapi/2.0/verify"), ("POST", "/api/v1/otp/verify"), ("GET", "/api/v1/yubikeys")],
    "binding": [("GET", "/api/v1/devices"), ("POST", "/api/v1/attestation/challenge"),
                ("GET", "/api/v1/external-cas")],
    "challenge": [("GET", "/scep/default/challenge"), ("POST", "/api/v1/challenges/default")],
}


def _routed(app, routes) -> list[bool]:
    """Whether the application has a route for each (method, path)."""
    def matches(resource, path: str) -> bool:
        info = resource.get_info()
        if "pattern" in info:
            return info["pattern"].fullmatch(path) is not None
        return info.get("path") == path

    return [any(matches(res, path) and any(r.method in (method, "*") for r in res)
                for res in app.router.resources()) for method, path in routes]


async def _statuses(url: str, token: str, routes) -> list[int]:
    out = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for method, path in routes:
            async with session.request(method, url + path) as resp:
                out.append(resp.status)
    return out


async def test_capabilities_switched_off_have_no_routes_jobs_services_or_key(aiohttp_server, tmp_path):
    srv = await start_app(aiohttp_server, tmp_path, **OFF)
    rt = srv.runtime
    assert rt.otp is None and rt.binding is None and rt.challenges is None
    assert rt.scep is not None and rt.crl is not None
    assert rt.scep.device_identity is None and set(rt.scep.verifiers) == {"static"}
    assert not (srv.data_dir / "otp-kek.key").exists()  # no key-encryption key is made or needed
    jobs = set(srv.app[JOBS].states)
    assert not any(name.split(".")[0] in ("otp", "binding", "challenge") for name in jobs)
    assert "scep.ack_reconciler" in jobs and any(name.startswith("crl.") for name in jobs)
    _, token = await rt.tokens.create(scope="admin", name="t", now=rt.clock())
    for capability, routes in OPTIONAL_ROUTES.items():
        assert _routed(srv.app, routes) == [False] * len(routes), capability
        assert await _statuses(srv.url, token, routes) == [404] * len(routes), capability
    # the core stays: SCEP, CRLs, readiness (without the absent checks), pending enrolments
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.get(srv.url + "/scep/default?operation=GetCACaps") as resp:
            assert resp.status == 200
        async with session.get(srv.url + "/api/v1/enrolments") as resp:
            assert resp.status == 200
        async with session.get(srv.url + "/readyz") as resp:
            checks = (await resp.json())["checks"]
    assert "otp" not in checks and "crl" in checks


async def test_capabilities_on_by_default(aiohttp_server, tmp_path):
    srv = await start_app(aiohttp_server, tmp_path)
    rt = srv.runtime
    assert rt.otp is not None and rt.binding is not None and rt.challenges is not None
    assert rt.scep.device_identity == rt.binding.devices.enrolment_device
    assert {"static", "dynamic", "delegated"} <= set(rt.scep.verifiers)
    jobs = {name.split(".")[0] for name in srv.app[JOBS].states}
    assert {"otp", "binding", "challenge", "crl", "scep"} <= jobs
    _, token = await rt.tokens.create(scope="admin", name="t", now=rt.clock())
    for capability, routes in OPTIONAL_ROUTES.items():
        assert _routed(srv.app, routes) == [True] * len(routes), capability
    assert 404 not in await _statuses(srv.url, token, OPTIONAL_ROUTES["otp"] + OPTIONAL_ROUTES["binding"])


async def test_a_process_opens_only_what_it_uses(tmp_path, monkeypatch):
    settings = settings_for(tmp_path / "data")
    from scep_server.runtime import initialise

    await initialise(settings)
    monkeypatch.setenv(settings.ca.passphrase_env, "not the passphrase")  # any read of a CA key fails
    async with open_runtime(settings, uses=Uses()) as rt:
        assert rt.cas == {} and rt.scep is None and rt.crl is None and rt.otp is None
        assert await rt.profiles.list()
    with pytest.raises(CaKeysUnavailable):  # the CRL signs: it needs the keys
        async with open_runtime(settings, uses=Uses(crl=True)):
            pass
    off = settings_for(tmp_path / "data", **OFF)
    for uses in (Uses(otp=True), Uses(binding=True), Uses(challenge=True)):
        with pytest.raises(CapabilityOff, match="switched off"):
            async with open_runtime(off, uses=uses):
                pass


def test_read_commands_need_neither_the_ca_keys_nor_the_otp_key(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SCEP_CA_PASSPHRASE", "not the passphrase")
    monkeypatch.setenv("SCEP_SERVER_OTP__KEK_ENV", "NO_SUCH_OTP_KEK")
    monkeypatch.delenv("NO_SUCH_OTP_KEK", raising=False)
    assert cli("profile", "list").startswith("default\tstatic")
    assert "default" in cli("profile", "show", "default")
    assert cli("cert", "list") == ""
    assert cli("yubikey", "report").startswith("SERIAL")
    assert cli("token", "create", "--scope", "admin").startswith("id: ")
    assert cli("profile", "add", "more", "--challenge", "dynamic").startswith("profile 'more' created")
    assert "is not set" in cli("otp-client", "add", code=1)  # sealing a client key needs the KEK
    assert "cannot read the CA keys" in cli("crl", "publish", code=1)  # signing needs them


def test_commands_of_a_capability_switched_off_say_so(cli, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_OTP__ENABLED", "false")
    monkeypatch.setenv("SCEP_SERVER_BINDING__ENABLED", "false")
    monkeypatch.setenv("SCEP_SERVER_CHALLENGE__ENABLED", "false")
    assert "[otp] enabled = false" in cli("yubikey", "report", code=1)
    assert "[binding] enabled = false" in cli("device", "list", code=1)
    assert "[challenge] enabled = false" in cli("challenge", "status", "default", code=1)
    assert cli("enrolment", "list") == ""  # approvals are part of the core
    assert cli("profile", "list").startswith("default")


def test_cert_revoke_signs_no_crl(cli, tmp_path, monkeypatch):
    from scep_server.ca.authority import random_serial
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from trustkit.clock import utcnow
    from trustkit.db import create_engine

    settings = settings_for(tmp_path / "data")
    [ca] = load_cas(settings).values()
    cert = ca.issue(csr(rsa_key()), IssuancePolicy(CertificateTemplate()), serial=random_serial(), now=utcnow())

    async def record():
        engine = create_engine(settings.database_url())
        try:
            return await record_issued(engine, ca, cert, issued_at=utcnow())
        finally:
            await engine.dispose()

    serial = asyncio.run(record())
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*") if p.suffix != ".db")
    monkeypatch.setenv("SCEP_CA_PASSPHRASE", "not the passphrase")  # the command reads no CA key
    assert cli("cert", "revoke", serial, "--reason", "superseded").strip() == f"{serial}: revoked (superseded)"
    monkeypatch.delenv("SCEP_CA_PASSPHRASE")
    assert "no CRL published yet" in cli("crl", "show", code=1)  # nothing was signed or recorded
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*") if p.suffix != ".db")
    assert after == before
    assert json.loads(cli("cert", "list", "--format", "json"))[0]["status"] == "revoked"


def test_help_imports_no_service_module():
    """`scep-server --help` lists every group without importing the services (it stays quick)."""
    code = ("import sys\nfrom click.testing import CliRunner\nfrom scep_server.cli import main\n"
            "out = CliRunner().invoke(main, ['--help']).output\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'sqlalchemy', 'cryptography', "
            "'pydantic', 'structlog', 'asyncio'})\n"
            "print(heavy, 'yubikey' in out and 'crl' in out and 'device' in out and 'challenge' in out)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[] True", out.stdout + out.stderr


def test_otp_command_choices_match_the_package():
    from otp import cli
    from otp.report import FORMATS
    from otp.tables import STATUSES

    assert cli.STATUSES == STATUSES and cli.FORMATS == FORMATS
