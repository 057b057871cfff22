"""Readiness of the publishers and the safety net for changes no process published (injected clock)."""
from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import aiohttp
import pytest

from crl.publish import PublishError
from crl.signing import CrlSigner
from scep_server.ca.inventory import Reason, serial_hex
from scep_server.ca.revocation import change_status
from scep_server.ca.status import CertStatus, EventKind
from trustkit.clock import SettableClock
from scep_server.store.events import record_event
from scep_server.store.tables import certificates
from trustkit.db import writer
from tests.server import start_app

from .conftest import (
    FAST_CRL,
    crl_serials,
    enrol_with_codec,
    publisher,
    service,
    wait_for,
)


@pytest.fixture
async def clocked(aiohttp_server, tmp_path, db_url):
    clock = SettableClock()
    # the clock jumps days ahead, past the OCSP signer's validity (its readiness: tests/ocsp/test_signer.py)
    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock, crl=FAST_CRL, ocsp={"enabled": False})
    await publisher(srv).wait_newer(None, timeout=10)
    return srv, clock


async def _readyz(srv) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{srv.url}/readyz") as resp:
            return resp.status, await resp.json()


async def test_readiness_reports_a_failing_then_stale_publisher(clocked):
    srv, clock = clocked
    pub = publisher(srv)
    good_signer = pub.signer
    serving = pub.current.number
    assert (await _readyz(srv))[0] == 200

    def broken(tbs: bytes) -> bytes:
        raise RuntimeError("the key store is unreachable")

    pub.signer = CrlSigner(good_signer.algorithm, broken)
    with pytest.raises(PublishError):
        await pub.publish_now()
    status, body = await _readyz(srv)
    assert status == 503
    # which check failed, never why: the signer's error text goes to the log only
    assert body["checks"]["crl"] == "failed" and "unreachable" not in json.dumps(body)
    detail = service(srv).readiness()
    assert detail.startswith("error: default: re-sign failing") and "key store is unreachable" in detail
    assert f"serving CRL #{serving}" in detail
    # the last good CRL is still served meanwhile
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{srv.url}/crl/default.crl") as resp:
            assert resp.status == 200 and await resp.read() == pub.current.der

    clock.advance(days=8)  # past nextUpdate with no successful re-sign
    status, body = await _readyz(srv)
    assert status == 503 and body["checks"]["crl"] == "failed"
    assert "stale" in service(srv).readiness() and "expired" in service(srv).readiness()

    pub.signer = good_signer
    await pub.publish_now()
    status, body = await _readyz(srv)
    assert status == 200 and body["checks"]["crl"] == "ok"


async def test_a_change_nobody_published_is_signed_after_the_grace_period(clocked):
    srv, clock = clocked
    svc = service(srv)
    pub = publisher(srv)
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, srv.url, srv.challenge(), "orphan-change")
    await asyncio.sleep(0.3)
    before = pub.current.number
    clock.advance(seconds=2)  # the change happens after the served CRL's thisUpdate
    serial = serial_hex(cert.serial_number)
    # what another process does before it dies without publishing: the change and its audit event, no CRL
    async with writer(srv.runtime.engine).begin() as conn:
        await change_status(conn, serial, CertStatus.REVOKED, at=clock(), actor="elsewhere",
                            reason=Reason.KEY_COMPROMISE)

    assert await svc.newest_status_change() == clock()
    assert await svc.check_marker() == []  # within the grace period the process that made it may still publish
    await asyncio.sleep(1.0)
    assert pub.current.number == before

    clock.advance(seconds=svc.grace().total_seconds() + 1)

    async def listed():
        cur = pub.current
        return cur if cur.number > before and cert.serial_number in crl_serials(cur.der) else None

    cur, _ = await wait_for(listed, timeout=10)
    # once a CRL newer than the change is served, the watcher leaves it alone
    assert await svc.check_marker() == []
    clock.advance(seconds=60)
    assert await svc.check_marker() == []
    assert cur.this_update >= clock() - timedelta(seconds=61)


