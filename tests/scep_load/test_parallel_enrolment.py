"""Many enrolments at once, and many copies of one retried transaction at once, through HTTP (RFC 8894 §3.3.1).

200 devices enrol in parallel: 200 SUCCESS CertReps, 200 distinct serial numbers, 200 inventory rows.
One transaction sent 20 times at once (same transactionID and CSR, fresh senderNonce each time, as a client
retrying does): one certificate in the inventory, and every answer carries it.
"""
from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.ca import inventory
from scep_server.scep import client
from scep_server.scep.types import MessageType, PKIStatus
from scep_server.store.tables import certificates, scep_transactions
from trustkit.paging import PageRequest
from tests.server import serve_processes, start_app

from .conftest import KEY_COUNT

SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pkcs_req(key, ra_der: bytes, challenge: str, cn: str, txid: str, signer_der: bytes | None = None,
              csr_der: bytes | None = None) -> bytes:
    return client.build_request(
        MessageType.PKCS_REQ, content=csr_der or client.make_csr(key, cn, challenge=challenge),
        signer_cert_der=signer_der or client.make_self_signed_signer(key, cn=cn), signer_key=key,
        recipient_cert_der=ra_der, transaction_id=txid, sender_nonce=secrets.token_bytes(16),
        cek=secrets.token_bytes(16), iv=secrets.token_bytes(16))


async def _post_all(url: str, bodies: list[bytes]) -> list[bytes]:
    """POST every body at the same time (one connection each) and return the replies, checking HTTP 200."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def post(body: bytes) -> bytes:
            async with session.post(f"{url}/scep/default?operation=PKIOperation", data=body,
                                    headers={"Content-Type": "application/x-pki-message"}) as resp:
                data = await resp.read()
                assert resp.status == 200, data[:300]
                assert resp.content_type == "application/x-pki-message"
                return data
        return list(await asyncio.wait_for(asyncio.gather(*(post(b) for b in bodies)), 120))


async def _ra_der(url: str) -> bytes:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/scep/default?operation=GetCACert") as resp:
            assert resp.status == 200
            return client.certs_in_order(await resp.read())[0]


async def _inventory(db_url_or_engine) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(serials in the inventory, (transaction_id, state, serial) of every SCEP transaction)."""
    from trustkit.db import create_engine

    engine = create_engine(db_url_or_engine) if isinstance(db_url_or_engine, str) else db_url_or_engine
    try:
        async with engine.connect() as conn:
            serials = list((await conn.execute(sa.select(certificates.c.serial))).scalars())
            txs = [tuple(r) for r in await conn.execute(sa.select(
                scep_transactions.c.transaction_id, scep_transactions.c.state, scep_transactions.c.serial))]
    finally:
        if isinstance(db_url_or_engine, str):
            await engine.dispose()
    return serials, txs


def _check_replies(replies: list[bytes], keys, ra_der: bytes, txids: list[str]) -> list[x509.Certificate]:
    certs = []
    for reply, key, txid in zip(replies, keys, txids):
        rep = client.parse_cert_rep(reply, key, ra_cert_der=ra_der)
        assert rep.status is PKIStatus.SUCCESS, (rep.fail_info, rep.fail_text)
        assert rep.transaction_id == txid
        cert = x509.load_der_x509_certificate(rep.certs[0])
        assert cert.public_key().public_bytes(*SPKI) == key.public_key().public_bytes(*SPKI)
        certs.append(cert)
    return certs


async def _enrol_in_parallel(url: str, challenge: str, keys, prefix: str):
    ra_der = await _ra_der(url)
    txids = [f"{prefix}-{i:03d}" for i in range(len(keys))]
    bodies = await asyncio.to_thread(lambda: [_pkcs_req(k, ra_der, challenge, f"{prefix}-{i:03d}", t)
                                              for i, (k, t) in enumerate(zip(keys, txids))])
    replies = await _post_all(url, bodies)
    certs = await asyncio.to_thread(_check_replies, replies, keys, ra_der, txids)
    return txids, certs


