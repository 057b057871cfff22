"""Fixtures of the binding tests: the full application, devices enrolled by micromdm's scepclient,
signatures made with the enrolled keys, and a settable clock."""
from __future__ import annotations

import base64
import subprocess
from datetime import timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from scep_server.binding.attestation import signed_bytes
from tests.factories import NOW, make_ca
from tests.server import run, start_app
from trustkit.clock import SettableClock

UTC = timezone.utc
FAST_CRL = {"coalesce_delay": 0.1, "poll_interval": 0.5, "retry_interval": 0.5,
            "checker": {"allow_networks": ["127.0.0.1/32"]}}  # the customers' CDPs are loopback test peers


async def attesting_profile(engine, ca_name: str = "default", name: str = "default", *,
                            device_trust: bool = True, kind: str = "static") -> None:
    """A profile whose certificates attest (`device_trust`), for tests that record certificates under it."""
    from scep_server.profiles import ProfileSettings, ProfileStore
    from tests.factories import NOW

    await ProfileStore(engine).create(name, ca=ca_name, challenge_kind=kind, now=NOW,
                                      static_secret="s" * 32 if kind == "static" else None,
                                      settings=ProfileSettings(device_trust=device_trust))


async def trust_default_profile(runtime) -> None:
    """Let the `default` static profile's certificates attest (it is created with device_trust off)."""
    profile = await runtime.profiles.get("default")
    await runtime.profiles.update("default", now=runtime.clock(),
                                  settings=profile.settings.model_copy(update={"device_trust": True}))


@pytest.fixture
def clock():
    return SettableClock()


class Enrolled:
    """A device certificate issued through SCEP and the PKCS#1 key file scepclient used."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.key_path = workdir / "k.pem"
        self.cert_pem = (workdir / "client.pem").read_bytes()
        self.cert = x509.load_pem_x509_certificate(self.cert_pem)
        self.key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)

    @property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")

    def sign(self, nonce: str, device_id: str, algorithm: str = "rsa-pkcs1v15-sha256") -> str:
        return sign(self.key, nonce, device_id, algorithm)


def sign(key, nonce: str, device_id: str, algorithm: str = "rsa-pkcs1v15-sha256") -> str:
    data = signed_bytes(nonce, device_id)
    digest = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[algorithm[-6:]]
    if algorithm.startswith("ecdsa"):
        sig = key.sign(data, ec.ECDSA(digest))
    elif algorithm.startswith("rsa-pss"):
        sig = key.sign(data, padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH), digest)
    else:
        sig = key.sign(data, padding.PKCS1v15(), digest)
    return base64.b64encode(sig).decode()


async def enrol(scepclient: str, url: str, challenge: str, workdir: Path, cn: str) -> Enrolled:
    """micromdm's scepclient enrols a fresh `openssl genrsa -traditional` key through /scep/default."""
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(workdir / "k.pem"), "2048"], check=True,
                   capture_output=True)
    rc, out, err = await run(scepclient, "-server-url", f"{url}/scep/default", "-private-key", "k.pem",
                             "-challenge", challenge, "-cn", cn, cwd=workdir)
    assert rc == 0, out + err
    return Enrolled(workdir)


class Api:
    """The HTTP API as a sign-in service and an administrator use it."""

    def __init__(self, session: aiohttp.ClientSession, url: str, signin: str, admin: str):
        self.session = session
        self.url = url
        self.signin = {"Authorization": f"Bearer {signin}"}
        self.admin = {"Authorization": f"Bearer {admin}"}

    async def post(self, path: str, body: dict | None = None, *, admin: bool = False, expect: int | None = 200):
        async with self.session.post(self.url + path, json=body,
                                     headers=self.admin if admin else self.signin) as resp:
            data = await resp.json(content_type=None)
            if expect is not None:
                assert resp.status == expect, (resp.status, data)
            return data

    async def get(self, path: str, *, expect: int = 200):
        async with self.session.get(self.url + path, headers=self.admin) as resp:
            data = await resp.json(content_type=None)
            assert resp.status == expect, (resp.status, data)
            return data

    async def add_device(self, device_id: str) -> dict:
        return await self.post("/api/v1/devices", {"id": device_id}, admin=True, expect=201)

    async def action(self, device_id: str, action: str, expect: int = 200) -> dict:
        return await self.post(f"/api/v1/devices/{device_id}/{action}", {"reason": f"test {action}"}, admin=True,
                               expect=expect)

    async def nonce(self, device_id: str) -> str:
        return (await self.post("/api/v1/attestation/challenge", {"device_id": device_id}))["nonce"]

    async def attest(self, device_id: str, cert_pem: bytes, key, *, algorithm: str = "rsa-pkcs1v15-sha256",
                     nonce: str | None = None, expect: int = 200) -> dict:
        nonce = nonce or await self.nonce(device_id)
        return await self.post("/api/v1/attestation/verify", {
            "device_id": device_id, "nonce": nonce, "certificate": cert_pem.decode(),
            "signature": sign(key, nonce, device_id, algorithm), "algorithm": algorithm}, expect=expect)


async def tokens(runtime) -> tuple[str, str]:
    now = runtime.clock()
    _, signin = await runtime.tokens.create(scope="signin", name="sign-in service", now=now)
    _, admin = await runtime.tokens.create(scope="admin", name="admin", now=now)
    return signin, admin


@pytest.fixture
async def server(aiohttp_server, tmp_path, clock):
    """The application on SQLite with a settable clock (store behaviour on both databases: test_store.py)."""
    running = await start_app(aiohttp_server, tmp_path, None, clock=clock, crl=FAST_CRL)
    await trust_default_profile(running.runtime)
    return running


@pytest.fixture
async def api(server):
    signin, admin = await tokens(server.runtime)
    async with aiohttp.ClientSession() as session:
        yield Api(session, server.url, signin, admin)


__all__ = ["start_app", "rsa"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """One issuing CA per test module (its key generation is the slow part)."""
    return make_ca(tmp_path_factory.mktemp("ca"))


START = NOW + timedelta(minutes=30)
"""Where the binding tests' clocks start: half an hour after the factories' NOW."""
