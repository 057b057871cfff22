import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from scep_server.ca import inventory
from scep_server.ca.authority import random_serial
from scep_server.ca.inventory import InventoryError, Reason
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from scep_server.ca.revocation import RevocationService, change_status, lock_status, parse_reason
from scep_server.ca.status import STATUS_CHANGE_KINDS, CertStatus, EventKind
from scep_server.store.tables import events
from trustkit.db import writer
from tests.factories import NOW, csr, make_ca, record_issued, register_ca, rsa_key


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def key():
    return rsa_key()


async def issue(engine, ca, key, issued_at=NOW):
    cert = ca.issue(csr(key), IssuancePolicy(CertificateTemplate()), serial=random_serial(), now=issued_at)
    return await record_issued(engine, ca, cert, issued_at=issued_at)


async def test_hold_release_revoke_and_final(engine, ca, key):
    await register_ca(engine, ca)
    changed = []
    svc = RevocationService(engine, clock=lambda: NOW, on_status_change=changed.append)
    serial = await issue(engine, ca, key)
    assert (await svc.hold(serial, actor="admin")).status == "hold"
    async with engine.connect() as conn:
        entries = await inventory.revoked_entries(conn, ca.name, now=NOW)
    assert entries == [(int(serial, 16), NOW, int(Reason.CERTIFICATE_HOLD), None)]
    async with engine.connect() as conn:  # the same row read by serial number (a partition's re-sign)
        assert await inventory.listed_entries(conn, ca.name, [int(serial, 16), 0x5EED], now=NOW) == entries
        assert await inventory.listed_entries(conn, "other", [int(serial, 16)], now=NOW) == []
        assert await inventory.listed_entries(conn, ca.name, [int(serial, 16)], now=NOW + timedelta(days=3650)) == []
    assert (await svc.release(serial, actor="admin")).status == "valid"
    async with engine.connect() as conn:
        assert await inventory.revoked_entries(conn, ca.name, now=NOW) == []
        assert await inventory.listed_entries(conn, ca.name, [int(serial, 16)], now=NOW) == []
    rec = await svc.revoke(serial, Reason.KEY_COMPROMISE, actor="admin", invalidity_date=NOW - timedelta(days=1))
    assert rec.status == "revoked" and rec.revocation_reason == Reason.KEY_COMPROMISE
    with pytest.raises(InventoryError, match="for good"):
        await svc.hold(serial, actor="admin")
    with pytest.raises(InventoryError):
        await svc.release(serial, actor="admin")
    with pytest.raises(InventoryError, match="no certificate"):
        await svc.revoke("abcdef", actor="admin")
    assert changed == [ca.name] * 3
    async with engine.connect() as conn:
        kinds = (await conn.execute(sa.select(events.c.kind).where(events.c.subject == serial)
                                    .order_by(events.c.id))).scalars().all()
    assert kinds == ["pki.cert.lifecycle.hold", "pki.cert.lifecycle.activate", "pki.cert.revoke"]


async def test_day_91_revokes_unused_exactly_once(engine, ca, key):
    await register_ca(engine, ca)
    clock = {"now": NOW}
    svc = RevocationService(engine, clock=lambda: clock["now"])
    old_unused = await issue(engine, ca, key, issued_at=NOW - timedelta(days=91))
    old_used = await issue(engine, ca, key, issued_at=NOW - timedelta(days=91))
    young = await issue(engine, ca, key, issued_at=NOW - timedelta(days=89))
    async with engine.begin() as conn:
        await inventory.mark_used(conn, old_used, NOW - timedelta(days=30))
    assert await svc.revoke_unused() == [old_unused]
    assert await svc.revoke_unused() == []  # exactly once
    clock["now"] = NOW + timedelta(days=2)  # the young one passes day 90 unused
    assert await svc.revoke_unused() == [young]
    async with engine.connect() as conn:
        rec = await inventory.get(conn, old_unused)
        assert rec.status == "revoked" and rec.revocation_reason == Reason.CESSATION_OF_OPERATION
        assert (await inventory.get(conn, old_used)).status == "valid"


def test_reason_names():
    assert parse_reason("key-compromise") is Reason.KEY_COMPROMISE
    assert parse_reason("superseded") is Reason.SUPERSEDED
    assert parse_reason("1") is Reason.KEY_COMPROMISE
    with pytest.raises(ValueError, match="unknown revocation reason"):
        parse_reason("certificate-hold")


async def _kinds(engine, serial):
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(events.c.kind).where(events.c.subject == serial)
                                   .order_by(events.c.id))).scalars().all()


