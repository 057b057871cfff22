"""`scep-server cert revoke` and `crl publish|show` as separate processes against running `scep-server serve`
instances sharing one database: every instance serves the change within the configured bound."""
from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.ca.inventory import serial_hex
from tests.server import run, serve_processes

from .conftest import cdp_of, crl_serials, enrol_with_scepclient, fetch

POLL = 0.5
ENV = {"SCEP_SERVER_CRL__POLL_INTERVAL": str(POLL), "SCEP_SERVER_CRL__COALESCE_DELAY": "0.1"}
# promised: a CRL recorded by any process is served by every instance within poll_interval, plus the adoption
# (load + signature check); asserted with room for a loaded CI machine
CROSS_PROCESS_BOUND = POLL + 1.5


def _crl_number(der: bytes) -> int:
    return x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


async def _cli(data_dir, db_url, *args: str):
    return await run(sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), *args,
                     env={"SCEP_SERVER_DATABASE__URL": db_url, "SCEP_SERVER_CA__KEY_SIZE": "2048", **ENV})


async def _served_everywhere(session, urls, predicate, timeout: float) -> tuple[list[bytes], float]:
    started = time.monotonic()
    while True:
        bodies = [await fetch(session, f"{u}/crl/default.crl") for u in urls]
        if all(predicate(b) for b in bodies):
            return bodies, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not served by every instance within {timeout}s")
        await asyncio.sleep(0.02)


async def test_cli_revoke_reaches_every_running_instance_within_the_bound(tmp_path, db_url, scepclient):
    data_dir = tmp_path / "data"
    with serve_processes(data_dir, db_url, count=2, env=ENV) as urls:
        challenge = (data_dir / "default-challenge.txt").read_text().strip()
        cert = await enrol_with_scepclient(scepclient, urls[0], challenge, tmp_path / "dev", "cli-device")
        assert cdp_of(cert).endswith("/crl/default.crl")
        async with aiohttp.ClientSession() as session:
            first, _ = await _served_everywhere(session, urls, lambda b: True, timeout=10)
            assert cert.serial_number not in crl_serials(first[0])

            started = time.monotonic()
            rc, out, err = await _cli(data_dir, db_url, "cert", "revoke", f"{cert.serial_number:X}",
                                      "--reason", "key-compromise")
            cli_done = time.monotonic()
            assert rc == 0, out + err
            assert out.strip() == f"{serial_hex(cert.serial_number)}: revoked (key_compromise)"
            bodies, after_cli = await _served_everywhere(
                session, urls, lambda b: cert.serial_number in crl_serials(b), timeout=10)
            total = time.monotonic() - started
            print(f"cert revoke (CLI process) -> served by 2 instances: {after_cli * 1000:.0f} ms after the "
                  f"command ended, {total * 1000:.0f} ms including the command ({(cli_done - started) * 1000:.0f} ms)")
            assert after_cli < CROSS_PROCESS_BOUND
            # every instance serves the same CRL: same number, same bytes
            assert bodies[0] == bodies[1]
            assert crl_serials(bodies[0])[cert.serial_number] == x509.ReasonFlags.key_compromise

            # `crl publish` signs a higher number; both instances serve it within the bound
            rc, out, err = await _cli(data_dir, db_url, "crl", "publish")
            assert rc == 0, out + err
            fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
            number = int(fields["number"])
            assert number > _crl_number(bodies[0])
            assert int(fields["entries"]) == 1 and fields["this_update"] and fields["next_update"]
            bodies, waited = await _served_everywhere(session, urls, lambda b: _crl_number(b) >= number,
                                                      timeout=10)
            assert waited < CROSS_PROCESS_BOUND

            # `crl show` reads what is recorded (a server may have re-signed since: numbers only grow)
            rc, out, err = await _cli(data_dir, db_url, "crl", "show", "--format", "json")
            assert rc == 0, out + err
            assert json.loads(out)["number"] >= number
            rc, out, err = await _cli(data_dir, db_url, "crl", "show", "--pem")
            assert rc == 0, out + err
            shown = x509.load_pem_x509_crl(out.encode()).public_bytes(serialization.Encoding.DER)
            assert _crl_number(shown) >= number and cert.serial_number in crl_serials(shown)


def test_cli_errors_are_clear(tmp_path, monkeypatch):
    """Usage errors exit 2, refused operations exit 1, each with a message naming the problem."""
    from click.testing import CliRunner

    # in-process: keep the commands from reconfiguring this test process's logging
    monkeypatch.setattr("scep_server.logs.configure", lambda *args, **kwargs: None)

    from scep_server.cli import main
    from scep_server.runtime import initialise
    from tests.factories import settings_for

    data_dir = tmp_path / "data"
    asyncio.run(initialise(settings_for(data_dir)))
    runner = CliRunner()
    env = {"SCEP_SERVER_CA__KEY_SIZE": "2048"}

    def cli(*args):
        result = runner.invoke(main, ["--data-dir", str(data_dir), *args], env=env)
        return result.exit_code, result.output

    code, out = cli("cert", "revoke", "nothex")
    assert code == 2 and "not a hexadecimal serial" in out
    code, out = cli("cert", "revoke", "abc")
    assert code == 1 and "no certificate with serial abc" in out
    code, out = cli("cert", "release", "abc")
    assert code == 1 and "no certificate with serial abc" in out
    code, out = cli("cert", "revoke", "abc", "--reason", "certificate-hold")
    assert code == 2 and "unknown revocation reason" in out
    code, out = cli("crl", "show")
    assert code == 1 and "no CRL published yet" in out
    code, out = cli("crl", "show", "--ca", "other")
    assert code == 1 and "no CA named 'other'" in out
    code, out = cli("crl", "publish", "--format", "json")
    assert code == 0, out
    assert json.loads(out[out.index("{"):])["number"] == 1
