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


async def test_a_request_sent_again_at_once_gets_one_certificate_both_times(server, monkeypatch):
    """A device's PKCSReq and its retry (same key and transactionID, a new senderNonce) reach two processes or
    instances at once: the challenge is used once, by that transaction, and both copies get its one certificate
    (the copy that lost the challenge's compare-and-set used to be refused "already been used")."""
    from scep_server.enrolment.service import ScepService

    await add_profile(server, "race", "dynamic", dynamic())
    issued = await server.runtime.challenges.new_challenge("race", source="cli")
    issue = ScepService._issue
    arrived: list[object] = []
    both = asyncio.Event()

    async def after_both_checked(self, e):
        arrived.append(e)
        if len(arrived) == 2:
            both.set()
        try:
            await asyncio.wait_for(both.wait(), 2)
        except TimeoutError:
            pass  # the other copy was refused before it got here
        return await issue(self, e)

    monkeypatch.setattr(ScepService, "_issue", after_both_checked)
    key = rsa_key()
    copies = [build(server, key, challenge=issued.challenge, cn="retried", transaction_id="RETRIED-1")
              for _ in range(2)]
    async with aiohttp.ClientSession() as s:
        reps = await asyncio.gather(*(pki(s, server, "race", body, key) for body in copies))
    assert [r.status for r in reps] == [PKIStatus.SUCCESS] * 2, [r.fail_text for r in reps]
    assert reps[0].certs[0] == reps[1].certs[0]
    async with server.runtime.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(certificates).where(
            certificates.c.profile == "race"))).scalar_one() == 1


async def test_a_challenge_used_by_a_transaction_that_recorded_nothing_serves_its_retry_only(server):
    """The process that redeemed a challenge was killed before it recorded the certificate: the device's retry of
    that transaction, with its key, enrols; any other transaction, or another key under that transactionID (whoever
    captured the request knows it: it travels in clear), is still refused."""
    from scep_server.ca.inventory import public_key_sha256

    rt = server.runtime
    await add_profile(server, "race", "dynamic", dynamic())
    issued = await rt.challenges.new_challenge("race", source="cli")
    key, other_key, third_key, fourth_key = rsa_key(), rsa_key(), rsa_key(), rsa_key()
    await rt.challenges.store.redeem("race", issued.challenge, now=rt.clock(), transaction_id="KILLED-1",
                                     public_key_sha256=public_key_sha256(key.public_key()))
    async with aiohttp.ClientSession() as s:
        other = await pki(s, server, "race", build(server, other_key, challenge=issued.challenge, cn="other",
                                                   transaction_id="OTHER-1"), other_key)
        stolen = await pki(s, server, "race", build(server, fourth_key, challenge=issued.challenge, cn="retried",
                                                    transaction_id="KILLED-1"), fourth_key)
        retry = await pki(s, server, "race", build(server, key, challenge=issued.challenge, cn="retried",
                                                   transaction_id="KILLED-1"), key)
        again = await pki(s, server, "race", build(server, third_key, challenge=issued.challenge, cn="third",
                                                  transaction_id="KILLED-1"), third_key)
    assert other.status is PKIStatus.FAILURE and "already been used" in other.fail_text
    assert stolen.status is PKIStatus.FAILURE and "already been used" in stolen.fail_text
    assert retry.status is PKIStatus.SUCCESS, retry.fail_text
    # the transaction is recorded now: the same transactionID with another key is a different request
    assert again.status is PKIStatus.FAILURE and "different key" in again.fail_text


async def test_a_challenge_used_before_its_key_was_kept_serves_no_retry(server):
    """A use recorded without the request's key (by an earlier version) lets no retry through."""
    rt = server.runtime
    await add_profile(server, "race", "dynamic", dynamic())
    issued = await rt.challenges.new_challenge("race", source="cli")
    await rt.challenges.store.redeem("race", issued.challenge, now=rt.clock(), transaction_id="OLD-1")
    key = rsa_key()
    async with aiohttp.ClientSession() as s:
        retry = await pki(s, server, "race", build(server, key, challenge=issued.challenge, transaction_id="OLD-1"),
                          key)
    assert retry.status is PKIStatus.FAILURE and "already been used" in retry.fail_text


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
