"""A re-sign for a status change that fails (a database or key hiccup) is tried again after crl.retry_interval,
not left to the next scheduled re-sign (crl.resign_interval, an hour by default): the revocation it was to carry
reaches the CRL once the hiccup is over, without waiting for another change."""
from __future__ import annotations

import asyncio
from datetime import timedelta

from cryptography import x509

from crl.config import CrlSettings
from crl.publish import Publisher
from tests.crl.test_partitions import PartitionedSource, make_set

SETTINGS = CrlSettings(resign_interval=timedelta(hours=1), retry_interval=0.2, coalesce_delay=0.05,
                       poll_interval=0.05)


def listed(der: bytes) -> set[int]:
    return {r.serial_number for r in x509.load_der_x509_crl(der)}


async def test_a_failed_resign_after_a_change_is_retried(engine, issuer, signer, source, clock):
    pub = Publisher("default", issuer=issuer, signer=signer, source=source, engine=engine, settings=SETTINGS,
                    clock=clock)
    await pub.start()
    try:
        first = await pub.wait_newer(None, timeout=5)
        source.revoke(0x5A1, clock.now)
        source.fail = ConnectionError("database went away")
        calls = source.calls
        pub.notify_changed()
        for _ in range(100):  # bounded: the re-sign for the change is tried, and fails
            if source.calls > calls:
                break
            await asyncio.sleep(0.05)
        assert source.calls > calls and pub.current is first
        source.fail = None
        crl = await pub.wait_newer(first.number, timeout=3)
        assert 0x5A1 in listed(crl.der)
    finally:
        await pub.stop()


async def test_a_failed_partition_resign_after_a_change_is_retried(engine, issuer, signer, clock):
    src = PartitionedSource()
    parts = make_set(engine, issuer, signer, src, clock, settings=SETTINGS, listed=src.listed)
    await parts.start()
    try:
        for pub in parts.publishers.values():
            await pub.wait_newer(None, timeout=10)
        before = parts.publishers[1].current.number
        src.fail_listed = True
        src.revoke(0x301, clock.now)
        parts.notify_changed()
        for _ in range(100):  # bounded: the patch re-sign is tried, and fails
            if parts.publishers[1].health().consecutive_failures:
                break
            await asyncio.sleep(0.05)
        assert parts.publishers[1].health().consecutive_failures
        src.fail_listed = False
        crl = await parts.publishers[1].wait_newer(before, timeout=3)
        assert listed(crl.der) == {0x301}
    finally:
        await parts.stop()
