"""Stateless attestation nonces and the group commit of verifications, on SQLite and PostgreSQL (no HTTP)."""
from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

from scep_server.binding.attestation import AttestationService, Verdict
from scep_server.binding.devices import DeviceStore
from scep_server.binding.nonces import NonceKey
from scep_server.binding.tables import attestation_keys, attestation_spent_nonces, device_certs
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from trustkit.db import create_engine
from tests.factories import NOW, csr, record_issued, register_ca, rsa_key

from trustkit.clock import SettableClock

from .conftest import START, attesting_profile, sign


_serial = iter(range(0x200000, 0x300000))


async def issue(engine, ca):
    key = rsa_key()
    cert = ca.issue(csr(key, "device"), IssuancePolicy(CertificateTemplate()), serial=next(_serial), now=NOW)
    await record_issued(engine, ca, cert)
    return key, cert.public_bytes(serialization.Encoding.DER)


def service(engine, ca, clock, **kw) -> AttestationService:
    return AttestationService(engine, cas={ca.name: ca}, external=None, clock=clock, **kw)


async def verify(att, device_id, key, der, nonce):
    sig = base64.b64decode(sign(key, nonce, device_id))
    return await att.verify(device_id=device_id, nonce=nonce, certificate=der, signature=sig)


@pytest.fixture
async def env(engine, ca):
    await register_ca(engine, ca)
    await attesting_profile(engine, ca.name)
    clock = SettableClock(START)
    store = DeviceStore(engine, clock=clock)
    return store, clock


async def _spent(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(attestation_spent_nonces))).scalar()


async def test_issuing_writes_nothing_and_bad_nonces_get_their_reason(engine, env, ca):
    store, clock = env
    att = service(engine, ca, clock)
    key, der = await issue(engine, ca)
    await store.create("d1", actor="t")
    await store.create("d2", actor="t")
    nonces = [(await att.challenge("d1"))["nonce"] for _ in range(20)]
    assert len(set(nonces)) == 20
    assert await _spent(engine) == 0  # only the key row exists
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(attestation_keys))).scalar() == 1

    good = nonces[0]
    raw = bytearray(base64.urlsafe_b64decode(good + "="))
    # forged: any changed byte (expiry, random part or tag), or a wrong length, or not base64 at all
    for pos in (1, 8, 12, len(raw) - 1):
        forged = bytearray(raw)
        forged[pos] ^= 0x01
        text = base64.urlsafe_b64encode(bytes(forged)).rstrip(b"=").decode()
        assert (await verify(att, "d1", key, der, text)).reason is Verdict.NONCE_UNKNOWN, pos
    for text in (good[:-2], good + "AA", "A" * 55, "not a nonce!", ""):
        assert (await verify(att, "d1", key, der, text)).reason is Verdict.NONCE_UNKNOWN, text
    # minted under another key (another deployment's database)
    other = NonceKey(engine)
    other._secret = b"\x00" * 32
    foreign = await other.issue("d1", clock() + timedelta(minutes=1))
    assert (await verify(att, "d1", key, der, foreign)).reason is Verdict.NONCE_UNKNOWN
    # issued for another device (signed correctly over the other device id)
    assert (await verify(att, "d2", key, der, good)).reason is Verdict.NONCE_UNKNOWN
    # none of these spent anything; the good nonce still works once
    assert await _spent(engine) == 0
    assert (await verify(att, "d1", key, der, good)).reason is Verdict.MANAGED
    assert (await verify(att, "d1", key, der, good)).reason is Verdict.NONCE_REUSED
    # expired: refused without the database, before and after the spent rows are purged
    clock.now += timedelta(seconds=119)
    assert (await verify(att, "d1", key, der, nonces[1])).reason is Verdict.MANAGED
    clock.now += timedelta(seconds=1)
    assert (await verify(att, "d1", key, der, nonces[2])).reason is Verdict.NONCE_EXPIRED
    assert (await verify(att, "d1", key, der, good)).reason is Verdict.NONCE_EXPIRED
    assert await att.purge_nonces() == 0  # kept one more lifetime for clocks running behind
    clock.now += timedelta(minutes=3)
    assert await att.purge_nonces() == 2
    assert (await verify(att, "d1", key, der, good)).reason is Verdict.NONCE_EXPIRED


