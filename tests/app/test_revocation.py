from datetime import timedelta

import pytest
import sqlalchemy as sa

from scep_server.ca import inventory
from scep_server.ca.authority import random_serial
from scep_server.ca.inventory import InventoryError, Reason
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from scep_server.ca.revocation import RevocationService, parse_reason
from scep_server.store.tables import events
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
    assert (await svc.release(serial, actor="admin")).status == "valid"
    async with engine.connect() as conn:
        assert await inventory.revoked_entries(conn, ca.name, now=NOW) == []
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
