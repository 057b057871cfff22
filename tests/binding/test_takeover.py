"""A certificate cannot take over another device's binding; which certificates may attest at all.

Store tests (SQLite and PostgreSQL) drive the attestation service directly; the enrolment tests issue
certificates through SCEP to show where `enrolled_device_id` comes from.
"""
from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scep_server.binding.attestation import AttestationService, Verdict
from scep_server.binding.devices import DeviceStore
from scep_server.binding.tables import device_certs
from scep_server.ca import inventory
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from scep_server.profiles import ProfileSettings
from trustkit.db import create_engine, writer
from scep_server.store.tables import certificates, events
from tests.factories import NOW, csr, record_issued, register_ca

from trustkit.clock import SettableClock

from .conftest import START, attesting_profile, sign


_serial = iter(range(0x5000000, 0x6000000))


class Cred:
    def __init__(self, key, der: bytes, serial: str):
        self.key, self.der, self.serial = key, der, serial


async def issue(engine, ca, *, profile: str = "devices", renewal_of: Cred | None = None,
                enrolled_device_id: str | None = None) -> Cred:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(csr(key, "device"), IssuancePolicy(CertificateTemplate()), serial=next(_serial), now=NOW)
    serial = await record_issued(engine, ca, cert, profile=profile)
    if renewal_of is not None or enrolled_device_id is not None:
        async with writer(engine).begin() as conn:
            await conn.execute(certificates.update().where(certificates.c.serial == serial).values(
                renewal_of=renewal_of.serial if renewal_of else None, enrolled_device_id=enrolled_device_id))
    return Cred(key, cert.public_bytes(serialization.Encoding.DER), serial)


async def attest(att: AttestationService, device_id: str, cred: Cred) -> Verdict:
    nonce = (await att.challenge(device_id))["nonce"]
    sig = base64.b64decode(sign(cred.key, nonce, device_id, "ecdsa-sha256"))
    res = await att.verify(device_id=device_id, nonce=nonce, certificate=cred.der, signature=sig,
                           algorithm="ecdsa-sha256")
    return res.reason


@pytest.fixture
async def env(engine, ca):
    await register_ca(engine, ca)
    await attesting_profile(engine, ca.name, "devices")
    clock = SettableClock(START)
    store = DeviceStore(engine, clock=clock)
    att = AttestationService(engine, cas={ca.name: ca}, external=None, clock=clock)
    return store, att


async def bindings(engine) -> dict[str, tuple[str, bool, str, str | None]]:
    """serial -> (device, current, state, retired reason)"""
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(device_certs))).all()
    return {r.serial: (r.device_id, bool(r.current), r.state, r.retired_reason) for r in rows}


async def status(engine, serial: str) -> str:
    async with engine.connect() as conn:
        return (await inventory.get(conn, serial)).status


async def refusals(engine) -> list[dict]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events).where(events.c.kind == "security.binding.refused")
                                   .order_by(events.c.id))).all()
    return [{"device": r.subject, **json.loads(r.data)} for r in rows]


async def test_any_valid_certificate_cannot_take_over_a_bound_device(engine, env, ca):
    """The attack: a valid, unbound certificate of ours (a second enrolment, or the attacker's own) attested
    for a victim's registered device id. Refused; the victim's certificate stays bound, current and valid."""
    store, att = env
    await store.create("victim", actor="t")
    own = await issue(engine, ca)
    assert await attest(att, "victim", own) is Verdict.MANAGED
    attacker = await issue(engine, ca)
    assert await attest(att, "victim", attacker) is Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE
    assert await attest(att, "victim", attacker) is Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE  # and again
    assert await bindings(engine) == {own.serial: ("victim", True, "active", None)}
    assert await status(engine, own.serial) == "valid"
    assert await attest(att, "victim", own) is Verdict.MANAGED
    seen = await refusals(engine)
    assert [(e["device"], e["reason"], e["serial"], e["current_serial"]) for e in seen] == [
        ("victim", "device_bound_to_other_certificate", attacker.serial, own.serial)] * 2
    # the refused certificate is not bound anywhere: it can still serve a device of its own
    await store.create("attacker-laptop", actor="t")
    assert await attest(att, "attacker-laptop", attacker) is Verdict.MANAGED


