"""Shared material of the challenge tests: a settable clock, the app on a real port, SCEP requests."""
from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from scep_server.challenge.basic import hash_password
from scep_server.profiles import ProfileSettings
from scep_server.scep import ContentCipher, MessageType, client
from scep_server.scep.client import CertRepResult
from tests.server import RunningServer, start_app
from trustkit.clock import SettableClock

USER, PASSWORD = "jamf-scep", "correct horse battery staple"
# low scrypt cost keeps the tests quick; production hashes use the default cost
FAST_HASH = hash_password(PASSWORD, log2_n=10)


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5))


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url, clock) -> RunningServer:
    return await start_app(aiohttp_server, tmp_path, db_url, clock=clock)


async def add_profile(srv: RunningServer, name: str, kind: str, challenge: dict, **settings) -> None:
    rt = srv.runtime
    await rt.profiles.create(name, ca=next(iter(rt.cas)), challenge_kind=kind, now=rt.clock(),
                             settings=ProfileSettings(challenge=challenge, **settings))


def dynamic(**extra) -> dict:
    return {"credentials": {"username": USER, "password_hash": FAST_HASH}, **extra}


def device_key_file(path: Path) -> Path:
    """scepclient reads only PKCS#1 ("RSA PRIVATE KEY") PEM files."""
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(path), "2048"], check=True, capture_output=True)
    return path


def load_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), None)


def build(srv: RunningServer, key, *, challenge: str | None, cn: str = "device", sans=(),
          message_type: MessageType = MessageType.PKCS_REQ, content: bytes | None = None,
          transaction_id: str | None = None) -> bytes:
    ca = next(iter(srv.runtime.cas.values()))
    cipher = ContentCipher.AES128_CBC
    return client.build_request(
        message_type, content=content if content is not None else client.make_csr(key, cn, challenge, sans),
        signer_cert_der=client.make_self_signed_signer(key), signer_key=key, recipient_cert_der=ca.ra_cert_der,
        transaction_id=transaction_id or client.transaction_id_for(key.public_key()), sender_nonce=os.urandom(16),
        cek=os.urandom(cipher.key_size), iv=os.urandom(cipher.block_size), cipher=cipher)


async def pki(session: aiohttp.ClientSession, srv: RunningServer, profile: str, body: bytes, key) -> CertRepResult:
    async with session.post(f"{srv.url}/scep/{profile}?operation=PKIOperation", data=body) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.read()
    ca = next(iter(srv.runtime.cas.values()))
    return client.parse_cert_rep(data, key, ra_cert_der=ca.ra_cert_der)


async def enrol(session, srv: RunningServer, profile: str, key, challenge: str | None, **kw) -> CertRepResult:
    return await pki(session, srv, profile, build(srv, key, challenge=challenge, **kw), key)
