"""A second process publishing CRLs of the same CA on the same database (run by test_publish.py)."""
from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crl.build import Issuer, assemble
from crl.parse import parse_crl
from crl.publish import Publisher
from crl.signing import CrlSigner
from trustkit.db import create_engine


async def main(url: str, cert_path: str, key_path: str, count: int) -> None:
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)
    inner = CrlSigner.for_private_key(key)
    signed: list[int] = []

    def sign(tbs: bytes) -> bytes:
        signed.append(parse_crl(assemble(tbs, inner.algorithm, b"\x00")).crl_number)
        return inner.sign(tbs)

    async def source(now):
        return [(7, datetime(2026, 1, 1, tzinfo=timezone.utc), 1, None)]

    engine = create_engine(url)
    pub = Publisher("shared", issuer=Issuer.from_certificate(cert), signer=CrlSigner(inner.algorithm, sign),
                    source=source, engine=engine)
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(count):
        await pub.publish_now()
    await engine.dispose()
    print("signed: " + " ".join(map(str, signed)), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
