"""Delegated issuance is acknowledged before it is delivered: awaiting_ack answers PENDING, a refused
acknowledgement revokes, leftovers are reconciled. Plus the order of checks: local ones first. SQLite and
PostgreSQL, with an in-process delegated verifier standing in for Intune or a webhook."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import sqlalchemy as sa
from cryptography import x509

from scep_server.ca import inventory
from scep_server.enrolment import ChallengeRejected, EnrollmentRequest
from scep_server.scep import FailInfo, PKIStatus, client
from scep_server.store.tables import events
from tests.challenge.conftest import add_profile, build, dynamic, enrol, pki
from tests.factories import rsa_key

from .conftest import cert_row, certs_of, eventually, transactions


class GatedVerifier:
    """A delegated validator whose success notification waits for the test and then succeeds or fails."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: BaseException | None = None
        self.calls: list[str] = []

    async def verify(self, req: EnrollmentRequest) -> None:
        self.calls.append("verify")

    async def after_issue(self, req: EnrollmentRequest, cert: x509.Certificate) -> None:
        self.calls.append("after_issue")
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail

    async def after_failure(self, req: EnrollmentRequest, text: str) -> None:
        self.calls.append("after_failure")


async def delegated(server, name: str = "mdm") -> GatedVerifier:
    verifier = GatedVerifier()
    server.runtime.scep.verifiers["delegated"] = verifier
    await add_profile(server, name, "delegated", {})
    return verifier


async def _events(server, kind: str) -> list[dict]:
    async with server.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(events).where(events.c.kind == kind))).all()
    return [dict(r._mapping) for r in rows]


async def test_a_retry_before_the_acknowledgement_is_pending_and_gets_the_certificate_after(server):
    verifier = await delegated(server)
    verifier.gate.clear()
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        body = build(server, key, challenge="c", cn="laptop")
        first = asyncio.create_task(pki(s, server, "mdm", body, key))
        await eventually(lambda: "after_issue" in verifier.calls)
        # a client's retry is a new message (new senderNonce, new envelope) of the same transaction; identical
        # bytes in flight would share the first request's answer
        retry = await pki(s, server, "mdm", build(server, key, challenge="c", cn="laptop"), key)
        assert retry.status is PKIStatus.PENDING and retry.certs == []
        assert [t["state"] for t in await transactions(server, "mdm")] == ["awaiting_ack"]
        verifier.gate.set()
        rep = await first
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        assert [t["state"] for t in await transactions(server, "mdm")] == ["issued"]
        again = await pki(s, server, "mdm", body, key)
        assert again.status is PKIStatus.SUCCESS and again.certs[0] == rep.certs[0]


async def test_a_refused_acknowledgement_revokes_and_never_delivers(server):
    verifier = await delegated(server)
    verifier.fail = ChallengeRejected("Intune did not accept the success notification: InternalError")
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        body = build(server, key, challenge="c", cn="laptop")
        rep = await pki(s, server, "mdm", body, key)
        assert rep.status is PKIStatus.FAILURE and rep.certs == [] and "success notification" in rep.fail_text
        [row] = await certs_of(server, "mdm")
        assert row["status"] == "revoked"
        assert row["revocation_reason"] == int(inventory.Reason.CESSATION_OF_OPERATION)
        verifier.fail = None
        rep = await pki(s, server, "mdm", body, key)
        assert rep.status is PKIStatus.FAILURE and rep.certs == []


