"""Fixtures of the OCSP tests: the full application, certificates issued by its CA straight into the inventory."""
from __future__ import annotations

import base64
from datetime import timedelta
from urllib.parse import quote

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from scep_server.ca.authority import random_serial
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from tests.factories import csr, record_issued, rsa_key
from tests.server import start_app

OCSP_REQUEST = "application/ocsp-request"


@pytest.fixture(scope="session")
def device_key():
    return rsa_key()


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url):
    return await start_app(aiohttp_server, tmp_path, db_url)


def ca_of(srv):
    return srv.runtime.cas["default"]


async def issue(srv, key, cn: str = "device-1") -> x509.Certificate:
    """A certificate of the server's CA, recorded in its inventory as the SCEP service records one."""
    ca = ca_of(srv)
    now = srv.runtime.clock()
    cert = ca.issue(csr(key, cn), IssuancePolicy(CertificateTemplate()), serial=random_serial(),
                    now=now - timedelta(minutes=1))
    await record_issued(srv.runtime.engine, ca, cert, issued_at=now)
    return cert


def request_der(cert: x509.Certificate, issuer: x509.Certificate, *, algorithm=hashes.SHA1(),
                nonce: bytes | None = None) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def get_path(der: bytes) -> str:
    """RFC 5019 §5: the base64 of the DER request, URL-encoded."""
    return quote(base64.b64encode(der).decode(), safe="")


async def post(url: str, body: bytes, ca: str = "default") -> tuple[aiohttp.ClientResponse, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/ocsp/{ca}", data=body, headers={"Content-Type": OCSP_REQUEST}) as resp:
            return resp, await resp.read()


async def get(url: str, der: bytes, ca: str = "default", headers=None) -> tuple[aiohttp.ClientResponse, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/ocsp/{ca}/{get_path(der)}", headers=headers or {}) as resp:
            return resp, await resp.read()
