"""A CertPoll is answered only to the requester, on the server with SQLite and PostgreSQL: the signer's key is
stored with the transaction (migration core_0014) and a CertPoll signed by another key gets the answer of an unknown
transactionID; a transaction stored before (no signer) is answered as it was."""
from __future__ import annotations

from datetime import datetime, timezone

import aiohttp
import sqlalchemy as sa
from cryptography import x509

from scep_server.ca.inventory import public_key_sha256
from scep_server.profiles import ProfileSettings
from scep_server.scep import FailInfo, MessageType, PKIStatus, client
from scep_server.store.tables import scep_transactions
from tests.challenge.conftest import build, enrol, pki
from tests.factories import rsa_key

SECRET = "approval-secret"


async def poll(s, srv, txid: str, signer_key):
    ca = next(iter(srv.runtime.cas.values()))
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "cam-1")])
    body = build(srv, signer_key, challenge=None, message_type=MessageType.CERT_POLL, transaction_id=txid,
                 content=client.issuer_and_subject(ca.cert.subject, subject))
    return await pki(s, srv, "manual", body, signer_key)


async def test_a_cert_poll_by_another_signer_is_answered_as_an_unknown_transaction(server):
    rt = server.runtime
    await rt.profiles.create("manual", ca=next(iter(rt.cas)), challenge_kind="static", static_secret=SECRET,
                             now=rt.clock(), settings=ProfileSettings(require_approval=True))
    device, other = rsa_key(), rsa_key()
    txid = client.transaction_id_for(device.public_key())
    async with aiohttp.ClientSession() as s:
        assert (await enrol(s, server, "manual", device, SECRET, cn="cam-1")).status is PKIStatus.PENDING
        async with rt.engine.connect() as conn:
            stored = (await conn.execute(sa.select(scep_transactions.c.signer_key_sha256))).scalar_one()
        assert stored == public_key_sha256(device.public_key())
        for asked in (txid, "never-used"):
            rep = await poll(s, server, asked, other)
            assert (rep.status, rep.fail_info, rep.fail_text) == (
                PKIStatus.FAILURE, FailInfo.BAD_CERT_ID, "no enrolment with this transactionID")
        assert (await poll(s, server, txid, device)).status is PKIStatus.PENDING
        await rt.scep.decide("manual", txid, approve=True, actor="admin")
        assert (await poll(s, server, txid, other)).fail_info is FailInfo.BAD_CERT_ID
        assert (await poll(s, server, txid, device)).status is PKIStatus.SUCCESS

        # a transaction stored before the signer was (migration core_0014): answered to any signer, as before
        async with rt.engine.begin() as conn:
            await conn.execute(scep_transactions.update().values(signer_key_sha256=None))
        assert (await poll(s, server, txid, other)).status is PKIStatus.SUCCESS


async def test_the_migration_leaves_the_transactions_before_it_without_a_signer(tmp_path):
    from scep_server.store.migrate import upgrade
    from trustkit.db import create_engine

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        await upgrade(engine, "core_0013")
        now = datetime(2026, 12, 1, tzinfo=timezone.utc)
        async with engine.begin() as conn:
            await conn.execute(sa.text(
                "INSERT INTO scep_transactions (profile, transaction_id, state, message_type, csr_der, "
                "public_key_sha256, created_at, updated_at) VALUES ('p', 't', 'pending', 19, x'00', :k, :at, :at)"),
                {"k": "0" * 64, "at": now})
        await upgrade(engine)
        async with engine.connect() as conn:
            row = (await conn.execute(sa.select(scep_transactions))).one()
    finally:
        await engine.dispose()
    assert row.transaction_id == "t" and row.signer_key_sha256 is None
