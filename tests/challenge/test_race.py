"""Single use under a race: 20 devices redeem one challenge at once, exactly one certificate is issued,
in one process and across two `scep-server serve` processes sharing the database."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import aiohttp
import pytest
import sqlalchemy as sa

from scep_server.challenge.basic import hash_password
from scep_server.challenge.store import ChallengeStore
from scep_server.profiles import ProfileSettings, ProfileStore
from scep_server.runtime import initialise, load_cas
from scep_server.scep import PKIStatus
from trustkit.db import create_engine
from scep_server.store.tables import certificates
from tests.challenge.conftest import add_profile, build, dynamic, pki
from tests.factories import rsa_key, settings_for
from tests.server import serve_processes

N = 20


async def _race(session, urls, srv_like, profile, challenge, keys):
    async def one(i, key):
        body = build(srv_like, key, challenge=challenge, cn=f"racer-{i}")
        return await pki(session, srv_like.at(urls[i % len(urls)]), profile, body, key)

    return await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))


class _At:
    """What the request helpers need of a server: its URL and runtime (for the RA certificate)."""

    def __init__(self, url, runtime):
        self.url, self.runtime = url, runtime

    def at(self, url):
        return _At(url, self.runtime)


async def test_parallel_redemptions_in_process(server):
    await add_profile(server, "race", "dynamic", dynamic())
    issued = await server.runtime.challenges.new_challenge("race", source="cli")
    keys = [rsa_key() for _ in range(N)]
    async with aiohttp.ClientSession() as s:
        reps = await _race(s, [server.url], _At(server.url, server.runtime), "race", issued.challenge, keys)
    statuses = [r.status for r in reps]
    assert statuses.count(PKIStatus.SUCCESS) == 1, [r.fail_text for r in reps]
    assert all("already been used" in r.fail_text for r in reps if r.status is PKIStatus.FAILURE)
    async with server.runtime.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(certificates).where(
            certificates.c.profile == "race"))).scalar_one() == 1


@pytest.mark.slow
async def test_parallel_redemptions_across_processes(tmp_path, db_url):
    settings = settings_for(tmp_path / "data", db_url)
    await initialise(settings)
    cas = load_cas(settings)
    ca = next(iter(cas.values()))
    engine = create_engine(db_url)
    try:
        now = datetime.now(timezone.utc)
        await ProfileStore(engine).create("race", ca=ca.name, challenge_kind="dynamic", now=now,
                                          settings=ProfileSettings(challenge={"credentials": {
                                              "username": "u", "password_hash": hash_password("p", log2_n=10)}}))
        issued = await ChallengeStore(engine).issue("race", now=now, ttl=timedelta(minutes=60), source="cli")
        keys = [rsa_key() for _ in range(N)]
        rt = SimpleNamespace(cas=cas)
        with serve_processes(settings.data_dir, db_url, count=2) as urls:
            async with aiohttp.ClientSession() as s:
                reps = await _race(s, urls, _At(urls[0], rt), "race", issued.challenge, keys)
        assert [r.status for r in reps].count(PKIStatus.SUCCESS) == 1, [r.fail_text for r in reps]
        async with engine.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(certificates).where(
                certificates.c.profile == "race"))).scalar_one() == 1
    finally:
        await engine.dispose()
