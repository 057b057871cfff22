"""Verifications counted per hour, API and status (the console's chart), on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from otp import yubico
from otp.config import OtpSettings
from otp.service import OtpService
from tests.otp.conftest import import_keys, make_key

H = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)


async def test_verifications_are_counted_per_hour_api_and_status(service, clock):
    k = make_key(700)
    await import_keys(service, [k])
    clock.set(H + timedelta(minutes=5))
    assert (await service.verify_signin("alice", k.otp())).ok
    assert (await service.verify_signin("alice", k.otp())).ok
    assert not (await service.verify_signin("alice", make_key(701).otp(), source="192.0.2.1")).ok  # BAD_OTP
    clock.set(H + timedelta(minutes=59, seconds=59))
    assert not (await service.verify_signin("alice", k.otp(usage_ctr=1, session_use=0))).ok  # replayed
    unknown = yubico.decode_response(await service.verify_protocol({"id": "987654", "otp": k.otp(),
                                                                    "nonce": "abcdefghijklmnop"}))
    assert unknown["status"] == "NO_SUCH_CLIENT"
    assert await service.verify_counts(H, H + timedelta(hours=2)) == []  # counted in memory until flushed
    assert await service.flush_verify_counts() == 5
    clock.set(H + timedelta(hours=1))  # the next hour
    assert (await service.verify_signin("alice", k.otp(usage_ctr=2, session_use=0))).ok
    assert await service.flush_verify_counts() == 1
    assert await service.flush_verify_counts() == 0
    assert await service.verify_counts(H, H + timedelta(hours=2)) == [
        (H, "signin", "BAD_OTP", 1), (H, "signin", "OK", 2), (H, "signin", "REPLAYED_OTP", 1),
        (H, "wsapi", "NO_SUCH_CLIENT", 1), (H + timedelta(hours=1), "signin", "OK", 1)]
    # the bounds: [since, until)
    assert await service.verify_counts(H + timedelta(hours=1), H + timedelta(hours=2)) == [
        (H + timedelta(hours=1), "signin", "OK", 1)]
    assert await service.verify_counts(H - timedelta(hours=1), H) == []
    # a later flush of the same hour adds to its row
    clock.set(H + timedelta(hours=1, minutes=30))
    assert (await service.verify_signin("alice", k.otp())).ok
    await service.flush_verify_counts()
    assert await service.verify_counts(H + timedelta(hours=1), H + timedelta(hours=2)) == [
        (H + timedelta(hours=1), "signin", "OK", 2)]


async def test_counts_are_flushed_when_the_service_closes_and_pruned_with_security_events(engine, kek, clock):
    settings = OtpSettings(security_event_retention_days=30)
    clock.set(H)
    async with OtpService(engine, settings, kek, clock=clock) as service:
        k = make_key(710)
        await import_keys(service, [k])
        assert (await service.verify_signin("bob", k.otp())).ok
    async with OtpService(engine, settings, kek, clock=clock) as service:
        assert await service.verify_counts(H, H + timedelta(hours=1)) == [(H, "signin", "OK", 1)]
        clock.advance(30 * 86400 - 1)
        await service.prune()
        assert await service.verify_counts(H, H + timedelta(hours=1)) == [(H, "signin", "OK", 1)]
        clock.advance(3601)
        await service.prune()
        assert await service.verify_counts(H, H + timedelta(hours=1)) == []


async def test_counts_that_fail_to_be_written_are_kept_for_the_next_flush(service, clock, monkeypatch):
    k = make_key(720)
    await import_keys(service, [k])
    clock.set(H)
    assert (await service.verify_signin("carol", k.otp())).ok

    async def broken(counts):
        raise OSError("database down")

    real = service.store.add_verify_counts
    monkeypatch.setattr(service.store, "add_verify_counts", broken)
    try:
        await service.flush_verify_counts()
    except OSError:
        pass
    else:
        raise AssertionError("the flush should fail")
    monkeypatch.setattr(service.store, "add_verify_counts", real)
    assert (await service.verify_signin("carol", k.otp())).ok
    assert await service.flush_verify_counts() == 2
    assert await service.verify_counts(H, H + timedelta(hours=1)) == [(H, "signin", "OK", 2)]


async def test_the_server_adds_the_counts_at_each_interval_and_survives_a_failed_round(service, clock, monkeypatch):
    import asyncio

    import structlog

    from scep_server.otpwiring.feature import _flush_job

    k = make_key(730)
    await import_keys(service, [k])
    clock.set(H)
    assert (await service.verify_signin("dave", k.otp())).ok
    real = service.store.add_verify_counts
    calls = []

    async def flaky(counts):
        calls.append(dict(counts))
        if len(calls) == 1:
            raise OSError("database down")
        await real(counts)

    monkeypatch.setattr(service.store, "add_verify_counts", flaky)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(_flush_job(service, interval=0.05)())
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if await service.verify_counts(H, H + timedelta(hours=1)):
                    break
        finally:
            task.cancel()
    assert await service.verify_counts(H, H + timedelta(hours=1)) == [(H, "signin", "OK", 1)]
    assert [e["event"] for e in logs if e["log_level"] == "error"][:1] == ["otp.verify_counts.failed"]
