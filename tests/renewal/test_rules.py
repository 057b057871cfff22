"""Renewal keeps what a certificate is: profile, subject, SANs, a valid and active signer, the window, and a hold
that arrives mid-flight; a renewed never-used certificate keeps its day-91 clock. SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.binding.tables import device_certs, devices
from scep_server.ca import inventory
from scep_server.ca.authority import random_serial
from scep_server.enrolment.checks import Renewal
from scep_server.scep import FailInfo, PKIStatus
from trustkit.clock import aware
from trustkit.db import writer
from scep_server.store.tables import certificates
from tests.factories import csr, rsa_key

from .conftest import (SECRET, cert_row, certs_of, change_settings, enrol, issue, renew, serial_of, static_profile,
                       transactions)
from .test_delegated_ack import delegated


async def test_renewal_only_at_the_issuing_profile_unless_it_names_the_target(server, clock):
    await static_profile(server, "short", template={"validity_days": 30})
    await static_profile(server, "long", template={"validity_days": 365})
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "short", key)
        clock.advance(days=21)  # inside the short certificate's renewal window
        rep = await renew(s, server, "long", der, key)
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "issued at profile 'short' is renewed only there" in rep.fail_text
        assert await certs_of(server, "long") == []
        assert (await cert_row(server, der))["status"] == "valid"

        # a planned migration: the issuing profile names the target
        await change_settings(server, "short", renewal_to=["long"])
        rep = await renew(s, server, "long", der, key)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        new = await cert_row(server, rep.certs[0])
        assert new["profile"] == "long" and new["renewal_of"] == serial_of(der)


async def test_renewal_cannot_widen_subject_or_sans(server, clock):
    await static_profile(server, "sensors", template={"validity_days": 30, "san_types": ["dns"]})
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "sensors", key, cn="sensor-1", sans=["sensor-1.example"])
        clock.advance(days=21)
        rep = await renew(s, server, "sensors", der, key, cn="sensor-1", sans=["sensor-1.example", "admin.example"])
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "subject alternative names the signing certificate does not have" in rep.fail_text
        rep = await renew(s, server, "sensors", der, key, cn="admin", sans=["sensor-1.example"])
        assert rep.status is PKIStatus.FAILURE and "subject differs" in rep.fail_text
        assert len(await certs_of(server, "sensors")) == 1

        await change_settings(server, "sensors", renewal_sans="equal")
        rep = await renew(s, server, "sensors", der, key, cn="sensor-1")
        assert rep.status is PKIStatus.FAILURE and "subject alternative names differ" in rep.fail_text
        await change_settings(server, "sensors", renewal_sans="subset")
        rep = await renew(s, server, "sensors", der, key, cn="sensor-1")  # dropping a SAN narrows
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        assert (await cert_row(server, rep.certs[0]))["sans"] == "[]"


async def test_default_window_is_the_last_third_of_the_signers_validity(server, clock):
    await static_profile(server, "short", template={"validity_days": 30})
    await static_profile(server, "wide", template={"validity_days": 30}, renewal_window_days=30)
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "short", key)
        rep = await renew(s, server, "short", der, key)
        assert rep.status is PKIStatus.FAILURE and "renewal is accepted only within 10 days of expiry" in rep.fail_text
        clock.advance(days=19)
        assert (await renew(s, server, "short", der, key)).status is PKIStatus.FAILURE
        wide_key = rsa_key()
        wide = await issue(s, server, "wide", wide_key)
        assert (await renew(s, server, "wide", wide, wide_key)).status is PKIStatus.SUCCESS  # set per profile
        clock.advance(days=1, minutes=10)
        rep = await renew(s, server, "short", der, key)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text


async def _bind(server, der: bytes, *, device_status: str, binding_state: str, device_id: str) -> None:
    now = server.runtime.clock()
    cert = x509.load_der_x509_certificate(der)
    async with writer(server.runtime.engine).begin() as conn:
        await conn.execute(devices.insert().values(id=device_id, name=device_id, status=device_status, created_at=now,
                                                   status_changed_at=now))
        await conn.execute(device_certs.insert().values(
            fingerprint_sha256=hashlib.sha256(der).hexdigest(), device_id=device_id, ca="default", external=False,
            serial=serial_of(der), not_after=cert.not_valid_after_utc, current=binding_state == "active",
            state=binding_state, bound_at=now))


async def test_refused_signers_fail_with_a_clear_text_and_change_nothing(server, clock):
    await static_profile(server, "short", template={"validity_days": 30}, supersede_on_renewal=False)
    rt = server.runtime
    async with aiohttp.ClientSession() as s:
        keys = {name: rsa_key() for name in ("expired", "held", "revoked", "renewed", "suspended", "retired",
                                              "bound", "named", "unknown")}
        ders = {name: await issue(s, server, "short", key, cn=name) for name, key in keys.items()
                if name != "unknown"}
        # a certificate of our CA that is not in the inventory
        ca = rt.cas["default"]
        unknown_cert = ca.issue(csr(keys["unknown"], "unknown"), (await rt.profiles.get("short")).policy,
                                serial=random_serial(), now=rt.clock())
        ders["unknown"] = unknown_cert.public_bytes(serialization.Encoding.DER)
        await rt.revocation.hold(serial_of(ders["held"]), actor="test")
        await rt.revocation.revoke(serial_of(ders["revoked"]), inventory.Reason.KEY_COMPROMISE, actor="test")
        await _bind(server, ders["suspended"], device_status="suspended", binding_state="active", device_id="dev-s")
        await _bind(server, ders["retired"], device_status="active", binding_state="retired", device_id="dev-r")
        await _bind(server, ders["bound"], device_status="active", binding_state="active", device_id="dev-a")
        # not bound yet, but enrolled for a device that has since been deactivated
        now = rt.clock()
        async with writer(rt.engine).begin() as conn:
            await conn.execute(devices.insert().values(id="dev-n", name="dev-n", status="deactivated", created_at=now,
                                                       status_changed_at=now))
            await conn.execute(certificates.update().where(certificates.c.serial == serial_of(ders["named"]))
                               .values(enrolled_device_id="dev-n"))
        clock.advance(days=21)

        first = await renew(s, server, "short", ders["renewed"], keys["renewed"], cn="renewed")
        assert first.status is PKIStatus.SUCCESS, first.fail_text
        assert (await cert_row(server, ders["renewed"]))["status"] == "valid"  # supersede_on_renewal off

        expected = {"held": "on hold", "revoked": "revoked", "renewed": "superseded",
                    "suspended": "bound to device dev-s, which is suspended",
                    "retired": "retired from its binding to device dev-r",
                    "named": "bound to device dev-n, which is deactivated",
                    "unknown": "not in this CA's inventory"}
        for name, text in expected.items():
            rep = await renew(s, server, "short", ders[name], keys[name], cn=name)
            assert rep.status is PKIStatus.FAILURE, name
            assert rep.fail_info is (FailInfo.BAD_CERT_ID if name == "unknown" else FailInfo.BAD_REQUEST), name
            assert text in rep.fail_text, (name, rep.fail_text)
        assert (await cert_row(server, ders["held"]))["status"] == "hold"
        assert len(await certs_of(server, "short")) == len(ders) - 1 + 1  # the issued ones and one renewal

        rep = await renew(s, server, "short", ders["bound"], keys["bound"], cn="bound")  # an active device renews
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text

        clock.advance(days=10)
        rep = await renew(s, server, "short", ders["expired"], keys["expired"], cn="expired")
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "expired" in rep.fail_text


async def test_a_hold_placed_while_a_renewal_is_in_flight_wins(server, clock, monkeypatch):
    await static_profile(server, "short", template={"validity_days": 30})
    rt = server.runtime
    checked = Renewal._signer_record

    async def checked_then_held(self, *args, **kwargs):
        record = await checked(self, *args, **kwargs)
        await rt.revocation.hold(record.serial, actor="admin")  # lands after the checks, before the record
        return record

    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "short", key)
        clock.advance(days=21)
        monkeypatch.setattr(Renewal, "_signer_record", checked_then_held)
        rep = await renew(s, server, "short", der, key)
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "on hold" in rep.fail_text
        row = await cert_row(server, der)
        assert row["status"] == "hold" and row["revocation_reason"] == int(inventory.Reason.CERTIFICATE_HOLD)
        assert [c["serial"] for c in await certs_of(server, "short")] == [serial_of(der)]


async def test_renewing_an_unused_certificate_keeps_its_day_91_clock(server, clock):
    await static_profile(server, "quarter", template={"validity_days": 90})
    rt = server.runtime
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "quarter", key, cn="idle")
        issued_at = (await cert_row(server, der))["issued_at"]
        clock.advance(days=70)
        rep = await renew(s, server, "quarter", der, key, cn="idle")
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        renewed = await cert_row(server, rep.certs[0])
        assert renewed["renewal_of"] == serial_of(der)
        assert aware(renewed["unused_since"]) == aware(issued_at)

        # a used certificate's renewal starts a clock of its own
        used_key = rsa_key()
        used = await issue(s, server, "quarter", used_key, cn="busy")
        async with writer(rt.engine).begin() as conn:
            await inventory.mark_used(conn, serial_of(used), rt.clock())
        clock.advance(days=61)
        rep2 = await renew(s, server, "quarter", used, used_key, cn="busy")
        assert rep2.status is PKIStatus.SUCCESS, rep2.fail_text
        fresh = await cert_row(server, rep2.certs[0])
        assert aware(fresh["unused_since"]) == rt.clock()

        clock.advance(days=21)  # day 91 after the idle certificate's first issue, day 21 of the busy renewal
        revoked = await rt.revocation.revoke_unused(unused_days=90)
        assert serial_of(rep.certs[0]) in revoked
        assert serial_of(rep2.certs[0]) not in revoked
        assert (await cert_row(server, rep.certs[0]))["status"] == "revoked"


async def test_a_pending_renewal_is_approved_as_a_renewal_and_a_hold_meanwhile_wins(server, clock):
    await static_profile(server, "manual", template={"validity_days": 30}, require_approval=True)
    rt = server.runtime
    async with aiohttp.ClientSession() as s:
        keys = [rsa_key(), rsa_key()]
        ders = []
        for i, key in enumerate(keys):  # enrolments wait for approval as well
            assert (await enrol_manual(s, server, key, f"dev-{i}")).status is PKIStatus.PENDING
            [tx] = [t for t in await transactions(server, "manual") if t["state"] == "pending"]
            ders.append(await cert_row(server, await rt.scep.decide("manual", tx["transaction_id"], approve=True,
                                                                     actor="admin")))
        ders = [row["der"] for row in ders]
        clock.advance(days=21)
        for i, (der, key) in enumerate(zip(ders, keys)):
            rep = await renew(s, server, "manual", der, key, cn=f"dev-{i}")
            assert rep.status is PKIStatus.PENDING, rep.fail_text
        pending = {t["renewal_of"]: t["transaction_id"] for t in await transactions(server, "manual")
                   if t["state"] == "pending"}
        assert set(pending) == {serial_of(d) for d in ders}

        serial = await rt.scep.decide("manual", pending[serial_of(ders[0])], approve=True, actor="admin")
        new = await cert_row(server, serial)
        assert new["renewal_of"] == serial_of(ders[0])
        assert aware(new["unused_since"]) == aware((await cert_row(server, ders[0]))["issued_at"])
        old = await cert_row(server, ders[0])
        assert old["status"] == "revoked" and old["revocation_reason"] == int(inventory.Reason.SUPERSEDED)

        await rt.revocation.hold(serial_of(ders[1]), actor="admin")
        try:
            await rt.scep.decide("manual", pending[serial_of(ders[1])], approve=True, actor="admin")
        except LookupError as exc:
            assert "on hold" in str(exc)
        else:
            raise AssertionError("a renewal of a held certificate was approved")
        assert (await cert_row(server, ders[1]))["status"] == "hold"
        assert len(await certs_of(server, "manual")) == 3


async def enrol_manual(session, srv, key, cn):
    return await enrol(session, srv, "manual", key, SECRET, cn=cn)


async def test_delegated_profiles_ask_the_mdm_about_renewals_unless_told_not_to(server, clock):
    verifier = await delegated(server, "mdm")
    await change_settings(server, "mdm", template=(await server.runtime.profiles.get("mdm")).settings.template
                          .model_copy(update={"validity_days": 30}))
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        rep = await enrol(s, server, "mdm", key, "c", cn="win-1")
        assert rep.status is PKIStatus.SUCCESS and verifier.calls == ["verify", "after_issue"]
        clock.advance(days=21)
        verifier.calls.clear()
        rep = await renew(s, server, "mdm", rep.certs[0], key, cn="win-1")
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        assert verifier.calls == ["verify", "after_issue"]

        await change_settings(server, "mdm", renewal_revalidate=False)
        verifier.calls.clear()
        second = rsa_key()
        rep2 = await enrol(s, server, "mdm", second, "c", cn="win-2")
        clock.advance(days=21)
        verifier.calls.clear()
        rep = await renew(s, server, "mdm", rep2.certs[0], second, cn="win-2")
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        assert verifier.calls == []


async def test_concurrent_renewals_of_one_kept_certificate_issue_one(server, clock):
    """With `supersede_on_renewal` off the signer stays valid: six RenewalReqs it signed, sent at once, are one
    renewal; the others are refused at the write (they wait for each other on the signer's row)."""
    import asyncio

    from .conftest import pki, renewal_body

    await static_profile(server, "keep", supersede_on_renewal=False)
    async with aiohttp.ClientSession() as session:
        key = rsa_key()
        old = await issue(session, server, "keep", key)
        clock.advance(days=300)  # within the last third of the default 365 days
        bodies = [renewal_body(server, old, key, rsa_key()) for _ in range(6)]
        reps = await asyncio.gather(*(pki(session, server, "keep", body, key) for body in bodies))
    assert [r.status for r in reps].count(PKIStatus.SUCCESS) == 1, [(r.status, r.fail_text) for r in reps]
    assert all("already renewed" in (r.fail_text or "") for r in reps if r.status is not PKIStatus.SUCCESS)
    renewals = [c for c in await certs_of(server, "keep") if c["renewal_of"] == serial_of(old)]
    assert len(renewals) == 1 and renewals[0]["status"] == "valid"
    assert (await cert_row(server, old))["status"] == "valid"


async def test_a_renewal_sent_twice_at_once_is_answered_its_certificate_both_times(server, clock, monkeypatch):
    """A client's retry of a RenewalReq (same transaction, a new senderNonce) reaches another process or instance
    while the first copy is issued: both copies passed the checks, the first records the renewal and supersedes
    the signer, and the retry gets the same certificate, not a FAILURE that leaves the device with its old
    certificate revoked."""
    import asyncio

    from scep_server.enrolment.service import ScepService

    from .conftest import pki, renewal_body

    await static_profile(server, "short", template={"validity_days": 30})
    issue_one = ScepService._issue
    checked: list[object] = []
    both = asyncio.Event()

    async def after_both_checked(self, e):
        checked.append(e)
        if len(checked) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 5)
        return await issue_one(self, e)

    async with aiohttp.ClientSession() as session:
        key = rsa_key()
        old = await issue(session, server, "short", key)
        clock.advance(days=21)
        new_key = rsa_key()
        copies = [renewal_body(server, old, key, new_key, transaction_id="RETRIED-1") for _ in range(2)]
        monkeypatch.setattr(ScepService, "_issue", after_both_checked)
        reps = await asyncio.gather(*(pki(session, server, "short", body, key) for body in copies))
    assert [r.status for r in reps] == [PKIStatus.SUCCESS] * 2, [r.fail_text for r in reps]
    assert reps[0].certs[0] == reps[1].certs[0]
    renewals = [c for c in await certs_of(server, "short") if c["renewal_of"] == serial_of(old)]
    assert [c["serial"] for c in renewals] == [serial_of(reps[0].certs[0])]
    assert (await cert_row(server, old))["status"] == "revoked"


