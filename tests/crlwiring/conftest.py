"""Fixtures of the CRL wiring tests: the full application with quick CRL timings, devices enrolled over SCEP."""
from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scep_server.scep import ContentCipher, MessageType, PKIStatus, client
from scep_server.scep.cms import parse_degenerate
from tests.helpers import require_tool
from tests.server import run, start_app

# What these tests configure and promise: a status change in the process that makes it is on that
# process's CRL after coalesce_delay plus one re-sign; another process serves it within poll_interval more.
FAST_CRL = {"coalesce_delay": 0.1, "poll_interval": 0.5, "retry_interval": 0.5}




@pytest.fixture(scope="session")
def lint_crl() -> str:
    local = Path(sys.executable).parent / "lint_crl"
    return require_tool(str(local) if local.exists() else "lint_crl")


@pytest.fixture
def ca_key_type() -> str:
    """The CA key of the `server` fixture (a test parametrises it to run over EC CAs)."""
    return "rsa"


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url, ca_key_type):
    srv = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL, ca={"key_type": ca_key_type})
    await publisher(srv).wait_newer(None, timeout=10)
    return srv


def service(srv):
    return srv.runtime.crl


def publisher(srv, ca: str = "default"):
    return service(srv).publishers[ca]


def ca_pem_path(srv) -> Path:
    return srv.data_dir / "ca" / "default" / "ca.crt"


def cdp_of(cert: x509.Certificate) -> str:
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return cdp[0].full_name[0].value


async def enrol_with_scepclient(scepclient: str, srv_url: str, challenge: str, workdir: Path,
                                cn: str, *, extra: list[str] = ()) -> x509.Certificate:
    """micromdm's scepclient enrols a device key; returns the issued certificate (client.pem in workdir).

    `extra`: more scepclient arguments (RunningServer.scepclient_recipient for an EC CA)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rc, out, err = await run("openssl", "genrsa", "-traditional", "-out", str(workdir / "k.pem"), "2048")
    assert rc == 0, err
    rc, out, err = await run(scepclient, "-server-url", f"{srv_url}/scep/default", "-private-key", "k.pem",
                             "-challenge", challenge, "-cn", cn, *extra, cwd=workdir)
    assert rc == 0, out + err
    return x509.load_pem_x509_certificate((workdir / "client.pem").read_bytes())


async def ra_and_ca(session: aiohttp.ClientSession, url: str) -> tuple[bytes, bytes]:
    async with session.get(f"{url}/scep/default?operation=GetCACert") as resp:
        assert resp.status == 200
        certs, _ = parse_degenerate(await resp.read())
    return certs[0], certs[1]


def _request(key, ra_der: bytes, message_type: MessageType, content: bytes, signer_der: bytes) -> bytes:
    cipher = ContentCipher.AES128_CBC
    return client.build_request(
        message_type, content=content, signer_cert_der=signer_der, signer_key=key, recipient_cert_der=ra_der,
        transaction_id=client.transaction_id_for(key.public_key()), sender_nonce=os.urandom(16),
        cek=os.urandom(cipher.key_size), iv=os.urandom(cipher.block_size), cipher=cipher)


async def scep_operation(session: aiohttp.ClientSession, url: str, body: bytes, key, ra_der: bytes):
    async with session.post(f"{url}/scep/default?operation=PKIOperation", data=body) as resp:
        assert resp.status == 200, await resp.text()
        return client.parse_cert_rep(await resp.read(), key, ra_cert_der=ra_der)


async def enrol_with_codec(session: aiohttp.ClientSession, url: str, challenge: str, cn: str):
    """PKCSReq built with the project's client codec (quicker than a scepclient run); returns (key, cert)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ra_der, _ = await ra_and_ca(session, url)
    body = _request(key, ra_der, MessageType.PKCS_REQ, client.make_csr(key, cn, challenge),
                    client.make_self_signed_signer(key))
    rep = await scep_operation(session, url, body, key, ra_der)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    return key, x509.load_der_x509_certificate(rep.certs[0])


async def get_crl_over_scep(session: aiohttp.ClientSession, url: str, key, cert: x509.Certificate) -> bytes:
    """GetCRL (RFC 8894 §3.3.4) signed by an issued certificate, naming that certificate's issuer and serial."""
    ra_der, _ = await ra_and_ca(session, url)
    content = client.issuer_and_serial(cert.issuer, cert.serial_number)
    body = _request(key, ra_der, MessageType.GET_CRL, content, cert.public_bytes(serialization.Encoding.DER))
    rep = await scep_operation(session, url, body, key, ra_der)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert len(rep.crls) == 1
    return rep.crls[0]


async def wait_for(predicate, timeout: float, interval: float = 0.02):
    """Poll an async predicate until it returns a truthy value; returns (value, seconds waited)."""
    started = time.monotonic()
    while True:
        value = await predicate()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def crl_serials(der: bytes) -> dict[int, x509.ReasonFlags | None]:
    crl = x509.load_der_x509_crl(der)
    out = {}
    for entry in crl:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            reason = None
        out[entry.serial_number] = reason
    return out


async def fetch(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/pkix-crl"
        return await resp.read()


async def openssl_verify(openssl: str, ca_pem: Path, crl_der: bytes, cert: x509.Certificate, tmp: Path) -> tuple:
    """`openssl verify -crl_check` with the served CRL: returns (return code, output)."""
    tmp.mkdir(parents=True, exist_ok=True)
    crl_pem = tmp / "crl.pem"
    crl_pem.write_bytes(x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM))
    leaf = tmp / f"{cert.serial_number:x}.pem"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    rc, out, err = await run(openssl, "verify", "-crl_check", "-CAfile", str(ca_pem), "-CRLfile", str(crl_pem),
                             str(leaf))
    return rc, out + err