async def test_a_renewal_replaces_the_certificate_it_renews(engine, env, ca):
    store, att = env
    await store.create("d1", actor="t")
    first = await issue(engine, ca)
    assert await attest(att, "d1", first) is Verdict.MANAGED
    second = await issue(engine, ca, renewal_of=first)
    # renewed twice before attesting again: the lineage is followed back to the bound certificate
    third = await issue(engine, ca, renewal_of=second)
    assert await attest(att, "d1", third) is Verdict.MANAGED
    assert (await bindings(engine))[first.serial] == ("d1", False, "retired", "superseded")
    assert (await bindings(engine))[third.serial] == ("d1", True, "active", None)
    assert await attest(att, "d1", first) is Verdict.CERTIFICATE_RETIRED
    # the skipped generation renews a certificate the device no longer holds: no evidence now
    assert await attest(att, "d1", second) is Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE
    # a renewal of a certificate bound to d1 never serves another device, even one with no certificate
    await store.create("d2", actor="t")
    fourth = await issue(engine, ca, renewal_of=third)
    assert await attest(att, "d2", fourth) is Verdict.CERTIFICATE_OF_OTHER_DEVICE
    assert await attest(att, "d2", second) is Verdict.CERTIFICATE_OF_OTHER_DEVICE
    assert fourth.serial not in await bindings(engine)


async def test_enrolled_device_id_is_evidence_for_its_device_only(engine, env, ca):
    store, att = env
    for d in ("d1", "d2", "d3"):
        await store.create(d, actor="t")
    bound = await issue(engine, ca)
    assert await attest(att, "d1", bound) is Verdict.MANAGED
    for_d2 = await issue(engine, ca, enrolled_device_id="d2")
    # enrolled for d2: never binds to d1 (which has a certificate) nor d3 (which has none)
    assert await attest(att, "d1", for_d2) is Verdict.CERTIFICATE_OF_OTHER_DEVICE
    assert await attest(att, "d3", for_d2) is Verdict.CERTIFICATE_OF_OTHER_DEVICE
    assert await bindings(engine) == {bound.serial: ("d1", True, "active", None)}
    # enrolled for d1: replaces d1's certificate
    for_d1 = await issue(engine, ca, enrolled_device_id="d1")
    assert await attest(att, "d1", for_d1) is Verdict.MANAGED
    assert (await bindings(engine))[bound.serial] == ("d1", False, "retired", "superseded")
    assert await attest(att, "d2", for_d2) is Verdict.MANAGED
    assert [e["reason"] for e in await refusals(engine)] == ["certificate_of_other_device"] * 2


async def test_after_remove_cert_the_next_certificate_binds(engine, env, ca):
    store, att = env
    await store.create("d1", actor="t")
    old = await issue(engine, ca)
    assert await attest(att, "d1", old) is Verdict.MANAGED
    new = await issue(engine, ca)
    assert await attest(att, "d1", new) is Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE
    await store.remove_certificate("d1", actor="admin")
    assert await attest(att, "d1", new) is Verdict.MANAGED
    assert await attest(att, "d1", old) is Verdict.CERTIFICATE_REVOKED


async def test_only_certificates_of_device_trust_profiles_attest(engine, env, ca):
    from scep_server.profiles import ProfileStore

    store, att = env
    await attesting_profile(engine, ca.name, "wifi", device_trust=False)
    await store.create("d1", actor="t")
    await store.create("d2", actor="t")
    wifi = await issue(engine, ca, profile="wifi")
    orphan = await issue(engine, ca, profile="no-such-profile")
    assert await attest(att, "d1", wifi) is Verdict.CERTIFICATE_NOT_ELIGIBLE
    assert await attest(att, "d2", orphan) is Verdict.CERTIFICATE_NOT_ELIGIBLE
    assert await bindings(engine) == {}
    # switched on: it attests (after the cached settings are re-read); switched off again: bound, but refused
    profiles = ProfileStore(engine)
    await profiles.update("wifi", now=NOW, settings=ProfileSettings(device_trust=True))
    await att.trust.reload()
    assert await attest(att, "d1", wifi) is Verdict.MANAGED
    await profiles.update("wifi", now=NOW, settings=ProfileSettings(device_trust=False))
    await att.trust.reload()
    assert await attest(att, "d1", wifi) is Verdict.CERTIFICATE_NOT_ELIGIBLE


