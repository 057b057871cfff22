"""Pending enrolments nobody decides expire (profile setting ``pending_expiry_days``) on the server, on SQLite and
PostgreSQL: the device's CertPoll gets FAILURE with the reason, the API refuses the approval, the listings no
longer show it pending (a read: the command line lists on a database it cannot write), and sweeps run by several
processes on one database reject each enrolment once."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import sqlalchemy as sa
from cryptography import x509

from scep_server.enrolment import ScepService
from scep_server.profiles import ProfileSettings
from scep_server.scep import FailInfo, MessageType, PKIStatus, client
from scep_server.store.tables import events, scep_transactions
from tests.challenge.conftest import build, enrol, pki
from tests.factories import rsa_key

SECRET = "approval-secret"
DAY = timedelta(days=1)
EXPIRED = "the enrolment expired: no administrator approved it within 30 days"


async def poll(s, srv, key, cn: str):
    ca = next(iter(srv.runtime.cas.values()))
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    body = build(srv, key, challenge=None, message_type=MessageType.CERT_POLL,
                 transaction_id=client.transaction_id_for(key.public_key()),
                 content=client.issuer_and_subject(ca.cert.subject, subject))
    return await pki(s, srv, "manual", body, key)


async def expire_events(engine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.select(events.c.subject).where(
            events.c.kind == "scep.enrolment.expire").order_by(events.c.subject))).scalars())


async def test_an_expired_enrolment_is_failed_refused_and_listed_as_rejected(server, clock):
    rt = server.runtime
    await rt.profiles.create("manual", ca=next(iter(rt.cas)), challenge_kind="static", static_secret=SECRET,
                             now=rt.clock(), settings=ProfileSettings(require_approval=True))
    old, late = rsa_key(), rsa_key()
    async with aiohttp.ClientSession() as s:
        assert (await enrol(s, server, "manual", old, SECRET, cn="old-1")).status is PKIStatus.PENDING
        clock.advance(10 * DAY)
        assert (await enrol(s, server, "manual", late, SECRET, cn="late-1")).status is PKIStatus.PENDING
        clock.advance(21 * DAY)  # `old` waited 31 days, `late` 21
        _, token = await rt.tokens.create(scope="admin", name="t", now=rt.clock())
        admin = {"Authorization": f"Bearer {token}"}
        old_id, late_id = (client.transaction_id_for(k.public_key()) for k in (old, late))

        async def listed(state: str) -> dict[str, dict]:
            async with s.get(f"{server.url}/api/v1/enrolments?state={state}", headers=admin) as resp:
                assert resp.status == 200, await resp.text()
                return {r["transaction_id"]: r for r in (await resp.json())["enrolments"]}

        # listed as what it is, before anything rejected it in the database
        assert list(await listed("pending")) == [late_id]
        rejected = (await listed("rejected"))[old_id]
        assert rejected["state"] == "rejected" and EXPIRED in rejected["fail_text"]
        assert rejected["decided_by"] == "system:expiry"
        assert {k: r["state"] for k, r in (await listed("all")).items()} == {old_id: "rejected", late_id: "pending"}

        async with s.post(f"{server.url}/api/v1/enrolments/manual/approve", headers=admin,
                          json={"transaction_id": old_id}) as resp:
            assert resp.status == 422, await resp.text()
            assert EXPIRED in (await resp.json())["detail"]
        rep = await poll(s, server, old, "old-1")
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST and EXPIRED in rep.fail_text

        async with s.post(f"{server.url}/api/v1/enrolments/manual/approve", headers=admin,
                          json={"transaction_id": late_id}) as resp:
            assert resp.status == 200, await resp.text()
        assert (await poll(s, server, late, "late-1")).status is PKIStatus.SUCCESS
    assert await expire_events(rt.engine) == [old_id]
    async with rt.engine.connect() as conn:
        states = dict((await conn.execute(sa.select(scep_transactions.c.transaction_id,
                                                    scep_transactions.c.state))).all())
    assert states == {old_id: "rejected", late_id: "issued"}


async def test_sweeps_of_several_processes_reject_each_expired_enrolment_once(server, clock):
    rt = server.runtime
    await rt.profiles.create("manual", ca=next(iter(rt.cas)), challenge_kind="static", static_secret=SECRET,
                             now=rt.clock(), settings=ProfileSettings(require_approval=True, pending_expiry_days=1))
    keys = [rsa_key() for _ in range(4)]
    async with aiohttp.ClientSession() as s:
        for i, key in enumerate(keys):
            assert (await enrol(s, server, "manual", key, SECRET, cn=f"d-{i}")).status is PKIStatus.PENDING
    clock.advance(DAY)
    # another process on the same database: its own repository (connections), the same rows
    other = ScepService(engine=rt.engine, cas=dict(rt.cas), profiles=rt.profiles, clock=rt.clock)
    try:
        results = await asyncio.gather(rt.scep.expire_pending(), other.expire_pending(), rt.scep.expire_pending())
    finally:
        await other.close()
    assert sum(r.get("manual", 0) for r in results) == 4
    assert await expire_events(rt.engine) == sorted(client.transaction_id_for(k.public_key()) for k in keys)
    assert await rt.scep.expire_pending() == {}
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(sa.select(scep_transactions.c.state, scep_transactions.c.decided_by,
                                             scep_transactions.c.fail_text))).all()
    assert {(r.state, r.decided_by) for r in rows} == {("rejected", "system:expiry")}
    assert all("within 1 day;" in r.fail_text for r in rows)
