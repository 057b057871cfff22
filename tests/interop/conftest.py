"""Fixtures for the interop tests: the full application on a real port, and PKCS#1 device keys for scepclient."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.scep import ContentCipher, Digest, MessageType, client
from scep_server.scep.cms import parse_degenerate
from tests.server import start_app


@pytest.fixture
def ca_key_type() -> str:
    """The CA key of the `server` fixture (tests parametrise it to run over EC CAs; the RA stays RSA)."""
    return "rsa"


@pytest.fixture
def ra_mode() -> str:
    """The RA certificates of the `server` fixture: "single" (one RA certificate), or "split" (a signing and an
    encryption RA certificate, as NDES publishes them); tests parametrise it."""
    return "single"


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url, ca_key_type, ra_mode):
    started = await start_app(aiohttp_server, tmp_path, db_url, ca={"key_type": ca_key_type})
    if ra_mode == "split":
        await split_ras(started)
    return started


async def split_ras(server) -> None:
    """Switch the server's CA to split RA certificates, as `scep-server ca renew-ra --mode split` does."""
    from scep_server.ca import lifecycle

    await lifecycle.renew(server.runtime, "default", actor="test", mode="split")
    assert server.runtime.cas["default"].ra_mode == "split"



def device_key(path: Path) -> Path:
    """scepclient reads only PKCS#1 ("RSA PRIVATE KEY") PEM files."""
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(path), "2048"], check=True, capture_output=True)
    return path


def load_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), None)


async def ra_and_ca(session, url: str) -> tuple[bytes, bytes]:
    """The first certificate of GetCACert (the RA; the signing one of split RA certificates) and the last (the
    CA)."""
    async with session.get(f"{url}?operation=GetCACert") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/x-x509-ca-ra-cert"
        certs, _ = parse_degenerate(await resp.read())
    return certs[0], certs[-1]


def pkcs_req(key, ra_der: bytes, *, challenge: str | None, cn: str = "device", signer_der: bytes | None = None,
             message_type: MessageType = MessageType.PKCS_REQ, content: bytes | None = None,
             transaction_id: str | None = None, cipher: ContentCipher = ContentCipher.AES128_CBC,
             digest: Digest = Digest.SHA256) -> bytes:
    """A request pkiMessage built with the project's client codec (used where no real client can make it)."""
    return client.build_request(
        message_type, content=content if content is not None else client.make_csr(key, cn, challenge),
        signer_cert_der=signer_der or client.make_self_signed_signer(key), signer_key=key,
        recipient_cert_der=ra_der, transaction_id=transaction_id or client.transaction_id_for(key.public_key()),
        sender_nonce=os.urandom(16), cek=os.urandom(cipher.key_size), iv=os.urandom(cipher.block_size),
        cipher=cipher, digest=digest)


def pem_cert(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


async def renew_any_time(server, profile: str = "default") -> None:
    """Renewal normally opens in the last third of a certificate's life; these tests renew right after issue."""
    rt = server.runtime
    current = await rt.profiles.get(profile)
    await rt.profiles.update(profile, now=rt.clock(), settings=current.settings.model_copy(
        update={"renewal_window_days": current.settings.template.validity_days + 1}))