async def test_unrelated_certificates_racing_for_one_device_on_two_instances(db_url, env, ca):
    """Twelve certificates without evidence race for one unbound device through two services on two engines
    (as two processes): one binds, the others are refused, nothing is retired."""
    store, _ = env
    engine_a, engine_b = create_engine(db_url), create_engine(db_url)
    try:
        services = [AttestationService(e, cas={ca.name: ca}, external=None, clock=SettableClock(START)) for e in (engine_a, engine_b)]
        await store.create("d1", actor="t")
        creds = [await issue(engine_a, ca) for _ in range(12)]
        results = await asyncio.gather(*(attest(services[i % 2], "d1", c) for i, c in enumerate(creds)))
        assert results.count(Verdict.MANAGED) == 1, results
        assert set(results) == {Verdict.MANAGED, Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE}
        winner = creds[results.index(Verdict.MANAGED)]
        assert await bindings(engine_a) == {winner.serial: ("d1", True, "active", None)}
    finally:
        await engine_a.dispose()
        await engine_b.dispose()


async def test_certificate_cache_is_bounded_in_bytes_and_holds_only_established_issuers(engine, env, ca):
    from tests.binding.test_attestation import _self_signed

    store, att = env
    await store.create("d1", actor="t")
    cred = await issue(engine, ca)
    assert await attest(att, "d1", cred) is Verdict.MANAGED
    assert list(att._cache) and att.cache_used > 0
    # self-signed certificates (any issuer name, ours included) never enter the cache
    before = dict(att._cache)
    for i in range(20):
        key = ec.generate_private_key(ec.SECP256R1())
        pem = _self_signed(key, f"CN=junk-{i}", issuer=ca.cert.subject if i % 2 else None)
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        nonce = (await att.challenge("d1"))["nonce"]
        res = await att.verify(device_id="d1", nonce=nonce, certificate=der, algorithm="ecdsa-sha256",
                               signature=base64.b64decode(sign(key, nonce, "d1", "ecdsa-sha256")))
        assert res.reason is Verdict.ISSUER_NOT_TRUSTED
    assert dict(att._cache) == before
    # the byte budget: room for two certificates of this size keeps the two most recent
    small = AttestationService(engine, cas={ca.name: ca}, external=None, clock=SettableClock(START),
                               cache_bytes=2 * att._cache[next(iter(att._cache))].cost + 10)
    creds = [await issue(engine, ca) for _ in range(4)]
    for i, c in enumerate(creds):
        await store.create(f"c{i}", actor="t")
        assert await attest(small, f"c{i}", c) is Verdict.MANAGED
        assert small.cache_used <= small._cache_bytes and len(small._cache) <= 2
    assert len(small._cache) == 2 and small.cache_used == sum(e.cost for e in small._cache.values())


async def test_default_profile_created_on_first_start_does_not_attest(aiohttp_server, tmp_path, scepclient):
    """The `default` static profile's shared secret proves nothing about a device: its certificates get
    `certificate_not_eligible`; a new profile attests by default."""
    from .conftest import Api, enrol, tokens
    from tests.server import start_app

    srv = await start_app(aiohttp_server, tmp_path)
    profile = await srv.runtime.profiles.get("default")
    assert profile.settings.device_trust is False
    assert ProfileSettings().device_trust is True
    dev = await enrol(scepclient, srv.url, srv.challenge(), tmp_path / "dev", "laptop-1")
    signin, admin = await tokens(srv.runtime)
    async with aiohttp.ClientSession() as session:
        api = Api(session, srv.url, signin, admin)
        await api.add_device("laptop-1")
        res = await api.attest("laptop-1", dev.cert_pem, dev.key)
    assert (res["managed"], res["reason"]) == (False, "certificate_not_eligible")


async def test_a_reactivation_releases_the_holds_of_its_deactivation_only(engine, env, ca):
    """An administrator held one certificate of an active device (a suspected key compromise); the device is then
    deactivated and reactivated (as an MDM does on an unenrol and a new enrolment): that hold stands, the one its
    deactivation placed on the other certificate is released; an unsuspension releases no hold."""
    from scep_server.ca import inventory
    from scep_server.ca.revocation import RevocationService

    store, att = env
    await store.create("d1", actor="t")
    held = await issue(engine, ca, enrolled_device_id="d1")
    other = await issue(engine, ca, enrolled_device_id="d1")
    revocation = RevocationService(engine, clock=store.clock)
    await revocation.hold(held.serial, actor="cli:root")
    store.clock.advance(60)

    async def status(cred):
        async with engine.connect() as conn:
            return (await inventory.get(conn, cred.serial)).status

    await store.transition("d1", "deactivate", actor="mdm:jamf")
    assert (await status(held), await status(other)) == ("hold", "hold")
    store.clock.advance(60)
    await store.transition("d1", "reactivate", actor="mdm:jamf")
    assert (await status(held), await status(other)) == ("hold", "valid")
    await store.transition("d1", "suspend", actor="cli:root")
    store.clock.advance(60)
    await revocation.hold(other.serial, actor="cli:root")
    store.clock.advance(60)
    await store.transition("d1", "unsuspend", actor="cli:root")
    assert (await status(held), await status(other)) == ("hold", "hold")


