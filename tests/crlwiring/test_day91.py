"""The day-91 rule as the server's background job, driven by an injected clock (no waiting for days)."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import sqlalchemy as sa
from cryptography import x509

from scep_server.ca import inventory
from scep_server.ca.inventory import serial_hex
from trustkit.clock import SettableClock
from trustkit.db import writer
from scep_server.store.tables import certificates, events
from tests.server import start_app

from .conftest import (
    FAST_CRL,
    crl_serials,
    enrol_with_codec,
    publisher,
    wait_for,
)


async def _status(srv, cert) -> str:
    async with srv.runtime.engine.connect() as conn:
        return (await inventory.get(conn, serial_hex(cert.serial_number))).status


async def _revoke_events(srv, cert) -> int:
    async with srv.runtime.engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(events).where(
            events.c.kind == "pki.cert.revoke", events.c.subject == serial_hex(cert.serial_number)))).scalar()


async def test_unused_certificates_are_revoked_once_on_day_91_and_listed(aiohttp_server, tmp_path, db_url):
    clock = SettableClock()
    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock,
                          crl={**FAST_CRL, "unused_check_interval": 0.1})
    pub = publisher(srv)
    await pub.wait_newer(None, timeout=10)
    async with aiohttp.ClientSession() as session:
        _, unused_a = await enrol_with_codec(session, srv.url, srv.challenge(), "unused-a")
        _, unused_b = await enrol_with_codec(session, srv.url, srv.challenge(), "unused-b")
        _, used = await enrol_with_codec(session, srv.url, srv.challenge(), "used")
        async with writer(srv.runtime.engine).begin() as conn:
            await inventory.mark_used(conn, serial_hex(used.serial_number), clock() + timedelta(days=3))

        # day 89: nobody is revoked, however often the job runs
        clock.advance(days=89)
        _, young = await enrol_with_codec(session, srv.url, srv.challenge(), "young")
        await asyncio.sleep(0.5)
        for cert in (unused_a, unused_b, used, young):
            assert await _status(srv, cert) == "valid"

        # day 91: the two never-used certificates issued on day 0 are revoked
        clock.advance(days=2)

        async def both_revoked():
            return all([await _status(srv, c) == "revoked" for c in (unused_a, unused_b)])

        await wait_for(both_revoked, timeout=10)
        await asyncio.sleep(0.5)  # several more runs of the job
        for cert in (unused_a, unused_b):
            assert await _revoke_events(srv, cert) == 1
        assert await _status(srv, used) == "valid"
        assert await _status(srv, young) == "valid"  # issued on day 89: 2 days old
        async with srv.runtime.engine.connect() as conn:
            row = (await conn.execute(sa.select(certificates.c.revocation_reason, certificates.c.revoked_at).where(
                certificates.c.serial == serial_hex(unused_a.serial_number)))).one()
        assert row.revocation_reason == int(inventory.Reason.CESSATION_OF_OPERATION)

        # and they land on the CRL at the CDP, with the permanent reason
        async def listed():
            async with session.get(f"{srv.url}/crl/default.crl") as resp:
                body = await resp.read()
            serials = crl_serials(body)
            return serials if unused_a.serial_number in serials and unused_b.serial_number in serials else None

        serials, _ = await wait_for(listed, timeout=10)
        assert serials[unused_a.serial_number] == x509.ReasonFlags.cessation_of_operation
        assert used.serial_number not in serials and young.serial_number not in serials

        # 92 days after its issue the young certificate goes the same way; the used one never does
        clock.advance(days=89)

        async def young_revoked():
            return await _status(srv, young) == "revoked"

        await wait_for(young_revoked, timeout=10)
        assert await _status(srv, used) == "valid"
        assert await _revoke_events(srv, young) == 1
