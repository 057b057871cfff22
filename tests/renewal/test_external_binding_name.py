"""The binding a renewal's signer is held to is one of our certificate's, never a customer CA's binding that shares
its CA name and serial (such a name is refused now, but may be in a database from before): a device deleted under
that customer CA does not take down the renewal of our certificate. SQLite and PostgreSQL."""
from __future__ import annotations

import aiohttp

from scep_server.binding.tables import device_certs, devices
from trustkit.db import writer

from .conftest import cert_row, issue, renew, serial_of, static_profile
from tests.factories import rsa_key


async def test_a_customer_binding_under_our_ca_name_does_not_hold_our_renewal(server, clock):
    await static_profile(server, "short", template={"validity_days": 30})
    rt = server.runtime
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "short", key)
        record = await cert_row(server, der)
        now = rt.clock()
        async with writer(rt.engine).begin() as conn:
            await conn.execute(devices.insert().values(id="theirs", status="deleted", created_at=now,
                                                       status_changed_at=now))
            await conn.execute(device_certs.insert().values(
                fingerprint_sha256="ab" * 32, device_id="theirs", ca=record["ca"], external=True,
                serial=serial_of(der), not_after=record["not_after"], current=False, state="active", bound_at=now))
        clock.advance(days=21)  # inside the window
        rep = await renew(s, server, "short", der, key)
    assert rep.status.name == "SUCCESS", rep.fail_text