async def test_a_renewal_further_back_than_the_walk_goes_never_binds_elsewhere(engine, env, ca, monkeypatch):
    """A certificate renewed many times over without attesting: when the walk back to a bound certificate stops at
    its depth, the device it was issued for is not known, and the certificate binds to no other device."""
    from scep_server.binding import attestation

    monkeypatch.setattr(attestation, "_LINEAGE_DEPTH", 4)
    store, att = env
    await store.create("victim-a", actor="t")
    await store.create("fresh-b", actor="t")  # registered, never attested: no current certificate
    cur = first = await issue(engine, ca)
    assert await attest(att, "victim-a", first) is Verdict.MANAGED
    for _ in range(5):
        cur = await issue(engine, ca, renewal_of=cur)
    assert await attest(att, "fresh-b", cur) is Verdict.CERTIFICATE_OF_OTHER_DEVICE
    assert (await refusals(engine))[-1]["serial"] == cur.serial
    assert (await bindings(engine))[first.serial][0] == "victim-a"
    assert cur.serial not in await bindings(engine)


async def test_a_ca_added_at_run_time_attests_without_a_restart(engine, env, ca, tmp_path):
    """A CA rollover activated here, or picked up from another process, adds its CA to the runtime's CAs: the
    certificates it issues attest at once."""
    from scep_server.ca.authority import create_ca
    from tests.factories import PASSPHRASE

    store, _ = env
    cas = {ca.name: ca}
    att = AttestationService(engine, cas=cas, external=None, clock=SettableClock(START))
    old = await issue(engine, ca)
    await store.create("d-old", actor="t")
    assert await attest(att, "d-old", old) is Verdict.MANAGED  # the subjects of the CAs were read
    g2 = create_ca(tmp_path / "g2", name="default-g2", subject="CN=Test Device CA G2,O=Device Trust Tests",
                   ra_subject="CN=Test SCEP RA G2,O=Device Trust Tests", key_size=2048, validity_days=3650,
                   ra_validity_days=730, passphrase=PASSPHRASE, base_url="http://127.0.0.1:8080", now=NOW)
    await register_ca(engine, g2)
    await attesting_profile(engine, g2.name, "devices-g2")
    cas[g2.name] = g2  # what scep_server.ca.lifecycle.pick_up_cas does
    await store.create("d-g2", actor="t")
    assert await attest(att, "d-g2", await issue(engine, g2, profile="devices-g2")) is Verdict.MANAGED


async def test_a_certificate_revoked_while_its_first_attestation_is_judged_is_not_managed(engine, env, ca,
                                                                                         monkeypatch):
    """The day-91 rule revokes a never-used certificate and commits after its first attestation read it as valid,
    before that attestation records the first use: the answer is revoked, not managed."""
    from scep_server.ca.inventory import Reason
    from scep_server.ca.revocation import change_status
    from scep_server.ca.status import CertStatus

    store, att = env
    await store.create("d1", actor="t")
    cred = await issue(engine, ca)
    bind = att._bind

    async def bind_then_day91(conn, info, *args, **kwargs):
        won = await bind(conn, info, *args, **kwargs)
        await change_status(conn, cred.serial, CertStatus.REVOKED, at=NOW, actor="system:day-91",
                            reason=Reason.CESSATION_OF_OPERATION)  # what a concurrent commit leaves for the write
        return won
    monkeypatch.setattr(att, "_bind", bind_then_day91)
    assert await attest(att, "d1", cred) is Verdict.CERTIFICATE_REVOKED
    async with engine.connect() as conn:
        record = await inventory.get(conn, cred.serial)
    assert record.status == CertStatus.REVOKED and record.first_used_at is None