async def test_200_parallel_enrolments(aiohttp_server, tmp_path, db_url, client_keys):
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    txids, certs = await _enrol_in_parallel(srv.url, srv.challenge(), client_keys, "load")

    serials = [format(c.serial_number, "x") for c in certs]
    assert len(certs) == KEY_COUNT == 200
    assert len(set(serials)) == 200
    assert {c.subject.rfc4514_string() for c in certs} == {f"CN={t}" for t in txids}
    rows, txs = await _inventory(srv.runtime.engine)
    assert sorted(rows) == sorted(serials)
    assert sorted(txs) == sorted((t, "issued", s) for t, s in zip(txids, serials))
    # the rows read back through the inventory exactly as written (types, time encoding, ordering by time)
    async with srv.runtime.engine.connect() as conn:
        records = {r.serial: r for r in (await inventory.list_certs(
            conn, PageRequest(limit=1000, after=None), status="valid", profile="default")).items}
    assert len(records) == 200
    for cert in certs:
        record = records[format(cert.serial_number, "x")]
        assert record.der == cert.public_bytes(serialization.Encoding.DER)
        assert (record.not_before, record.not_after) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
        assert record.transaction_id == cert.subject.rfc4514_string()[3:]
        assert record.public_key_sha256 == inventory.public_key_sha256(cert.public_key())
        assert abs(record.issued_at - cert.not_valid_before_utc - timedelta(minutes=5)) < timedelta(minutes=1)
    async with srv.runtime.engine.connect() as conn:  # times are stored as the rest of the application binds them
        for cert in certs[:20]:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(certificates).where(
                certificates.c.not_before == cert.not_valid_before_utc,
                certificates.c.not_after == cert.not_valid_after_utc,
                certificates.c.serial == format(cert.serial_number, "x")))).scalar() == 1


async def test_parallel_retries_of_one_transaction_issue_one_certificate(aiohttp_server, tmp_path, db_url,
                                                                         client_keys):
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    ra_der = await _ra_der(srv.url)
    key = client_keys[0]
    csr = client.make_csr(key, "retrying-device", challenge=srv.challenge())
    signer = client.make_self_signed_signer(key, cn="retrying-device")
    bodies = [_pkcs_req(key, ra_der, "", "", "RETRY-1", signer_der=signer, csr_der=csr) for _ in range(20)]
    assert len(set(bodies)) == 20  # fresh senderNonce and envelope each time

    replies = await _post_all(srv.url, bodies)
    certs = await asyncio.to_thread(_check_replies, replies, [key] * 20, ra_der, ["RETRY-1"] * 20)

    assert {c.public_bytes(serialization.Encoding.DER) for c in certs} == {certs[0].public_bytes(serialization.Encoding.DER)}
    rows, txs = await _inventory(srv.runtime.engine)
    assert rows == [format(certs[0].serial_number, "x")]
    assert txs == [("RETRY-1", "issued", rows[0])]


async def test_parallel_enrolments_across_worker_processes(tmp_path, db_url, client_keys):
    """`serve --workers 2`: two processes writing to one database, no serial twice, every row there."""
    data_dir = tmp_path / "data"
    with serve_processes(data_dir, db_url, workers=2) as urls:
        challenge = (data_dir / "default-challenge.txt").read_text().strip()
        half = KEY_COUNT // 4
        results = await asyncio.gather(
            _enrol_in_parallel(urls[0], challenge, client_keys[:half], "proc-a"),
            _enrol_in_parallel(urls[0], challenge, client_keys[half:2 * half], "proc-b"))
    serials = [format(c.serial_number, "x") for _, certs in results for c in certs]
    assert len(serials) == 2 * half and len(set(serials)) == len(serials)
    rows, txs = await _inventory(db_url)
    assert sorted(rows) == sorted(serials)
    assert len(txs) == len(serials) and all(state == "issued" for _, state, _ in txs)