async def test_key_shared_by_instances_and_a_nonce_used_once_across_them(db_url, env, ca):
    """Two services on two engines (as two processes): a nonce from one is good on the other, once."""
    engine_a, engine_b = create_engine(db_url), create_engine(db_url)
    try:
        store, clock = env
        keys = await asyncio.gather(NonceKey(engine_a).secret(), NonceKey(engine_b).secret())
        assert keys[0] == keys[1] and len(keys[0]) == 32
        a, b = service(engine_a, ca, clock), service(engine_b, ca, clock)
        key, der = await issue(engine_a, ca)
        await store.create("d1", actor="t")
        assert (await verify(b, "d1", key, der, (await a.challenge("d1"))["nonce"])).reason is Verdict.MANAGED
        for _ in range(3):
            nonce = (await a.challenge("d1"))["nonce"]
            results = await asyncio.gather(*(verify((a, b)[i % 2], "d1", key, der, nonce) for i in range(12)))
            assert sorted(r.reason.value for r in results) == ["managed"] + ["nonce_reused"] * 11
    finally:
        await engine_a.dispose()
        await engine_b.dispose()


async def test_concurrent_verifications_share_commits_and_each_is_judged_alone(engine, env, ca):
    """Forty devices attest at once: first binds, first uses, a suspended device, an unknown device, two
    devices racing for one certificate and replays, mixed in the same batches."""
    store, clock = env
    att = service(engine, ca, clock)
    devices = [f"dev-{i:02d}" for i in range(40)]
    for d in devices:
        await store.create(d, actor="t")
    creds = [await issue(engine, ca) for _ in range(36)]
    await store.transition("dev-05", "suspend", actor="t")
    jobs = []
    for i, d in enumerate(devices[:36]):
        jobs.append((d, *creds[i], (await att.challenge(d))["nonce"]))
    # dev-36 and dev-37 present dev-00's certificate; "ghost" is no device; dev-01's nonce is replayed twice
    jobs.append(("dev-36", *creds[0], (await att.challenge("dev-36"))["nonce"]))
    jobs.append(("dev-37", *creds[0], (await att.challenge("dev-37"))["nonce"]))
    jobs.append(("ghost", *creds[2], (await att.challenge("ghost"))["nonce"]))
    jobs += [jobs[1], jobs[1]]
    results = await asyncio.gather(*(verify(att, d, k, der, n) for d, k, der, n in jobs))
    reasons = [r.reason for r in results]
    group = att._group
    assert group is not None and group.batches < len(jobs)  # commits were shared
    # dev-00's certificate: exactly one of the three claimants won it
    claim = [reasons[0], reasons[36], reasons[37]]
    assert claim.count(Verdict.MANAGED) == 1 and claim.count(Verdict.BOUND_TO_OTHER_DEVICE) == 2, claim
    winner = [jobs[0][0], "dev-36", "dev-37"][claim.index(Verdict.MANAGED)]
    assert reasons[5] is Verdict.DEVICE_SUSPENDED
    assert reasons[38] is Verdict.DEVICE_UNKNOWN
    assert sorted(r.value for r in (reasons[1], reasons[39], reasons[40])) == ["managed", "nonce_reused",
                                                                               "nonce_reused"]
    others = [r for i, r in enumerate(reasons) if i not in (0, 1, 5, 36, 37, 38, 39, 40)]
    assert others == [Verdict.MANAGED] * len(others)
    async with engine.connect() as conn:
        rows = {r.device_id: r for r in (await conn.execute(sa.select(device_certs))).all()}
    expected = {d for i, d in enumerate(devices[:36]) if i not in (0, 5)} | {winner}
    assert set(rows) == expected and all(r.current for r in rows.values())
    # later verifications (warm) are managed, one nonce each
    fresh = [(await att.challenge(d))["nonce"] for d, _, _, _ in jobs[1:5]]
    again = await asyncio.gather(*(verify(att, d, k, der, n) for (d, k, der, _), n in zip(jobs[1:5], fresh)))
    assert [r.reason for r in again] == [Verdict.MANAGED, Verdict.MANAGED, Verdict.MANAGED, Verdict.MANAGED]


async def test_a_failing_batch_is_run_again_item_by_item(engine, env, ca, monkeypatch):
    store, clock = env
    att = service(engine, ca, clock)
    creds = [await issue(engine, ca) for _ in range(6)]
    for i in range(6):
        await store.create(f"d{i}", actor="t")
    real = AttestationService._judge
    calls = {"batch": 0}

    async def judge(self, conn, info, device_id, *args):
        if device_id == "d3" and calls["batch"] == 0:
            calls["batch"] += 1
            raise sa.exc.IntegrityError("INSERT", {}, Exception("simulated conflict"))
        return await real(self, conn, info, device_id, *args)

    monkeypatch.setattr(AttestationService, "_judge", judge)
    nonces = [(await att.challenge(f"d{i}"))["nonce"] for i in range(6)]
    results = await asyncio.gather(*(verify(att, f"d{i}", *creds[i], nonces[i]) for i in range(6)))
    assert [r.reason for r in results] == [Verdict.MANAGED] * 6
    assert att._group.fallbacks == 1
    assert await _spent(engine) == 6  # the failed batch's spends were rolled back and made again, once each
    replays = await asyncio.gather(*(verify(att, f"d{i}", *creds[i], nonces[i]) for i in range(6)))
    assert [r.reason for r in replays] == [Verdict.NONCE_REUSED] * 6