async def test_leftovers_are_reconciled_delivered_or_revoked_and_recorded(server, clock):
    verifier = await delegated(server)
    scep = server.runtime.scep
    async with aiohttp.ClientSession() as s:
        # the notification breaks down (connection lost, process stopping): the device is told to wait
        keys = [rsa_key(), rsa_key(), rsa_key()]
        bodies = [build(server, k, challenge="c", cn=f"laptop-{i}") for i, k in enumerate(keys)]
        verifier.fail = RuntimeError("connection reset")
        reps = [await pki(s, server, "mdm", b, k) for b, k in zip(bodies[:2], keys[:2])]
        assert [r.status for r in reps] == [PKIStatus.PENDING, PKIStatus.PENDING]
        assert {t["state"] for t in await transactions(server, "mdm")} == {"awaiting_ack"}
        serials = {t["transaction_id"]: t["serial"] for t in await transactions(server, "mdm")}

        clock.advance(minutes=16)
        reps.append(await pki(s, server, "mdm", bodies[2], keys[2]))  # fresh: another instance may be at it
        assert reps[2].status is PKIStatus.PENDING

        # the first is acknowledged on the retry; the second's MDM refuses it
        calls = iter([None, ChallengeRejected("the success notification failed: HTTP 500")])

        async def after_issue(req, cert):
            verifier.calls.append("after_issue")
            failure = next(calls)
            if failure is not None:
                raise failure
        verifier.after_issue = after_issue
        done = await scep.reconcile_unacknowledged()
        assert len(done) == 2 and sorted(done.values()) == ["delivered", "revoked"]
        states = {t["serial"]: t["state"] for t in await transactions(server, "mdm")}
        delivered = next(serial for serial, outcome in done.items() if outcome == "delivered")
        withdrawn = next(serial for serial, outcome in done.items() if outcome == "revoked")
        assert states[delivered] == "issued" and states[withdrawn] == "rejected"
        assert list(states.values()).count("awaiting_ack") == 1  # the fresh one is left alone
        assert (await cert_row(server, withdrawn))["revocation_reason"] == int(
            inventory.Reason.CESSATION_OF_OPERATION)
        assert (await cert_row(server, delivered))["status"] == "valid"
        recorded = {e["subject"]: e for e in await _events(server, "scep.enrolment.reconcile")}
        assert set(recorded) == {delivered, withdrawn}

        txids = [client.transaction_id_for(k.public_key()) for k in keys]
        by_serial = {serials[txid]: i for i, txid in enumerate(txids) if txid in serials}
        i = by_serial[delivered]
        rep = await pki(s, server, "mdm", bodies[i], keys[i])
        assert rep.status is PKIStatus.SUCCESS
        assert inventory.serial_hex(x509.load_der_x509_certificate(rep.certs[0]).serial_number) == delivered
        j = by_serial[withdrawn]
        rep = await pki(s, server, "mdm", bodies[j], keys[j])
        assert rep.status is PKIStatus.FAILURE and rep.certs == []


async def test_local_checks_run_before_a_challenge_is_spent_or_an_mdm_is_asked(server):
    verifier = await delegated(server)
    await add_profile(server, "dyn", "dynamic", dynamic(), template={"san_types": ["dns"]})
    issued = await server.runtime.challenges.new_challenge("dyn", source="cli")
    async with aiohttp.ClientSession() as s:
        bad_san = [x509.RFC822Name("user@example.com")]
        rep = await enrol(s, server, "dyn", rsa_key(), issued.challenge, sans=bad_san)
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST and "not allowed" in rep.fail_text
        rep = await enrol(s, server, "dyn", rsa_key(1024), issued.challenge)  # below the RSA minimum
        assert rep.status is PKIStatus.FAILURE and "below the minimum" in rep.fail_text
        rep = await enrol(s, server, "dyn", rsa_key(), issued.challenge)  # the challenge is still unused
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text

        rep = await enrol(s, server, "mdm", rsa_key(1024), "c")
        assert rep.status is PKIStatus.FAILURE and verifier.calls == []


async def test_invalid_transaction_ids_fail_without_spending_a_one_time_challenge(server):
    await add_profile(server, "dyn", "dynamic", dynamic())
    issued = await server.runtime.challenges.new_challenge("dyn", source="cli")
    async with aiohttp.ClientSession() as s:
        for txid in ("\x00" + "0" * 20, "A" * 300, "abc\x00"):
            key = rsa_key()
            rep = await enrol(s, server, "dyn", key, issued.challenge, transaction_id=txid)
            assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST, txid
            assert "invalid transactionID" in rep.fail_text and len(rep.fail_text) < 200
        rep = await enrol(s, server, "dyn", rsa_key(), issued.challenge)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert await transactions(server, "dyn") and all("\x00" not in t["transaction_id"]
                                                     for t in await transactions(server, "dyn"))


async def test_the_reconciler_leaves_recent_rows_alone(server):
    verifier = await delegated(server)
    verifier.fail = RuntimeError("stopped")
    async with aiohttp.ClientSession() as s:
        rep = await enrol(s, server, "mdm", rsa_key(), "c")
        assert rep.status is PKIStatus.PENDING
    assert await server.runtime.scep.reconcile_unacknowledged() == {}
    assert await server.runtime.scep.reconcile_unacknowledged(older_than=timedelta(0)) != {}