def test_stored_values_are_unchanged():
    assert [s.value for s in CertStatus] == ["valid", "hold", "revoked"]
    assert {k.value for k in STATUS_CHANGE_KINDS} == {
        "pki.cert.revoke", "pki.cert.renew", "pki.cert.lifecycle.hold", "pki.cert.lifecycle.activate"}
    assert {k.value for k in EventKind if not k.changes_status} == {"pki.cert.issue", "pki.cert.bind",
                                                                    "pki.cert.unbind"}
    assert f"{CertStatus.HOLD}" == "hold" and CertStatus.REVOKED == "revoked"
    assert [s for s in CertStatus if s.listed] == [CertStatus.HOLD, CertStatus.REVOKED]


async def test_a_change_in_the_callers_transaction_commits_or_rolls_back_with_it(engine, ca, key):
    await register_ca(engine, ca)
    serial = await issue(engine, ca, key)
    with pytest.raises(RuntimeError):
        async with writer(engine).begin() as conn:
            change = await change_status(conn, serial, CertStatus.HOLD, at=NOW, actor="admin",
                                         data={"device": "d1"})
            assert (change.serial, change.ca, change.status) == (serial, ca.name, CertStatus.HOLD)
            assert change.to_json() == {"serial": serial, "ca": ca.name, "status": "hold"}
            raise RuntimeError("the caller's other write failed")
    async with engine.connect() as conn:
        assert (await inventory.get(conn, serial)).status == CertStatus.VALID
    assert await _kinds(engine, serial) == []

    async with writer(engine).begin() as conn:
        await change_status(conn, serial, CertStatus.HOLD, at=NOW, actor="admin", data={"device": "d1"})
    async with engine.connect() as conn:
        rec = await inventory.get(conn, serial)
        data = (await conn.execute(sa.select(events.c.data).where(events.c.subject == serial))).scalar()
    assert rec.status is CertStatus.HOLD and rec.revocation_reason == Reason.CERTIFICATE_HOLD
    assert json.loads(data) == {"reason": "CERTIFICATE_HOLD", "device": "d1"}
    assert await _kinds(engine, serial) == ["pki.cert.lifecycle.hold"]


async def test_a_conditional_change_writes_nothing_when_the_state_moved(engine, ca, key):
    await register_ca(engine, ca)
    serial = await issue(engine, ca, key)
    async with writer(engine).begin() as conn:
        await change_status(conn, serial, CertStatus.HOLD, at=NOW, actor="admin")
        # e.g. a renewal superseding its signer only while it is still valid
        assert await change_status(conn, serial, CertStatus.REVOKED, at=NOW, actor="scep:default",
                                   reason=Reason.SUPERSEDED, expect=CertStatus.VALID, record=False) is None
        assert await lock_status(conn, serial, expect=CertStatus.VALID, at=NOW) is False
        assert await lock_status(conn, serial, expect=CertStatus.HOLD, at=NOW) is True
        assert await lock_status(conn, "abcdef", expect=CertStatus.HOLD, at=NOW) is False
        assert await change_status(conn, "abcdef", CertStatus.HOLD, at=NOW, actor="admin",
                                   expect=CertStatus.VALID) is None
    async with engine.connect() as conn:
        assert (await inventory.get(conn, serial)).status == CertStatus.HOLD
    assert await _kinds(engine, serial) == ["pki.cert.lifecycle.hold"]

    async with writer(engine).begin() as conn:  # record=False: the caller's own event covers the change
        change = await change_status(conn, serial, CertStatus.REVOKED, at=NOW, actor="scep:default",
                                     reason=Reason.SUPERSEDED, expect={CertStatus.VALID, CertStatus.HOLD},
                                     record=False)
    assert change.status is CertStatus.REVOKED and change.record.revocation_reason == Reason.SUPERSEDED
    assert await _kinds(engine, serial) == ["pki.cert.lifecycle.hold"]
    async with writer(engine).begin() as conn:  # final: without a condition, a change is refused
        with pytest.raises(InventoryError, match="for good"):
            await change_status(conn, serial, CertStatus.VALID, at=NOW, actor="admin")
        assert await change_status(conn, serial, CertStatus.VALID, at=NOW, actor="admin",
                                   expect=CertStatus.HOLD) is None