async def test_steady_state_batches_spend_once_and_see_every_status_change(engine, env, ca):
    """Known devices presenting their bound, used certificate: batches that write nothing but the spends
    (on SQLite committed in one hand-off to the connection's thread). A replay in the same batch wins once;
    a suspension or a revocation committed between two batches is seen by the next; a batch mixing a first
    bind with steady requests is judged as a whole again, spending each nonce once."""
    from scep_server.ca import inventory
    from scep_server.ca.revocation import change_status
    from scep_server.ca.status import CertStatus
    from trustkit.db import writer

    store, clock = env
    att = service(engine, ca, clock)
    creds = [await issue(engine, ca) for _ in range(5)]
    for i in range(5):
        await store.create(f"d{i}", actor="t")
    for i in range(4):  # first bind and first use of d0..d3
        assert (await verify(att, f"d{i}", *creds[i], (await att.challenge(f"d{i}"))["nonce"])).managed
    before = att.read_only_batches

    async def round_(devices, replay=0):
        nonces = [(d, (await att.challenge(d))["nonce"]) for d in devices]
        nonces += [nonces[0]] * replay
        return await asyncio.gather(*(verify(att, d, *creds[int(d[1:])], n) for d, n in nonces))

    results = await round_(["d0", "d1", "d2", "d3"] * 3, replay=3)
    assert sorted(r.reason.value for r in results) == ["managed"] * 12 + ["nonce_reused"] * 3
    if engine.dialect.name == "sqlite":
        assert att.read_only_batches > before
    assert await _spent(engine) == 4 + 12

    await store.transition("d1", "suspend", actor="t")
    async with writer(engine).begin() as conn:
        cert = __import__("cryptography.x509", fromlist=["x"]).load_der_x509_certificate(creds[2][1])
        await change_status(conn, inventory.serial_hex(cert.serial_number), CertStatus.HOLD, at=clock(), actor="t")
    results = await round_(["d0", "d1", "d2", "d3"])
    assert [r.reason for r in results] == [Verdict.MANAGED, Verdict.DEVICE_SUSPENDED,
                                          Verdict.CERTIFICATE_ON_HOLD, Verdict.MANAGED]
    await store.transition("d1", "unsuspend", actor="t")
    results = await round_(["d1", "d4", "d0", "d3", "d0"])  # d4 binds: this batch writes
    assert [r.reason for r in results] == [Verdict.MANAGED] * 5
    assert await _spent(engine) == 4 + 12 + 4 + 5
    async with engine.connect() as conn:
        bound = (await conn.execute(sa.select(device_certs.c.device_id).where(device_certs.c.current))).scalars()
        assert sorted(bound) == ["d0", "d1", "d2", "d3", "d4"]


def _spellings(nonce: str, count: int) -> list[str]:
    """`count` distinct texts that a lenient base64 reading decodes to the nonce's bytes: padding, characters
    the decoder skips inserted anywhere, the standard alphabet's '+' and '/' for '-' and '_', and stray low
    bits in the last character."""
    import base64 as b64

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = b64.urlsafe_b64decode(nonce + "=")
    out = {nonce + "=", nonce + "==", nonce.replace("-", "+").replace("_", "/")}
    last = alphabet.index(nonce[-1])
    out |= {nonce[:-1] + alphabet[(last & ~3) | low] for low in range(4)}
    for junk in " .!*\n\t~":
        for pos in range(len(nonce) + 1):
            out.add(nonce[:pos] + junk + nonce[pos:])
    for pos in range(len(nonce) + 1):
        for second in range(pos, len(nonce) + 1):
            if len(out) > count:
                break
            out.add(nonce[:pos] + "." + nonce[pos:second] + " " + nonce[second:])
    out.discard(nonce)
    variants = sorted(out)[:count]
    assert len(variants) == count
    for v in variants:  # each is the same nonce to a lenient reader
        t = v.replace("-", "+").replace("_", "/")
        t = "".join(c for c in t if c.isalnum() or c in "+/")
        assert b64.b64decode(t + "=" * (-len(t) % 4)) == value, v
    return variants
