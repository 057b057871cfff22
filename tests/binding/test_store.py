"""Devices, lifecycle and binding on the store, on SQLite and PostgreSQL (no HTTP)."""
from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from sqlalchemy.exc import IntegrityError

from scep_server.binding.attestation import AttestationService, Verdict
from scep_server.binding.devices import DeviceStore
from scep_server.binding.errors import DeviceExists, DeviceNotFound, InvalidInput, InvalidTransition
from scep_server.binding.tables import device_certs
from scep_server.ca import inventory
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from trustkit.db import writer
from scep_server.store.tables import events
from tests.factories import NOW, csr, record_issued, register_ca, rsa_key

from trustkit.clock import SettableClock
from trustkit.paging import PageRequest

from .conftest import START, attesting_profile, sign


@pytest.fixture
async def env(engine, ca):
    await register_ca(engine, ca)
    await attesting_profile(engine, ca.name)
    clock = SettableClock(START)
    notified: list[str] = []
    store = DeviceStore(engine, clock=clock, notify_changed=notified.append)
    att = AttestationService(engine, cas={ca.name: ca}, external=None, clock=clock,
                             notify_changed=notified.append)
    return store, att, clock, notified


_serial = iter(range(0x1000, 0x100000))


async def issue(engine, ca):
    key = rsa_key()
    cert = ca.issue(csr(key, "device"), IssuancePolicy(CertificateTemplate()), serial=next(_serial), now=NOW)
    serial = await record_issued(engine, ca, cert)
    return key, cert.public_bytes(serialization.Encoding.DER), serial


async def attest(att, device_id, key, der, **kw):
    ch = await att.challenge(device_id)
    sig = base64.b64decode(sign(key, ch["nonce"], device_id))
    return await att.verify(device_id=device_id, nonce=ch["nonce"], certificate=der, signature=sig, **kw)


async def test_lifecycle_transitions_are_checked_and_recorded(engine, env):
    store, _, _, _ = env
    await store.create("d1", name="laptop", actor="alice")
    with pytest.raises(DeviceExists):
        await store.create("d1", actor="alice")
    with pytest.raises(InvalidInput):
        await store.create("bad id!", actor="alice")
    with pytest.raises(InvalidTransition):
        await store.transition("d1", "unsuspend", actor="alice")
    with pytest.raises(InvalidTransition):
        await store.transition("d1", "reactivate", actor="alice")
    with pytest.raises(DeviceNotFound):
        await store.transition("nope", "suspend", actor="alice")
    path = [("suspend", "suspended"), ("unsuspend", "active"), ("deactivate", "deactivated"),
            ("reactivate", "active"), ("suspend", "suspended"), ("deactivate", "deactivated"), ("delete", "deleted")]
    for action, status in path:
        device, _ = await store.transition("d1", action, actor="bob", reason=f"why {action}")
        assert device.status.value == status
        assert (await store.get("d1")).status.value == status
    for action in ("suspend", "unsuspend", "deactivate", "reactivate", "delete"):
        with pytest.raises(InvalidTransition):
            await store.transition("d1", action, actor="bob")
    history = await store.history("d1")
    assert [h["kind"] for h in history] == ["device.create"] + [f"device.{a}" for a, _ in path]
    assert history[1]["actor"] == "bob" and history[1]["data"] == {"from": "active", "to": "suspended",
                                                                    "reason": "why suspend"}
    deleted = await store.page(PageRequest(limit=10, after=None), status="deleted")
    assert [d.id for d in deleted.items] == ["d1"] and deleted.next_cursor is None
    assert (await store.page(PageRequest(limit=10, after=None), status="active")).items == []


