"""Keys and certificates for the SCEP codec tests: the OpenSSL-made fixture CA/RA and the micromdm client keys."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from scep_server.scep import ContentCipher, Digest, MessageType, rsa_padding
from scep_server.scep import client

from .capture_server import FIXTURES, load_cert_der, load_key

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
_counter = itertools.count()


@dataclass(frozen=True)
class PKI:
    ca_key: rsa.RSAPrivateKey
    ca_der: bytes
    ra_key: rsa.RSAPrivateKey
    ra_der: bytes
    dev_key: rsa.RSAPrivateKey
    dev_der: bytes          # self-signed signer for dev_key
    other_key: rsa.RSAPrivateKey

    def decrypt_cek(self, encrypted_key: bytes, scheme: str) -> bytes:
        return self.ra_key.decrypt(encrypted_key, rsa_padding(scheme))

    def request(self, message_type: MessageType = MessageType.PKCS_REQ, content: bytes | None = None, *,
                cipher: ContentCipher = ContentCipher.AES128_CBC, digest: Digest = Digest.SHA256,
                key_transport: str = "pkcs1v15", transaction_id: str = "TID-0001", sender_nonce: bytes | None = None,
                signer_der: bytes | None = None, signer_key: rsa.RSAPrivateKey | None = None,
                recipient_der: bytes | None = None) -> bytes:
        """A client request with deterministic inputs (apart from RSA padding)."""
        n = next(_counter)
        return client.build_request(
            message_type, content=content if content is not None else self.csr(),
            signer_cert_der=signer_der or self.dev_der, signer_key=signer_key or self.dev_key,
            recipient_cert_der=recipient_der or self.ra_der, transaction_id=transaction_id,
            sender_nonce=sender_nonce if sender_nonce is not None else n.to_bytes(16, "big"),
            cipher=cipher, digest=digest, cek=bytes(range(1, cipher.key_size + 1)), iv=bytes(cipher.block_size),
            key_transport=key_transport, signing_time=NOW)

    def csr(self, challenge: str | None = "secret") -> bytes:
        return client.make_csr(self.dev_key, "device-1", challenge=challenge, sans=["device-1.example"])

    def sign(self, data: bytes, digest: Digest) -> bytes:
        return client.rsa_signer(self.ra_key)(data, digest)


@pytest.fixture(scope="session")
def pki() -> PKI:
    dev_key = load_key(FIXTURES / "micromdm" / "client.key")
    return PKI(
        ca_key=load_key(FIXTURES / "ca.key"), ca_der=load_cert_der(FIXTURES / "ca.pem"),
        ra_key=load_key(FIXTURES / "ra.key"), ra_der=load_cert_der(FIXTURES / "ra.pem"),
        dev_key=dev_key, dev_der=client.make_self_signed_signer(dev_key),
        other_key=load_key(FIXTURES / "micromdm" / "client2.key"),
    )
