"""Races across two `scep-server serve` processes sharing PostgreSQL: one binding, one nonce use."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
import sqlalchemy as sa

from scep_server.binding.tables import device_certs
from trustkit.db import create_engine
from scep_server.store.tables import events
from scep_server.tokens import TokenStore
from tests.conftest import _truncate_pg
from tests.factories import NOW
from tests.server import serve_processes

from .conftest import Api, enrol, sign


async def trust_default(engine) -> None:
    """The `default` profile's certificates attest in these tests (it is created with device_trust off)."""
    from scep_server.profiles import ProfileStore

    store = ProfileStore(engine)
    profile = await store.get("default")
    await store.update("default", now=NOW, settings=profile.settings.model_copy(update={"device_trust": True}))

pytestmark = [pytest.mark.interop, pytest.mark.slow]


async def test_two_processes_fifty_devices_one_binding_and_one_nonce_use(pg_url, tmp_path, scepclient):
    await _truncate_pg(pg_url)
    data = tmp_path / "data"
    with serve_processes(data, pg_url, count=2) as urls:
        engine = create_engine(pg_url)
        try:
            await trust_default(engine)
            tokens = TokenStore(engine)
            _, signin = await tokens.create(scope="signin", name="race", now=NOW)
            _, admin = await tokens.create(scope="admin", name="race", now=NOW)
            challenge = (data / "default-challenge.txt").read_text().strip()
            dev = await enrol(scepclient, urls[0], challenge, tmp_path / "dev", "shared")
            conn = aiohttp.TCPConnector(limit=100)
            async with aiohttp.ClientSession(connector=conn) as session:
                apis = [Api(session, u, signin, admin) for u in urls]
                ids = [f"race-{i:02d}" for i in range(50)]
                for i, d in enumerate(ids):
                    await apis[i % 2].add_device(d)
                nonces = await asyncio.gather(*(apis[i % 2].nonce(d) for i, d in enumerate(ids)))

                async def attempt(i: int, d: str, nonce: str) -> dict:
                    return await apis[(i + 1) % 2].attest(d, dev.cert_pem, dev.key, nonce=nonce)

                results = await asyncio.gather(*(attempt(i, d, n) for i, (d, n) in enumerate(zip(ids, nonces))))
                reasons = [r["reason"] for r in results]
                assert reasons.count("managed") == 1, reasons
                assert reasons.count("bound_to_other_device") == 49, reasons
                winner = ids[reasons.index("managed")]

                # one nonce replayed 20 times over both processes: exactly one success
                nonce = await apis[0].nonce(winner)
                body = {"device_id": winner, "nonce": nonce, "certificate": dev.cert_pem.decode(),
                        "signature": sign(dev.key, nonce, winner)}
                replays = await asyncio.gather(*(apis[i % 2].post("/api/v1/attestation/verify", body)
                                                 for i in range(20)))
                assert sorted(r["reason"] for r in replays) == ["managed"] + ["nonce_reused"] * 19
            async with engine.connect() as c:
                rows = (await c.execute(sa.select(device_certs))).all()
                clones = (await c.execute(sa.select(sa.func.count()).select_from(events).where(
                    events.c.kind == "security.cert.second_device"))).scalar()
            assert [(r.device_id, r.serial, r.current) for r in rows] == [(winner, dev.serial, True)]
            assert clones == 49
        finally:
            await engine.dispose()


async def test_two_processes_one_device_two_certificates_one_binding(pg_url, tmp_path, scepclient):
    """Two certificates (neither renewing the other nor enrolled for the device) race for one device through
    two processes, in two rounds: one binds, the other is refused and recorded, nothing is retired."""
    await _truncate_pg(pg_url)
    data = tmp_path / "data"
    with serve_processes(data, pg_url, count=2) as urls:
        engine = create_engine(pg_url)
        try:
            await trust_default(engine)
            tokens = TokenStore(engine)
            _, signin = await tokens.create(scope="signin", name="race", now=NOW)
            _, admin = await tokens.create(scope="admin", name="race", now=NOW)
            challenge = (data / "default-challenge.txt").read_text().strip()
            winners = {}
            async with aiohttp.ClientSession() as session:
                apis = [Api(session, u, signin, admin) for u in urls]
                for round_ in range(2):
                    creds = [await enrol(scepclient, urls[0], challenge, tmp_path / f"dev{round_}{i}", f"c{round_}{i}")
                             for i in range(2)]
                    device = f"one-{round_}"
                    await apis[0].add_device(device)
                    nonces = [await apis[i].nonce(device) for i in range(2)]
                    results = await asyncio.gather(*(apis[i].attest(device, creds[i].cert_pem, creds[i].key,
                                                                    nonce=nonces[i]) for i in range(2)))
                    reasons = [r["reason"] for r in results]
                    assert sorted(reasons) == ["device_bound_to_other_certificate", "managed"], reasons
                    winners[device] = creds[reasons.index("managed")].serial
            async with engine.connect() as c:
                rows = (await c.execute(sa.select(device_certs))).all()
                refused = (await c.execute(sa.select(sa.func.count()).select_from(events).where(
                    events.c.kind == "security.binding.refused"))).scalar()
            assert {r.device_id: (r.serial, r.current, r.state) for r in rows} == {
                d: (s, True, "active") for d, s in winners.items()}
            assert refused == 2
        finally:
            await engine.dispose()