async def test_the_writer_refuses_what_the_crl_or_its_safety_net_would_get_wrong(engine, ca, key):
    await register_ca(engine, ca)
    serial = await issue(engine, ca, key)
    async with writer(engine).begin() as conn:
        with pytest.raises(ValueError, match="not a status-change event"):
            await change_status(conn, serial, CertStatus.REVOKED, at=NOW, actor="a", kind=EventKind.BIND)
        with pytest.raises(ValueError, match="not revocation reasons"):
            await change_status(conn, serial, CertStatus.REVOKED, at=NOW, actor="a", reason=Reason.REMOVE_FROM_CRL)
        with pytest.raises(ValueError, match="no revocation reason"):
            await change_status(conn, serial, CertStatus.VALID, at=NOW, actor="a", reason=Reason.KEY_COMPROMISE)
        with pytest.raises(ValueError, match="never changes"):
            await change_status(conn, serial, CertStatus.VALID, at=NOW, actor="a", expect=CertStatus.REVOKED)
        with pytest.raises(ValueError):
            await change_status(conn, serial, "superseded", at=NOW, actor="a")
        # a renewal may name its own status-change kind
        await change_status(conn, serial, CertStatus.REVOKED, at=NOW, actor="a", reason=Reason.SUPERSEDED,
                            kind=EventKind.RENEW)
    assert await _kinds(engine, serial) == ["pki.cert.renew"]


async def test_never_used_is_rechecked_by_the_update(engine, ca, key):
    await register_ca(engine, ca)
    serial = await issue(engine, ca, key)
    async with writer(engine).begin() as conn:
        await inventory.mark_used(conn, serial, NOW)
        assert await change_status(conn, serial, CertStatus.REVOKED, at=NOW, actor="system:day-91",
                                   reason=Reason.CESSATION_OF_OPERATION, never_used=True) is None
    async with engine.connect() as conn:
        assert (await inventory.get(conn, serial)).status == CertStatus.VALID


async def test_notify_tells_each_changed_ca_once_after_the_commit(engine, ca, key):
    await register_ca(engine, ca)
    told = []
    svc = RevocationService(engine, clock=lambda: NOW, on_status_change=told.append)
    a, b = await issue(engine, ca, key), await issue(engine, ca, key)
    async with writer(engine).begin() as conn:
        changes = [await svc.change(conn, a, CertStatus.HOLD, actor="admin"),
                   await svc.change(conn, b, CertStatus.REVOKED, actor="admin", reason=Reason.KEY_COMPROMISE),
                   await svc.change(conn, b, CertStatus.HOLD, actor="admin", expect=CertStatus.VALID)]
        assert told == []
    assert changes[2] is None and changes[0].record.revoked_at == NOW
    svc.notify(changes)
    assert told == [ca.name]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_crl_rows_read_directly_on_sqlite_are_the_core_querys(engine, ca, key):
    """revoked_entries reads SQLite through the driver: the same rows as the SQLAlchemy statement, for the whole
    CA and for each partition (statuses, expiry, other CAs, partitions, invalidity dates, microseconds)."""
    import random

    from scep_server.store.tables import cas, certificates

    await register_ca(engine, ca)
    rnd = random.Random(7)
    rows = []
    for i in range(300):
        status = rnd.choice(["valid", "hold", "revoked", "revoked"])
        at = NOW - timedelta(days=rnd.randrange(1, 90), microseconds=rnd.randrange(1_000_000))
        rows.append(dict(
            serial=format(rnd.getrandbits(127) | 1, "x"), ca=ca.name if i % 7 else "other", subject="CN=x", sans="[]",
            not_before=at, not_after=NOW + timedelta(days=rnd.randrange(-30, 300)), status=status,
            revocation_reason=None if status == "valid" else rnd.choice([None, 1, 4, 6]),
            revoked_at=None if status == "valid" else at, invalidity_date=at - timedelta(hours=3) if i % 5 == 0 else None,
            fingerprint_sha256=f"{i:064x}", public_key_sha256="0" * 64, der=b"", issued_at=at, updated_at=at,
            crl_partition=i % 4 if i % 3 else None))
    async with writer(engine).begin() as conn:
        await conn.execute(cas.insert().values(name="other", kind="issuing", subject="CN=Other", cert_der=b"x",
                                               ski_hex="01", fingerprint_sha256="e" * 64, created_at=NOW))
        await conn.execute(certificates.insert(), rows)
    async with engine.connect() as conn:
        for partition in (None, 0, 1, 2, 3):
            fast = await inventory.revoked_entries(conn, ca.name, now=NOW, partition=partition)
            core = await inventory.revoked_entries_core(conn, ca.name, now=NOW, partition=partition)
            assert sorted(fast) == sorted(core), partition
            assert fast and all(e[1].tzinfo is not None for e in fast)
        assert await inventory.revoked_entries(conn, "nope", now=NOW) == []