async def test_a_renewal_kept_and_sent_again_later_is_refused_by_its_signing_time(server, clock):
    """A RenewalReq refused before the window (captured on the way) is not accepted when replayed inside it
    (remembered as refused, test_refused_replay.py); one never sent before but signed more than a day ago is
    refused by its signingTime. A renewal signed now, and a retry of a transaction already decided, are answered as
    before."""
    import os

    from scep_server.scep import MessageType, client

    from .conftest import pki

    await static_profile(server, "short", template={"validity_days": 30})
    ca = next(iter(server.runtime.cas.values()))

    def body(signer_der, signer_key, new_key):
        return client.build_request(
            MessageType.RENEWAL_REQ, content=client.make_csr(new_key, "device", None), signer_cert_der=signer_der,
            signer_key=signer_key, recipient_cert_der=ca.ra_cert_der,
            transaction_id=client.transaction_id_for(new_key.public_key()), sender_nonce=os.urandom(16),
            cek=os.urandom(16), iv=os.urandom(16), signing_time=clock())

    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "short", key)
        early = body(der, key, rsa_key())
        rep = await pki(s, server, "short", early, key)
        assert rep.status is PKIStatus.FAILURE and "renewal is accepted only within" in rep.fail_text
        clock.advance(days=21)  # inside the window
        rep = await pki(s, server, "short", early, key)
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST, rep.fail_text
        assert rep.fail_text == "this renewal request was refused before; sign a new one"
        kept = body(der, key, rsa_key())  # signed now, sent two days later
        clock.advance(days=2)
        rep = await pki(s, server, "short", kept, key)
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_TIME, rep.fail_text
        assert "sign it again" in rep.fail_text
        assert (await cert_row(server, der))["status"] == "valid" and len(await certs_of(server, "short")) == 1
        now = body(der, key, rsa_key())
        rep = await pki(s, server, "short", now, key)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        clock.advance(days=2)  # a retry of the decided transaction gets its certificate again
        again = await pki(s, server, "short", now, key)
        assert again.status is PKIStatus.SUCCESS and again.certs[0] == rep.certs[0]