async def test_lifecycle_drives_our_certificate(engine, env, ca):
    store, att, _, notified = env
    key, der, serial = await issue(engine, ca)
    await store.create("d1", actor="t")
    assert (await attest(att, "d1", key, der)).reason is Verdict.MANAGED
    expected = [("suspend", "valid"), ("unsuspend", "valid"), ("deactivate", "hold"), ("reactivate", "valid"),
                ("deactivate", "hold"), ("delete", "revoked")]
    for action, status in expected:
        before = len(notified)
        _, changes = await store.transition("d1", action, actor="t")
        async with engine.connect() as conn:
            assert (await inventory.get(conn, serial)).status == status, action
        assert len(notified) - before == (0 if action in ("suspend", "unsuspend") else 1)
        assert [c.status for c in changes] == ([] if action in ("suspend", "unsuspend") else [status])
    async with engine.connect() as conn:
        rec = await inventory.get(conn, serial)
        row = (await conn.execute(sa.select(device_certs))).one()
    assert rec.revocation_reason == 5 and rec.first_used_at is not None
    assert (row.state, row.retired_reason, row.current) == ("retired", "device_deleted", False)


async def test_constraints_one_device_per_certificate_one_current_per_device(engine, env, ca):
    store, _, clock, _ = env
    await store.create("d1", actor="t")
    await store.create("d2", actor="t")
    row = dict(device_id="d1", ca="default", external=False, not_after=NOW, state="active", bound_at=NOW)
    async with writer(engine).begin() as conn:
        await conn.execute(device_certs.insert().values(fingerprint_sha256="a" * 64, serial="1", current=True, **row))
    with pytest.raises(IntegrityError):  # the same certificate for another device
        async with writer(engine).begin() as conn:
            await conn.execute(device_certs.insert().values(
                fingerprint_sha256="a" * 64, serial="2", current=False, **{**row, "device_id": "d2"}))
    with pytest.raises(IntegrityError):  # a second current certificate
        async with writer(engine).begin() as conn:
            await conn.execute(device_certs.insert().values(fingerprint_sha256="b" * 64, serial="3", current=True,
                                                            **row))
    async with writer(engine).begin() as conn:  # a non-current one is fine
        await conn.execute(device_certs.insert().values(fingerprint_sha256="c" * 64, serial="4", current=False, **row))


async def test_concurrent_binds_of_one_certificate_have_one_winner(engine, env, ca):
    store, att, _, _ = env
    key, der, _ = await issue(engine, ca)
    ids = [f"d{i}" for i in range(12)]
    for d in ids:
        await store.create(d, actor="t")
    results = await asyncio.gather(*(attest(att, d, key, der) for d in ids))
    reasons = sorted(r.reason.value for r in results)
    assert reasons.count("managed") == 1
    assert reasons.count("bound_to_other_device") == len(ids) - 1
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(device_certs))).scalar() == 1
        n = (await conn.execute(sa.select(sa.func.count()).select_from(events).where(
            events.c.kind == "security.cert.second_device"))).scalar()
    assert n == len(ids) - 1


@pytest.mark.parametrize("action", ["delete", "deactivate"])
async def test_a_first_bind_racing_a_device_change_leaves_no_valid_certificate_behind(engine, env, ca, monkeypatch,
                                                                                      action):
    """The device is deleted (deactivated) while its first attestation is being judged: either the attestation
    sees the change (not managed, nothing bound), or the change sees the binding and revokes (holds) the
    certificate; never a valid certificate bound to a device taken down."""
    store, att, _, _ = env
    key, der, serial = await issue(engine, ca)
    await store.create("d1", actor="t")
    judge = AttestationService._judge
    judging, go = asyncio.Event(), asyncio.Event()

    async def paused(self, *args, **kwargs):
        if not judging.is_set():
            judging.set()
            await go.wait()
        return await judge(self, *args, **kwargs)

    monkeypatch.setattr(AttestationService, "_judge", paused)
    attesting = asyncio.create_task(attest(att, "d1", key, der))
    await judging.wait()
    changing = asyncio.create_task(store.transition("d1", action, actor="t"))
    await asyncio.wait({changing}, timeout=0.5)  # PostgreSQL: done meanwhile; SQLite: waits for the writer
    go.set()
    result, _ = await asyncio.gather(attesting, changing)
    async with engine.connect() as conn:
        status = (await inventory.get(conn, serial)).status
        bound = (await conn.execute(sa.select(device_certs.c.state))).scalars().all()
    taken_down = "revoked" if action == "delete" else "hold"
    if result.managed:  # judged before the change: the change found the binding
        assert status == taken_down and bound == (["retired"] if action == "delete" else ["active"])
    else:
        assert result.reason is (Verdict.DEVICE_DELETED if action == "delete" else Verdict.DEVICE_DEACTIVATED)
        assert bound == [] and status == "valid"


