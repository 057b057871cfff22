"""One-time challenge store on SQLite and PostgreSQL: hashing, expiry, profile binding, cap, single use."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from scep_server.challenge.store import (CHALLENGE_BYTES, CacheFull, ChallengeStore, Expectations,
                                         check_expectations, digest, expectations_from)
from scep_server.challenge.tables import challenges
from scep_server.enrolment import ChallengeRejected
from scep_server.profiles import ProfileStore
from tests.factories import NOW, csr, make_ca, register_ca, rsa_key

TTL = timedelta(minutes=60)


@pytest.fixture
async def store(engine, tmp_path):
    ca = make_ca(tmp_path / "ca")
    await register_ca(engine, ca)
    profiles = ProfileStore(engine)
    for name in ("a", "b"):
        await profiles.create(name, ca=ca.name, challenge_kind="dynamic", now=NOW)
    return ChallengeStore(engine)


async def test_challenge_is_random_and_stored_only_hashed(store, engine):
    issued = [await store.issue("a", now=NOW, ttl=TTL, source="cli") for _ in range(3)]
    assert len({i.challenge for i in issued}) == 3
    assert all(len(i.challenge) == 2 * CHALLENGE_BYTES and int(i.challenge, 16) >= 0 for i in issued)
    assert CHALLENGE_BYTES * 8 >= 128
    assert issued[0].expires_at == NOW + TTL
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(challenges))).all()
    stored = {r.challenge_sha256 for r in rows}
    assert stored == {digest(i.challenge) for i in issued}
    text = repr([tuple(r) for r in rows])
    assert not any(i.challenge in text for i in issued)


async def test_redeem_once(store, engine):
    issued = await store.issue("a", now=NOW, ttl=TTL, source="webhook", payload_identifier="ABC-123")
    redeemed = await store.redeem("a", issued.challenge, now=NOW + timedelta(minutes=1), transaction_id="tx1")
    assert redeemed.payload_identifier == "ABC-123" and redeemed.source == "webhook"
    with pytest.raises(ChallengeRejected, match="already been used"):
        await store.redeem("a", issued.challenge, now=NOW + timedelta(minutes=2), transaction_id="tx2")
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(challenges))).one()
    assert row.transaction_id == "tx1" and row.used_at is not None


async def test_expired_unknown_other_profile_and_missing(store):
    issued = await store.issue("a", now=NOW, ttl=TTL, source="page")
    with pytest.raises(ChallengeRejected, match="expired"):
        await store.redeem("a", issued.challenge, now=NOW + TTL, transaction_id="t")
    fresh = await store.issue("a", now=NOW, ttl=TTL, source="page")
    with pytest.raises(ChallengeRejected, match="another SCEP profile"):
        await store.redeem("b", fresh.challenge, now=NOW, transaction_id="t")
    with pytest.raises(ChallengeRejected, match="unknown challenge"):
        await store.redeem("a", "0" * 40, now=NOW, transaction_id="t")
    with pytest.raises(ChallengeRejected, match="no challengePassword"):
        await store.redeem("a", None, now=NOW, transaction_id="t")
    # the failed attempt on profile b did not use it up
    await store.redeem("a", fresh.challenge, now=NOW, transaction_id="t")


async def test_cap_on_unused(store):
    for _ in range(2):
        await store.issue("a", now=NOW, ttl=TTL, source="page", max_unused=2)
    with pytest.raises(CacheFull):
        await store.issue("a", now=NOW, ttl=TTL, source="page", max_unused=2)
    # another profile has its own cap; expired ones do not count
    await store.issue("b", now=NOW, ttl=TTL, source="page", max_unused=2)
    await store.issue("a", now=NOW + TTL, ttl=TTL, source="page", max_unused=2)
    counts = await store.counts("a", now=NOW + TTL)
    assert counts == {"unused": 1, "used": 0, "expired": 2}


async def test_cap_holds_under_concurrency(store):
    async def one():
        try:
            await store.issue("a", now=NOW, ttl=TTL, source="page", max_unused=5)
            return True
        except CacheFull:
            return False

    results = await asyncio.gather(*(one() for _ in range(15)))
    assert sum(results) == 5


async def test_parallel_redemptions_exactly_one_wins(store):
    issued = await store.issue("a", now=NOW, ttl=TTL, source="page")

    async def one(i):
        try:
            await store.redeem("a", issued.challenge, now=NOW, transaction_id=f"tx{i}")
            return True
        except ChallengeRejected:
            return False

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert results.count(True) == 1


def check_csr(csr, expected):
    """The expectations judged on what a profile allowing these names issues for `csr`."""
    policy = IssuancePolicy(CertificateTemplate(subject_attributes=["CN", "O", "emailAddress"],
                                                san_types=["dns", "ip", "email"]))
    check_expectations(policy.subject_and_sans(csr), expected)


async def test_expectations(store):
    exp = expectations_from({"subject": "CN=dev1,O=Example", "sans": ["DNS:Dev1.Example.com", "ip:10.0.0.1"]})
    issued = await store.issue("a", now=NOW, ttl=TTL, source="api", expectations=exp)
    key = rsa_key()
    wrong = csr(key, "dev2")
    with pytest.raises(ChallengeRejected, match="subject"):
        await store.redeem("a", issued.challenge, now=NOW, transaction_id="t",
                           check=lambda e: check_csr(wrong, e))
    good_subject = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name.from_rfc4514_string("CN=dev1,O=Example"))
    no_sans = good_subject.sign(key, hashes.SHA256())
    with pytest.raises(ChallengeRejected, match="subjectAltNames"):
        await store.redeem("a", issued.challenge, now=NOW, transaction_id="t", check=lambda e: check_csr(no_sans, e))
    import ipaddress



    good = good_subject.add_extension(x509.SubjectAlternativeName([
        x509.DNSName("dev1.example.com"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]), critical=False
    ).sign(key, hashes.SHA256())
    redeemed = await store.redeem("a", issued.challenge, now=NOW, transaction_id="t",
                                  check=lambda e: check_csr(good, e))
    assert redeemed.expectations == Expectations(subject="CN=dev1,O=Example",
                                                 sans=["dns:dev1.example.com", "ip:10.0.0.1"])


@pytest.mark.parametrize("payload", [{"subject": 5}, {"sans": "dns:x"}, {"sans": ["host.example"]},
                                     {"subject": "not a name"}])
def test_bad_expectations(payload):
    with pytest.raises(ValueError):
        expectations_from(payload)


async def test_prune(store, engine):
    await store.issue("a", now=NOW - timedelta(days=40), ttl=TTL, source="page")
    await store.issue("a", now=NOW, ttl=TTL, source="page")
    assert await store.prune(now=NOW) == 1
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(challenges))).scalar_one() == 1