async def test_a_certificate_with_its_address_only_in_the_subject_renews(server, clock, monkeypatch):
    """A certificate whose subject emailAddress has no e-mail SAN beside it (as certificates were issued before
    the SAN was added) renews: the renewal's certificate gets that SAN, which names nothing new."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from scep_server.ca import policy
    from scep_server.scep import client

    def make_csr(key, cn, challenge=None, sans=(), **_):  # Intune's "CN and e-mail" subject
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.com")]))
        if challenge is not None:
            builder = builder.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    monkeypatch.setattr(client, "make_csr", make_csr)
    await static_profile(server, "mail", template={"validity_days": 30, "subject_attributes": ["CN", "emailAddress"]})
    async with aiohttp.ClientSession() as s:
        keys = {"subset": rsa_key(), "equal": rsa_key()}
        with monkeypatch.context() as m:
            m.setattr(policy, "subject_mailboxes", lambda subject, sans: [])  # issued the way it was before
            old = {mode: await issue(s, server, "mail", key) for mode, key in keys.items()}
        for der in old.values():
            assert not [e for e in x509.load_der_x509_certificate(der).extensions
                        if isinstance(e.value, x509.SubjectAlternativeName)]
        clock.advance(days=21)
        for mode, key in keys.items():
            await change_settings(server, "mail", renewal_sans=mode)
            rep = await renew(s, server, "mail", old[mode], key)
            assert rep.status is PKIStatus.SUCCESS, (mode, rep.fail_text)
            new = x509.load_der_x509_certificate(rep.certs[0])
            assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
                x509.SubjectAlternativeName([x509.RFC822Name("ops@example.com")])