@pytest.mark.parametrize("actor", ["elsewhere", "cli"])
async def test_a_change_committed_after_a_crl_began_is_still_signed(clocked, actor):
    """A revocation's time is taken before it commits. A re-sign that begins in between (a later thisUpdate) reads
    the entries without it (PostgreSQL does not make it wait). The process that revoked dies without publishing,
    or is the command line: the safety net still sees the change is not on the CRL, and has it signed."""
    srv, clock = clocked
    if srv.runtime.engine.dialect.name != "postgresql":
        pytest.skip("on SQLite the CRL's number allocation waits for the revocation's write lock")
    svc, pub = service(srv), publisher(srv)
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, srv.url, srv.challenge(), f"race-{actor}")
    await asyncio.sleep(0.3)
    clock.advance(seconds=2)
    async with writer(srv.runtime.engine).begin() as conn:
        await change_status(conn, serial_hex(cert.serial_number), CertStatus.REVOKED, at=clock(), actor=actor,
                            reason=Reason.KEY_COMPROMISE)
        clock.advance(seconds=2)
        during = await pub.publish_now()  # begun after the change's time, read before its commit
        assert cert.serial_number not in crl_serials(during.der)
    clock.advance(seconds=svc.grace().total_seconds() + 5)
    await svc.check_marker()

    async def listed():
        return cert.serial_number in crl_serials(pub.current.der)

    await wait_for(listed, timeout=10)


async def test_an_older_change_committed_late_is_signed_though_a_newer_one_is_on_the_crl(clocked):
    """Two revocations a second apart: the older one's transaction commits last, after a CRL that holds the newer
    one was begun. Its process dies without publishing: the safety net looks at every change of the minute before
    that CRL, not only the newest, and has it signed."""
    srv, clock = clocked
    if srv.runtime.engine.dialect.name != "postgresql":
        pytest.skip("on SQLite the CRL's number allocation waits for the revocation's write lock")
    svc, pub = service(srv), publisher(srv)
    async with aiohttp.ClientSession() as session:
        _, late = await enrol_with_codec(session, srv.url, srv.challenge(), "late")
        _, prompt = await enrol_with_codec(session, srv.url, srv.challenge(), "prompt")
    await asyncio.sleep(0.3)
    clock.advance(seconds=2)
    async with writer(srv.runtime.engine).begin() as slow:
        await change_status(slow, serial_hex(late.serial_number), CertStatus.REVOKED, at=clock(), actor="elsewhere",
                            reason=Reason.KEY_COMPROMISE)
        clock.advance(seconds=1)
        async with writer(srv.runtime.engine).begin() as conn:
            await change_status(conn, serial_hex(prompt.serial_number), CertStatus.REVOKED, at=clock(),
                                actor="elsewhere", reason=Reason.KEY_COMPROMISE)
        clock.advance(seconds=1)
        during = await pub.publish_now()  # holds the newer change, not the older one still uncommitted
        assert prompt.serial_number in crl_serials(during.der) and late.serial_number not in crl_serials(during.der)
    clock.advance(seconds=svc.grace().total_seconds() + 5)
    await svc.check_marker()

    async def listed():
        return late.serial_number in crl_serials(pub.current.der)

    await wait_for(listed, timeout=10)


async def test_a_revoked_certificate_past_its_expiry_does_not_have_the_crl_signed_again(clocked):
    """An expired certificate is left off the CRL: its revocation is no reason for the safety net to re-sign."""
    srv, clock = clocked
    svc, pub = service(srv), publisher(srv)
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, srv.url, srv.challenge(), "expired")
    await asyncio.sleep(0.3)
    async with writer(srv.runtime.engine).begin() as conn:
        await conn.execute(certificates.update().where(certificates.c.serial == serial_hex(cert.serial_number))
                           .values(not_after=clock() - timedelta(seconds=1)))
    clock.advance(seconds=2)
    async with writer(srv.runtime.engine).begin() as conn:
        await change_status(conn, serial_hex(cert.serial_number), CertStatus.REVOKED, at=clock(), actor="elsewhere",
                            reason=Reason.KEY_COMPROMISE)
    clock.advance(seconds=1)
    signed = await pub.publish_now()
    assert cert.serial_number not in crl_serials(signed.der)
    clock.advance(seconds=svc.grace().total_seconds() + 5)
    assert await svc.check_marker() == []
    assert pub.current.number == signed.number


async def test_the_safety_net_watches_every_status_change_kind_and_only_those(clocked):
    srv, clock = clocked
    svc = service(srv)
    for i, kind in enumerate(sorted(EventKind, key=lambda k: k.changes_status)):  # the others first
        at = clock() + timedelta(seconds=i + 1)
        before = await svc.newest_status_change()
        async with writer(srv.runtime.engine).begin() as conn:
            await record_event(conn, at=at, kind=kind, subject=f"s{i}", actor="elsewhere")
        assert await svc.newest_status_change() == (at if kind.changes_status else before), kind