async def test_second_device_optionally_revokes_key_compromise(engine, env, ca):
    store, att, clock, notified = env
    att.revoke_on_second_device = True
    key, der, serial = await issue(engine, ca)
    await store.create("owner", actor="t")
    await store.create("clone", actor="t")
    assert (await attest(att, "owner", key, der)).managed
    first_sighting = clock.now
    assert (await attest(att, "clone", key, der)).reason is Verdict.BOUND_TO_OTHER_DEVICE
    async with engine.connect() as conn:
        rec = await inventory.get(conn, serial)
    assert (rec.status, rec.revocation_reason, rec.invalidity_date) == ("revoked", 1, first_sighting)
    assert notified == ["default"]
    assert (await attest(att, "owner", key, der)).reason is Verdict.CERTIFICATE_REVOKED
    assert (await attest(att, "clone", key, der)).reason is Verdict.CERTIFICATE_REVOKED


async def test_nonce_single_use_under_concurrency_and_purge(engine, env, ca):
    store, att, clock, _ = env
    key, der, _ = await issue(engine, ca)
    await store.create("d1", actor="t")
    ch = await att.challenge("d1")
    sig = base64.b64decode(sign(key, ch["nonce"], "d1"))
    results = await asyncio.gather(*(att.verify(device_id="d1", nonce=ch["nonce"], certificate=der, signature=sig)
                                     for _ in range(10)))
    assert sorted(r.reason.value for r in results) == ["managed"] + ["nonce_reused"] * 9
    clock.now += timedelta(hours=1)
    assert await att.purge_nonces() == 1


async def test_upgrade_turns_device_trust_off_for_the_default_static_profile(engine, ca):
    """binding_0002 on a database created before `device_trust`: the `default` static profile's certificates
    stop attesting; other profiles, and a `default` profile that says so explicitly, keep their setting."""
    import json as _json

    from alembic import command

    from scep_server.profiles import ProfileStore
    from scep_server.store.migrate import alembic_config, upgrade
    from scep_server.store.tables import profiles

    await register_ca(engine, ca)
    async with writer(engine).begin() as conn:
        for name, settings in (("default", {"allow_renewal": True}), ("jamf", {})):
            await conn.execute(profiles.insert().values(name=name, ca="default", challenge_kind="static",
                                                        static_secret_sha256="0" * 64, settings=_json.dumps(settings),
                                                        created_at=NOW, updated_at=NOW))
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))

    def down(connection):
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "binding_0001")

    async with engine.begin() as conn:
        await conn.run_sync(down)
    await upgrade(engine)
    store = ProfileStore(engine, cache_seconds=0)
    assert (await store.get("default")).settings.device_trust is False
    assert (await store.get("default")).settings.allow_renewal is True
    assert (await store.get("jamf")).settings.device_trust is True
    # explicit settings are left alone by a second pass
    await store.update("default", now=NOW, settings=(await store.get("default")).settings.model_copy(
        update={"device_trust": True}))
    async with engine.begin() as conn:
        await conn.run_sync(down)
    await upgrade(engine)
    assert (await store.get("default")).settings.device_trust is True


