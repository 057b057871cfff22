"""`openssl ocsp` as the client: POST with and without nonce, GET with the request it wrote, -serial, and
verification of the delegated signer against the CA alone (-CAfile)."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from scep_server.ca.inventory import Reason, serial_hex
from tests.factories import pem
from tests.helpers import require_tool
from tests.server import run

from .conftest import ca_of, get_path, issue

pytestmark = pytest.mark.interop


@pytest.fixture(scope="session")
def openssl() -> str:
    return require_tool("openssl")


async def _certs(server, device_key, tmp_path: Path) -> dict[str, tuple[Path, x509.Certificate]]:
    ca = ca_of(server)
    (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
    out = {}
    for name in ("good", "revoked", "held"):
        cert = await issue(server, device_key, name)
        path = tmp_path / f"{name}.pem"
        path.write_bytes(pem(cert))
        out[name] = (path, cert)
    rt = server.runtime
    await rt.revocation.revoke(serial_hex(out["revoked"][1].serial_number), Reason.KEY_COMPROMISE, actor="test")
    await rt.revocation.hold(serial_hex(out["held"][1].serial_number), actor="test")
    return out


async def _ocsp(openssl: str, *args: str) -> str:
    rc, out, err = await run(openssl, "ocsp", *args)
    assert rc == 0, out + err
    assert "Response verify OK" in err or "Response verify OK" in out, out + err
    return out


@pytest.mark.parametrize("nonce", ["-nonce", "-no_nonce"])
async def test_openssl_post(server, device_key, tmp_path, openssl, nonce):
    certs = await _certs(server, device_key, tmp_path)
    ca_pem = str(tmp_path / "ca.pem")
    url = f"{server.url}/ocsp/default"
    for name, (path, cert) in certs.items():
        out = await _ocsp(openssl, "-issuer", ca_pem, "-cert", str(path), "-url", url, "-CAfile", ca_pem, nonce,
                          "-resp_text")
        line = next(li for li in out.splitlines() if li.startswith(str(path)))
        if name == "good":
            assert line.endswith(": good"), out
        else:
            assert line.endswith(": revoked"), out
            reason = "keyCompromise" if name == "revoked" else "certificateHold"
            assert f"Reason: {reason}" in out, out
        if nonce == "-nonce":
            assert "OCSP Nonce" in out, out
            assert "WARNING: no nonce in response" not in out
        else:
            assert "OCSP Nonce" not in out, out
    # a serial never issued, named with -serial
    out = await _ocsp(openssl, "-issuer", ca_pem, "-serial", "0x1234abcd", "-url", url, "-CAfile", ca_pem, nonce)
    assert "0x1234abcd: unknown" in out, out


async def test_openssl_request_over_get(server, device_key, tmp_path, openssl):
    """RFC 5019 GET: openssl writes the request (-reqout), the GET carries it, openssl checks the answer (-respin)."""
    certs = await _certs(server, device_key, tmp_path)
    ca_pem = str(tmp_path / "ca.pem")
    async with aiohttp.ClientSession() as session:
        for name, (path, _cert) in certs.items():
            req = tmp_path / f"{name}.req"
            rc, out, err = await run(openssl, "ocsp", "-issuer", ca_pem, "-sha256", "-cert", str(path),
                                     "-no_nonce", "-reqout", str(req))
            assert rc == 0, out + err
            async with session.get(f"{server.url}/ocsp/default/{get_path(req.read_bytes())}") as resp:
                assert resp.status == 200
                assert "max-age=" in resp.headers["Cache-Control"]
                (tmp_path / f"{name}.resp").write_bytes(await resp.read())
            out = await _ocsp(openssl, "-respin", str(tmp_path / f"{name}.resp"), "-issuer", ca_pem, "-sha256",
                              "-cert", str(path), "-CAfile", ca_pem, "-no_nonce")
            assert f"{path}: {'good' if name == 'good' else 'revoked'}" in out, out


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384"])
async def test_openssl_verifies_responses_signed_by_an_ec_ca_key(aiohttp_server, tmp_path, db_url, device_key,
                                                                 openssl, key_type):
    """``ocsp.signer = "ca"`` with an EC CA key: openssl verifies the response against the CA certificate."""
    from tests.server import start_app

    srv = await start_app(aiohttp_server, tmp_path, db_url, ocsp={"signer": "ca"}, ca={"key_type": key_type})
    certs = await _certs(srv, device_key, tmp_path)
    ca_pem = str(tmp_path / "ca.pem")
    url = f"{srv.url}/ocsp/default"
    for nonce in ("-nonce", "-no_nonce"):
        for name, (path, _cert) in certs.items():
            out = await _ocsp(openssl, "-issuer", ca_pem, "-cert", str(path), "-url", url, "-CAfile", ca_pem, nonce)
            assert f"{path}: {'good' if name == 'good' else 'revoked'}" in out, out
