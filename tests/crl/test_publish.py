"""The publisher on SQLite and PostgreSQL: numbering, self-checks, failures, schedule, several processes."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crl.build import assemble
from crl.config import CrlSettings
from crl.parse import parse_crl
from crl.publish import PublishError, Publisher
from crl.selfcheck import SelfCheckError
from crl.signing import CrlSigner
from crl.store import CrlStateStore
from crl.tables import crl_state
from trustkit.db import create_engine

UTC = timezone.utc
REPO = Path(__file__).resolve().parents[2]


def make_publisher(engine, issuer, signer, source, **kw) -> Publisher:
    kw.setdefault("settings", CrlSettings())
    return Publisher("default", issuer=issuer, signer=signer, source=source, engine=engine, **kw)


def numbers_signed(signer: CrlSigner, sink: list[int]) -> CrlSigner:
    """A signer that notes the CRL Number of every TBSCertList it signs."""
    def sign(tbs: bytes) -> bytes:
        sink.append(parse_crl(assemble(tbs, signer.algorithm, b"\x00")).crl_number)
        return signer.sign(tbs)

    return CrlSigner(signer.algorithm, sign)


async def test_publish_builds_a_verified_crl_from_the_source(engine, issuer, signer, source, clock, rsa_ca):
    source.revoke(0x10, clock.now - timedelta(days=2), 1, clock.now - timedelta(days=3))
    source.revoke(0x11, clock.now - timedelta(days=1), 6)
    source.revoke(0x12, clock.now - timedelta(hours=1), None)
    pub = make_publisher(engine, issuer, signer, source, clock=clock)
    assert pub.health().state == "starting" and not pub.health().ready
    first = await pub.publish_now()
    assert first.number == 1 and first.entries == 3
    crl = x509.load_der_x509_crl(first.der)
    assert crl.is_signature_valid(rsa_ca.cert.public_key())
    assert crl.last_update_utc == clock.now and crl.next_update_utc == clock.now + timedelta(days=7)
    assert {r.serial_number for r in crl} == {0x10, 0x11, 0x12}
    assert crl.get_revoked_certificate_by_serial_number(0x11).extensions.get_extension_for_class(
        x509.CRLReason).value.reason == x509.ReasonFlags.certificate_hold
    assert x509.load_pem_x509_crl(first.pem).tbs_certlist_bytes == crl.tbs_certlist_bytes
    assert first.this_update == clock.now and first.next_update == clock.now + timedelta(days=7)
    health = pub.health()
    assert health.ready and health.state == "ok" and health.crl_number == 1

    source.release(0x11)  # hold released: gone from the next CRL
    clock.advance(60)
    second = await pub.publish_now()
    assert second.number == 2 and second.this_update == clock.now
    assert {r.serial_number for r in x509.load_der_x509_crl(second.der)} == {0x10, 0x12}
    assert second.etag != first.etag and pub.current is second

    stored = await CrlStateStore(engine, "default").load()
    assert stored.number == 2 and stored.der == second.der and stored.entries == 2


async def test_failed_resign_keeps_serving_the_last_good_crl_and_says_so(engine, issuer, signer, source, clock,
                                                                         recorder):
    pub = make_publisher(engine, issuer, signer, source, clock=clock, logger=recorder)
    good = await pub.publish_now()

    source.fail = ConnectionError("database went away")
    with pytest.raises(PublishError, match="database went away"):
        await pub.publish_now()
    assert pub.current is good
    h = pub.health()
    assert h.state == "degraded" and h.ready and h.consecutive_failures == 1
    assert "database went away" in h.last_error and h.last_failure_at == clock.now
    assert "crl.publish.failed" in recorder.events("error")

    # a signer that returns garbage: the self-check refuses to publish it
    source.fail = None
    garbage = CrlSigner(signer.algorithm, lambda tbs: b"\x01" * 256)
    pub.signer = garbage
    with pytest.raises(PublishError) as info:
        await pub.publish_now()
    assert isinstance(info.value.__cause__, SelfCheckError)
    assert any("signature" in p for p in info.value.__cause__.problems)
    assert pub.current is good and pub.health().consecutive_failures == 2

    # past nextUpdate without a successful re-sign: stale, not ready
    clock.advance(timedelta(days=8).total_seconds())
    assert pub.health().state == "stale" and not pub.health().ready

    pub.signer = signer
    recovered = await pub.publish_now()
    assert recovered.number > good.number and pub.health().state == "ok"
    stored = await CrlStateStore(engine, "default").load()
    assert stored.number == recovered.number


async def test_two_publishers_on_one_database_never_share_a_number(engine, db_url, issuer, signer, source):
    source.revoke(5, datetime(2026, 1, 1, tzinfo=UTC), 1)
    other_engine = create_engine(db_url)  # a second connection pool, as a second process would have
    try:
        seen_a: list[int] = []
        seen_b: list[int] = []
        a = make_publisher(engine, issuer, numbers_signed(signer, seen_a), source)
        b = make_publisher(other_engine, issuer, numbers_signed(signer, seen_b), source)

        async def run(p: Publisher, n: int):
            for _ in range(n):
                await p.publish_now()

        await asyncio.gather(run(a, 8), run(b, 8))
        signed = seen_a + seen_b
        assert len(signed) == 16 and len(set(signed)) == 16
        assert seen_a == sorted(seen_a) and seen_b == sorted(seen_b)
        store = CrlStateStore(engine, "default")
        assert await store.published_number() == max(signed)
        # both end up serving the newest CRL
        await a.refresh_from_store()
        await b.refresh_from_store()
        assert a.current.number == b.current.number == max(signed)
    finally:
        await other_engine.dispose()


async def test_a_second_process_on_the_same_database_never_reuses_a_number(engine, db_url, issuer, signer, source,
                                                                           rsa_ca, tmp_path):
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert_path.write_bytes(rsa_ca.pem)
    key_path.write_bytes(rsa_ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "crl" / "publish_worker.py"), db_url,
                             str(cert_path), str(key_path), "10"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        mine: list[int] = []
        pub = Publisher("shared", issuer=issuer, signer=numbers_signed(signer, mine), source=source, engine=engine)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        for _ in range(10):
            await pub.publish_now()
            await asyncio.sleep(0)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    line = [ln for ln in out.splitlines() if ln.startswith("signed: ")][-1]
    theirs = [int(x) for x in line[len("signed: "):].split()]
    assert len(theirs) == 10 and len(mine) == 10
    assert not set(theirs) & set(mine)
    assert await CrlStateStore(engine, "shared").published_number() == max(theirs + mine)


async def test_store_allocation_and_save_are_monotonic(engine):
    store = CrlStateStore(engine, "ca-x")
    t = datetime(2026, 11, 23, 10, tzinfo=UTC)
    n1, t1 = await store.allocate(t)
    n2, t2 = await store.allocate(t - timedelta(hours=1))  # a process whose clock is behind
    assert (n1, n2) == (1, 2) and t1 == t and t2 == t  # thisUpdate never goes backwards
    n3, _ = await store.allocate(t, floor=100)
    assert n3 == 101
    kw = dict(this_update=t, next_update=t + timedelta(days=7), sha256="0" * 64, entries=0, published_at=t,
              published_by="test")
    assert await store.save(number=n2, der=b"two", **kw)
    assert not await store.save(number=n1, der=b"one", **kw)  # lower than the published one
    assert not await store.save(number=n2, der=b"again", **kw)  # equal: never two CRLs with one number
    assert not await store.save(number=500, der=b"never allocated", **kw)
    assert await store.published_number() == 2 and (await store.load()).der == b"two"
    assert await store.last_allocated() == 101
    assert await CrlStateStore(engine, "other-ca").published_number() is None


async def test_number_floor_and_this_update_monotonic_across_clocks(engine, issuer, signer, source, clock):
    ahead = make_publisher(engine, issuer, signer, source, clock=lambda: clock.now + timedelta(minutes=30),
                           number_floor=1000)
    first = await ahead.publish_now()
    assert first.number == 1001
    behind = make_publisher(engine, issuer, signer, source, clock=clock)
    second = await behind.publish_now()
    assert second.number == 1002 and second.this_update >= first.this_update


async def test_restart_adopts_the_stored_crl_and_pollers_pick_up_new_ones(engine, issuer, signer, source):
    settings = CrlSettings(poll_interval=0.05, coalesce_delay=0.05)
    a = make_publisher(engine, issuer, signer, source, settings=settings)
    first = await a.publish_now()
    store = CrlStateStore(engine, "default")
    allocated = await store.last_allocated()

    b = make_publisher(engine, issuer, signer, source, settings=settings)
    await b.start()
    try:
        adopted = await b.wait_newer(None, timeout=5)
        assert adopted.number == first.number and adopted.der == first.der
        assert await store.last_allocated() == allocated  # not due yet: no new number taken
        newer = await a.publish_now()
        picked = await b.wait_newer(first.number, timeout=5)
        assert picked.number == newer.number and picked.der == newer.der
    finally:
        await b.stop()


async def test_poll_soon_adopts_a_crl_of_another_publisher_without_waiting_for_the_poll(engine, issuer, signer,
                                                                                         source):
    settings = CrlSettings(poll_interval=3600, coalesce_delay=0.05)
    a = make_publisher(engine, issuer, signer, source, settings=settings)
    first = await a.publish_now()
    b = make_publisher(engine, issuer, signer, source, settings=settings)
    await b.start()
    try:
        await b.wait_newer(None, timeout=5)  # the first look at start-up
        newer = await a.publish_now()
        await asyncio.sleep(0.3)
        assert b.current.number == first.number  # the next poll is an hour away
        b.poll_soon()
        picked = await b.wait_newer(first.number, timeout=2)
        assert picked.number == newer.number and picked.der == newer.der
    finally:
        await b.stop()


async def test_on_recorded_is_called_for_recorded_crls_and_its_failure_fails_nothing(engine, issuer, signer, source,
                                                                                   recorder):
    calls = []

    async def hook(published):
        calls.append(published.number)
        if len(calls) == 2:
            raise ConnectionError("notification channel down")

    pub = make_publisher(engine, issuer, signer, source, on_recorded=hook, logger=recorder)
    first = await pub.publish_now()
    second = await pub.publish_now()  # the hook raises: the CRL is recorded and served all the same
    assert calls == [first.number, second.number]
    assert pub.current is second and pub.health().state == "ok"
    assert (await CrlStateStore(engine, "default").load()).number == second.number
    assert "crl.recorded_hook.failed" in recorder.events("warning")


async def test_a_tampered_stored_crl_is_not_adopted(engine, issuer, signer, source, recorder):
    a = make_publisher(engine, issuer, signer, source)
    first = await a.publish_now()
    forged = bytearray(first.der)
    forged[-5] ^= 0xFF
    async with engine.begin() as conn:
        await conn.execute(crl_state.update().values(crl_number=first.number + 1, last_number=first.number + 1,
                                                     der=bytes(forged)))
    b = make_publisher(engine, issuer, signer, source, logger=recorder)
    assert not await b.refresh_from_store()
    assert b.current is None and "crl.adopt.rejected" in recorder.events("error")


async def test_status_changes_are_coalesced_into_one_prompt_resign(engine, issuer, signer, source):
    settings = CrlSettings(coalesce_delay=0.3, poll_interval=0.05)
    pub = make_publisher(engine, issuer, signer, source, settings=settings)
    await pub.start()
    try:
        first = await pub.wait_newer(None, timeout=5)
        assert first.entries == 0
        started = time.monotonic()
        for serial in range(1, 11):
            source.revoke(serial, datetime.now(UTC), 5)
            pub.notify_changed()
            await asyncio.sleep(0.01)
        second = await pub.wait_newer(first.number, timeout=5)
        latency = time.monotonic() - started
        assert second.entries == 10 and second.number == first.number + 1
        # the promise: coalesce_delay after the first change, plus one build (tiny here)
        assert 0.3 <= latency < 0.3 + 1.5
        await asyncio.sleep(0.6)
        assert pub.current is second  # ten notifications, one CRL
    finally:
        await pub.stop()


async def test_schedule_resigns_before_next_update(engine, issuer, signer, source):
    settings = CrlSettings(validity=2, resign_interval=1, coalesce_delay=0.1, poll_interval=0.05)
    pub = make_publisher(engine, issuer, signer, source, settings=settings)
    await pub.start()
    try:
        first = await pub.wait_newer(None, timeout=5)
        deadline = time.monotonic() + 2.6
        while time.monotonic() < deadline:
            cur = pub.current
            assert datetime.now(UTC) < cur.next_update
            await asyncio.sleep(0.05)
        assert pub.current.number >= first.number + 2
        assert pub.health().state == "ok"
    finally:
        await pub.stop()


async def test_failures_are_retried_on_the_retry_interval(engine, issuer, signer, source, recorder):
    settings = CrlSettings(retry_interval=0.2, coalesce_delay=0.05, poll_interval=0.05)
    source.fail = RuntimeError("not yet")
    pub = make_publisher(engine, issuer, signer, source, settings=settings, logger=recorder)
    await pub.start()
    try:
        await asyncio.sleep(0.5)
        assert pub.current is None and pub.health().state == "stale"
        assert 2 <= source.calls <= 4
        source.fail = None
        crl = await pub.wait_newer(None, timeout=2)
        assert crl.number >= 1 and pub.health().state == "ok"
    finally:
        await pub.stop()


async def test_stop_while_a_wake_up_is_pending_stops_the_loop(engine, issuer, signer, source):
    """A shutdown that lands as another process's CRL is announced (poll_soon) ends the publisher's loop."""
    b = make_publisher(engine, issuer, signer, source, settings=CrlSettings(poll_interval=3600))
    await b.start()
    await asyncio.sleep(0.2)  # the loop now waits for its next wake-up
    task = b._task
    b.poll_soon()
    stopping = asyncio.create_task(b.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    if not done:  # leave nothing running when the assertion fails
        task.cancel()
        await asyncio.wait({stopping}, timeout=5)
    assert done, "stop() hangs: the loop swallowed its cancellation"