async def test_a_device_id_never_stands_as_the_actor_of_an_event(engine, env, ca):
    """Device ids come from requests (a CSR's CN) and may read like a principal: the security event of a
    certificate presented by a second device names the attestation as its actor, the device in its data."""
    import sqlalchemy as sa

    from scep_server.store.tables import events

    store, att, _, _ = env
    key, der, _ = await issue(engine, ca)
    await store.create("laptop-1", actor="t")
    assert await store.ensure("cli:root", actor="scep:default") == "active"
    assert (await attest(att, "laptop-1", key, der)).reason.value == "managed"
    await attest(att, "cli:root", key, der)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.actor, events.c.data).where(
            events.c.kind == "security.cert.second_device"))).all()
    assert [r.actor for r in rows] == ["attestation"]
    assert '"presented_by": "cli:root"' in rows[0].data


async def test_a_device_or_an_enrolment_registered_meanwhile_is_a_conflict(engine, env):
    """Another request's row, written after this one looked and committed while it waits on the row: a
    DeviceExists (409), never a database error (500). On PostgreSQL both transactions see no row at first; on
    SQLite the second waits for the first's write lock and then sees it."""
    from scep_server.binding.tables import device_enrolments, devices

    store, _att, clock, _ = env
    await store.create("d0", actor="t")
    for table, values, call in (
            (devices, dict(id="d1", name="", status="active", created_at=NOW, status_changed_at=NOW),
             lambda: store.create("d1", actor="t")),
            (device_enrolments, dict(profile="p", transaction_id="tx", device_id="d0", created_at=NOW),
             lambda: store.preregister("d0", profile="p", transaction_id="tx", actor="t"))):
        async with writer(engine).connect() as other:
            await other.begin()
            await other.execute(table.insert().values(**values))
            attempt = asyncio.create_task(call())
            await asyncio.sleep(0.3)  # it has looked (PostgreSQL) or waits for the write lock (SQLite)
            assert not attempt.done()
            await other.commit()
        with pytest.raises(DeviceExists):
            await asyncio.wait_for(attempt, 10)


async def test_an_external_ca_registered_meanwhile_is_refused_not_an_error(engine):
    from crl.check import CrlChecker
    from crl.config import CheckerSettings, Policy
    from scep_server.binding.errors import ExternalCaError
    from scep_server.binding.external import ExternalCas
    from scep_server.binding.tables import external_cas
    from tests.crl.pki import make_ca

    ca = make_ca("Meanwhile Customer CA", kind="ec", slot=7, cdp="http://127.0.0.1:9/crl/meanwhile.crl")
    ext = ExternalCas(engine, CrlChecker(settings=CheckerSettings(), clock=SettableClock(NOW)))
    async with writer(engine).connect() as other:
        await other.begin()
        await other.execute(external_cas.insert().values(name="cust", cert_der=b"x", fingerprint_sha256="0" * 64,
                                                         policy="fail-closed", created_at=NOW))
        attempt = asyncio.create_task(ext.add("cust", ca.cert, policy=Policy.FAIL_CLOSED, actor="t", now=NOW))
        await asyncio.sleep(0.3)
        assert not attempt.done()
        await other.commit()
    with pytest.raises(ExternalCaError):
        await asyncio.wait_for(attempt, 10)


async def test_a_device_shows_its_newest_events_only(engine, env):
    """Every refused attestation naming a device adds to its history: what a device shows with it is bounded
    (the newest, oldest first), as a certificate's events are."""
    from scep_server.store.events import record_event

    store, _att, clock, _ = env
    await store.create("busy", actor="t")
    async with writer(engine).begin() as conn:
        for i in range(12):
            await record_event(conn, at=NOW, kind="security.binding.refused", subject="busy", actor="attestation",
                               data={"n": i})
    shown = await store.history("busy", limit=5)
    assert [h["data"].get("n") for h in shown] == [7, 8, 9, 10, 11]
    everything = await store.history("busy", limit=100)
    assert [h["kind"] for h in everything][0] == "device.create" and len(everything) == 13
