"""Management attestation through the HTTP API with real certificates issued by micromdm's scepclient.

Table-driven: every row of the lifecycle table (docs/crl-and-binding.md "Hold and revoke by lifecycle") and every
reason code the verify endpoint answers.
"""
from __future__ import annotations

import base64
import json

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from scep_server.binding.attestation import Verdict
from scep_server.binding.tables import device_certs
from scep_server.ca import inventory
from scep_server.ca.inventory import Reason
from scep_server.store.tables import events

from .conftest import enrol, sign

pytestmark = pytest.mark.interop

# device state -> (verdict, certificate status in our inventory)   (the seed's table)
LIFECYCLE = [
    ("active", [], Verdict.MANAGED, "valid"),
    ("suspended", ["suspend"], Verdict.DEVICE_SUSPENDED, "valid"),
    ("unsuspended", ["suspend", "unsuspend"], Verdict.MANAGED, "valid"),
    ("deactivated", ["deactivate"], Verdict.DEVICE_DEACTIVATED, "hold"),
    ("suspended-then-deactivated", ["suspend", "deactivate"], Verdict.DEVICE_DEACTIVATED, "hold"),
    ("reactivated", ["deactivate", "reactivate"], Verdict.MANAGED, "valid"),
    ("deleted", ["delete"], Verdict.DEVICE_DELETED, "revoked"),
    ("deactivated-then-deleted", ["deactivate", "delete"], Verdict.DEVICE_DELETED, "revoked"),
]


async def _cert_status(runtime, serial: str):
    async with runtime.engine.connect() as conn:
        return await inventory.get(conn, serial)


@pytest.mark.parametrize("row,actions,verdict,cert_status", LIFECYCLE, ids=[r[0] for r in LIFECYCLE])
async def test_lifecycle_row(server, api, scepclient, tmp_path, row, actions, verdict, cert_status):
    dev = await enrol(scepclient, server.url, server.challenge(), tmp_path / "dev", "laptop-1")
    await api.add_device("laptop-1")
    first = await api.attest("laptop-1", dev.cert_pem, dev.key)
    assert first["managed"] is True and first["reason"] == "managed", first
    record = await _cert_status(server.runtime, dev.serial)
    assert record.first_used_at is not None  # the day-91 rule reads this
    for action in actions:
        await api.action("laptop-1", action)
    res = await api.attest("laptop-1", dev.cert_pem, dev.key)
    assert res["reason"] == verdict.value, res
    assert res["managed"] is (verdict is Verdict.MANAGED)
    record = await _cert_status(server.runtime, dev.serial)
    assert record.status == cert_status
    if cert_status == "hold":
        assert record.revocation_reason == Reason.CERTIFICATE_HOLD
    if cert_status == "revoked":
        assert record.revocation_reason == Reason.CESSATION_OF_OPERATION
    shown = await api.get("/api/v1/devices/laptop-1")
    kinds = [h["kind"] for h in shown["history"]]
    assert kinds == ["device.create", "pki.cert.bind"] + [f"device.{a}" for a in actions]
    assert all(h["actor"] for h in shown["history"])
    assert [c["serial"] for c in shown["certificates"]] == [dev.serial]


async def test_deleted_device_certificate_never_accepted_again(server, api, scepclient, tmp_path):
    dev = await enrol(scepclient, server.url, server.challenge(), tmp_path / "dev", "laptop-1")
    await api.add_device("laptop-1")
    assert (await api.attest("laptop-1", dev.cert_pem, dev.key))["managed"]
    await api.action("laptop-1", "delete")
    # the same hardware registered again under a new id: the old certificate is refused for good
    await api.add_device("laptop-1b")
    res = await api.attest("laptop-1b", dev.cert_pem, dev.key)
    assert (res["managed"], res["reason"]) == (False, "certificate_revoked")
    # deleted is final, and the id is not reusable
    await api.action("laptop-1", "reactivate", expect=409)
    await api.post("/api/v1/devices", {"id": "laptop-1"}, admin=True, expect=409)
    # a new certificate for the hardware is accepted
    fresh = await enrol(scepclient, server.url, server.challenge(), tmp_path / "dev2", "laptop-1b")
    assert (await api.attest("laptop-1b", fresh.cert_pem, fresh.key))["managed"]


async def test_reason_codes(server, api, scepclient, tmp_path, clock):
    rt = server.runtime
    a = await enrol(scepclient, server.url, server.challenge(), tmp_path / "a", "dev-a")
    b = await enrol(scepclient, server.url, server.challenge(), tmp_path / "b", "dev-b")
    c = await enrol(scepclient, server.url, server.challenge(), tmp_path / "c", "dev-c")
    d = await enrol(scepclient, server.url, server.challenge(), tmp_path / "d", "dev-d")
    for name in ("dev-a", "dev-b", "dev-c", "dev-d", "dev-x"):
        await api.add_device(name)
    seen: dict[str, dict] = {}

    async def check(expected: Verdict, res: dict):
        assert res["reason"] == expected.value, res
        assert res["managed"] is (expected is Verdict.MANAGED)
        seen[expected.value] = res

    # managed; then every PKCS#1 v1.5 and PSS digest with the same key
    await check(Verdict.MANAGED, await api.attest("dev-a", a.cert_pem, a.key))
    for alg in ("rsa-pkcs1v15-sha384", "rsa-pss-sha256", "rsa-pss-sha512"):
        assert (await api.attest("dev-a", a.cert_pem, a.key, algorithm=alg))["managed"], alg
    # signature by another key, or over another device id
    nonce = await api.nonce("dev-a")
    await check(Verdict.SIGNATURE_INVALID, await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-a", "nonce": nonce, "certificate": a.cert_pem.decode(),
        "signature": sign(b.key, nonce, "dev-a")}))
    res = await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-a", "nonce": nonce, "certificate": a.cert_pem.decode(),
        "signature": sign(a.key, nonce, "dev-b")})
    assert res["reason"] == "signature_invalid"
    await check(Verdict.ALGORITHM_UNSUPPORTED, await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-a", "nonce": nonce, "certificate": a.cert_pem.decode(),
        "signature": sign(a.key, nonce, "dev-a"), "algorithm": "ecdsa-sha256"}))
    # nonces: unknown, issued for another device, reused, expired
    await check(Verdict.NONCE_UNKNOWN, await api.attest("dev-a", a.cert_pem, a.key, nonce="A" * 43))
    other = await api.nonce("dev-b")
    assert (await api.attest("dev-a", a.cert_pem, a.key, nonce=other))["reason"] == "nonce_unknown"
    once = await api.nonce("dev-a")
    assert (await api.attest("dev-a", a.cert_pem, a.key, nonce=once))["managed"]
    await check(Verdict.NONCE_REUSED, await api.attest("dev-a", a.cert_pem, a.key, nonce=once))
    late = await api.nonce("dev-a")
    clock.advance(seconds=rt.settings.binding.nonce_ttl_seconds + 1)
    await check(Verdict.NONCE_EXPIRED, await api.attest("dev-a", a.cert_pem, a.key, nonce=late))
    # unknown device
    await check(Verdict.DEVICE_UNKNOWN, await api.attest("dev-nobody", a.cert_pem, a.key))
    # a second device presents a bound certificate: refused and recorded
    await check(Verdict.BOUND_TO_OTHER_DEVICE, await api.attest("dev-x", a.cert_pem, a.key))
    async with rt.engine.connect() as conn:
        ev = (await conn.execute(sa.select(events).where(events.c.kind == "security.cert.second_device"))).all()
    assert len(ev) == 1 and ev[0].actor == "attestation"
    assert json.loads(ev[0].data)["bound_to"] == "dev-a" and json.loads(ev[0].data)["presented_by"] == "dev-x"
    # still managed for its own device
    assert (await api.attest("dev-a", a.cert_pem, a.key))["managed"]
    # revoked / on hold before first use
    await rt.revocation.revoke(b.serial, Reason.SUPERSEDED, actor="test")
    await check(Verdict.CERTIFICATE_REVOKED, await api.attest("dev-b", b.cert_pem, b.key))
    await rt.revocation.hold(c.serial, actor="test")
    await check(Verdict.CERTIFICATE_ON_HOLD, await api.attest("dev-c", c.cert_pem, c.key))
    await rt.revocation.release(c.serial, actor="test")
    assert (await api.attest("dev-c", c.cert_pem, c.key))["managed"]
    # one current certificate per device: another certificate without evidence that it is this device's
    # is refused, and the current one stays
    await check(Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE, await api.attest("dev-c", d.cert_pem, d.key))
    assert (await api.attest("dev-c", c.cert_pem, c.key))["managed"]
    # one enrolled for this device (named by a trusted source) supersedes it; the old one is retired for good
    from trustkit.db import writer
    from scep_server.store.tables import certificates

    async with writer(rt.engine).begin() as conn:
        await conn.execute(certificates.update().where(certificates.c.serial == d.serial)
                           .values(enrolled_device_id="dev-c"))
    assert (await api.attest("dev-c", d.cert_pem, d.key))["managed"]
    await check(Verdict.CERTIFICATE_RETIRED, await api.attest("dev-c", c.cert_pem, c.key))
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(sa.select(device_certs).where(device_certs.c.device_id == "dev-c"))).all()
    assert sorted((r.serial, r.current, r.state) for r in rows) == sorted(
        [(c.serial, False, "retired"), (d.serial, True, "active")])
    # removed from the directory: never accepted again (and revoked on our CRL)
    removed = await api.session.delete(server.url + "/api/v1/devices/dev-c/certificate", headers=api.admin)
    assert removed.status == 200
    assert (await api.attest("dev-c", d.cert_pem, d.key))["reason"] == "certificate_revoked"
    # expiry and not-yet-valid, judged on the server's clock
    e = await enrol(scepclient, server.url, server.challenge(), tmp_path / "e", "dev-e")
    await api.add_device("dev-e")
    clock.now = e.cert.not_valid_before_utc
    clock.advance(minutes=-1)
    await check(Verdict.CERTIFICATE_NOT_YET_VALID, await api.attest("dev-e", e.cert_pem, e.key))
    clock.now = e.cert.not_valid_after_utc
    await check(Verdict.CERTIFICATE_EXPIRED, await api.attest("dev-e", e.cert_pem, e.key))
    clock.now = e.cert.not_valid_before_utc
    clock.advance(hours=1)
    # a certificate our CA signed that is not in the inventory
    ca = rt.cas["default"]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy

    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ghost")])).sign(key, hashes.SHA256()))
    ghost = ca.issue(csr, IssuancePolicy(CertificateTemplate()), serial=0x1234567, now=clock.now)
    ghost_pem = ghost.public_bytes(serialization.Encoding.PEM)
    await check(Verdict.CERTIFICATE_UNKNOWN, await api.attest("dev-e", ghost_pem, key))
    # issuers nobody trusts: a self-signed ECDSA certificate, and one forging our CA's name
    eck = ec.generate_private_key(ec.SECP256R1())
    selfsigned = _self_signed(eck, "CN=stranger")
    await check(Verdict.ISSUER_NOT_TRUSTED, await api.attest("dev-e", selfsigned, eck, algorithm="ecdsa-sha256"))
    forged = _self_signed(eck, ca.cert.subject.rfc4514_string(), issuer=ca.cert.subject)
    assert (await api.attest("dev-e", forged, eck, algorithm="ecdsa-sha256"))["reason"] == "issuer_not_trusted"
    # unreadable input
    nonce = await api.nonce("dev-e")
    await check(Verdict.CERTIFICATE_MALFORMED, await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-e", "nonce": nonce, "certificate": base64.b64encode(b"\x30\x03\x02\x01\x01").decode(),
        "signature": "AAAA"}))
    for body in ({}, {"device_id": "dev-e"}, {"device_id": "../x", "nonce": nonce, "certificate": "x",
                                               "signature": "x"},
                 {"device_id": "dev-e", "nonce": nonce, "certificate": "%%%", "signature": "AAAA"},
                 {"device_id": "dev-e", "nonce": nonce, "certificate": e.cert_pem.decode(), "signature": "!!"}):
        res = await api.post("/api/v1/attestation/verify", body, expect=400)
        await check(Verdict.BAD_REQUEST, res)
    async with api.session.post(server.url + "/api/v1/attestation/verify", data=b"not json",
                                headers=api.signin) as resp:
        assert resp.status == 400 and (await resp.json())["reason"] == "bad_request"
    # the external-CA reasons are covered in test_external.py
    external_only = {Verdict.CRL_UNAVAILABLE, Verdict.CERTIFICATE_NO_CDP, Verdict.CONFLICT}
    covered_elsewhere = {Verdict.DEVICE_SUSPENDED, Verdict.DEVICE_DEACTIVATED, Verdict.DEVICE_DELETED,
                         Verdict.CERTIFICATE_NOT_ELIGIBLE, Verdict.CERTIFICATE_OF_OTHER_DEVICE}  # test_takeover.py
    assert set(seen) == {v.value for v in Verdict} - {v.value for v in external_only | covered_elsewhere}


def _self_signed(key, subject: str, issuer: x509.Name | None = None) -> bytes:
    from datetime import datetime, timedelta, timezone

    name = x509.Name.from_rfc4514_string(subject)
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


async def test_tokens_and_scopes(server, api):
    async with api.session.post(server.url + "/api/v1/attestation/challenge", json={"device_id": "x"}) as resp:
        assert resp.status == 401
    async with api.session.post(server.url + "/api/v1/attestation/challenge", json={"device_id": "x"},
                                headers=api.admin) as resp:
        assert resp.status == 403
    async with api.session.post(server.url + "/api/v1/devices", json={"id": "x"}, headers=api.signin) as resp:
        assert resp.status == 403
    ch = await api.post("/api/v1/attestation/challenge", {"device_id": "x"})
    assert len(base64.urlsafe_b64decode(ch["nonce"] + "=")) * 8 >= 128
    assert ch["expires_in"] == server.settings.binding.nonce_ttl_seconds


def _der_with_key(public_key, signer) -> bytes:
    from datetime import datetime, timedelta, timezone

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")])
    now = datetime.now(timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public_key).serial_number(5)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


@pytest.mark.parametrize("kind", ["unknown key algorithm", "unknown named curve"])
async def test_a_certificate_whose_key_cannot_be_loaded_is_malformed_not_a_500(server, api, kind):
    eck = ec.generate_private_key(ec.SECP256R1())
    der = _der_with_key(eck.public_key(), eck)
    if kind == "unknown key algorithm":  # id-ecPublicKey 1.2.840.10045.2.1 -> .2.7
        der = der.replace(bytes.fromhex("06072a8648ce3d0201"), bytes.fromhex("06072a8648ce3d0207"))
    else:  # prime256v1 1.2.840.10045.3.1.7 -> .3.1.9
        der = der.replace(bytes.fromhex("06082a8648ce3d030107"), bytes.fromhex("06082a8648ce3d030109"))
    await api.add_device("dev-h")
    nonce = await api.nonce("dev-h")
    res = await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-h", "nonce": nonce, "certificate": base64.b64encode(der).decode(),
        "signature": base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()})
    assert res["reason"] == Verdict.CERTIFICATE_MALFORMED.value and not res["managed"], res


@pytest.mark.parametrize("kind", ["an unknown X.509 version", "a BIT STRING commonName"])
async def test_a_certificate_with_an_unreadable_version_or_name_is_malformed_not_a_500(server, api, kind):
    eck = ec.generate_private_key(ec.SECP256R1())
    der = _der_with_key(eck.public_key(), eck)
    if kind == "an unknown X.509 version":  # [0] INTEGER 2 (v3) -> 43
        der = der.replace(bytes.fromhex("a003020102"), bytes.fromhex("a00302012b"), 1)
    else:  # UTF8String "hostile" -> a BIT STRING of the same length
        der = der.replace(bytes.fromhex("0c07") + b"hostile", bytes.fromhex("030700") + b"ostile")
    await api.add_device("dev-h")
    nonce = await api.nonce("dev-h")
    res = await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-h", "nonce": nonce, "certificate": base64.b64encode(der).decode(),
        "signature": sign(eck, nonce, "dev-h", "ecdsa-sha256"), "algorithm": "ecdsa-sha256"})
    assert res["reason"] == Verdict.CERTIFICATE_MALFORMED.value and not res["managed"], res


async def test_an_x400_address_in_the_crl_distribution_points_is_refused_not_a_500(server, api, clock):
    """A certificate naming a registered customer CA as its issuer is read (its CDP) before its signature is
    checked: a general name the library does not read (x400Address) makes it an untrusted issuer's."""
    from datetime import timedelta

    from crl.config import Policy
    from cryptography.x509.oid import ExtensionOID
    from tests.crl.pki import NOW, make_ca

    clock.now = NOW + timedelta(minutes=5)
    ca = make_ca("X400 Customer CA", kind="ec", slot=5, cdp="http://127.0.0.1:9/root.crl")
    ext = server.runtime.binding.external
    await ext.add("x400", ca.cert, policy=Policy.FAIL_CLOSED, actor="test", now=clock())
    await ext.reload()
    attacker = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
            .issuer_name(ca.cert.subject).public_key(attacker.public_key()).serial_number(0x400)
            .not_valid_before(NOW - timedelta(hours=1)).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.UnrecognizedExtension(ExtensionOID.CRL_DISTRIBUTION_POINTS,
                                                      bytes.fromhex("30083006a004a002a300")), critical=False)
            .sign(attacker, hashes.SHA256()))
    await api.add_device("dev-x")
    nonce = await api.nonce("dev-x")
    res = await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-x", "nonce": nonce, "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "signature": sign(attacker, nonce, "dev-x", "ecdsa-sha256"), "algorithm": "ecdsa-sha256"})
    assert res["reason"] in (Verdict.CERTIFICATE_MALFORMED.value, Verdict.ISSUER_NOT_TRUSTED.value), res
    assert not res["managed"]


@pytest.mark.parametrize("algorithm", ["rsa-pss-sha512", "rsa-pss-sha384"])
async def test_a_key_too_small_for_the_digest_is_a_bad_signature_not_a_500(server, api, algorithm):
    """A 512-bit modulus (it need not even be a real one) cannot carry a SHA-512 PSS or PKCS#1 signature:
    cryptography raises ValueError, not InvalidSignature."""
    small = rsa.RSAPublicNumbers(65537, (1 << 511) | 0x12345).public_key()
    der = _der_with_key(small, ec.generate_private_key(ec.SECP256R1()))
    await api.add_device("dev-s")
    nonce = await api.nonce("dev-s")
    res = await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-s", "nonce": nonce, "certificate": base64.b64encode(der).decode(),
        "signature": base64.b64encode(b"\x01" * 64).decode(), "algorithm": algorithm})
    assert res["reason"] == Verdict.SIGNATURE_INVALID.value and not res["managed"], res


@pytest.mark.parametrize("what", ["an exponent as large as the modulus", "a modulus beyond 16384 bits"])
async def test_an_rsa_key_whose_verification_costs_far_more_is_not_verified(server, api, what):
    """A verification is an exponentiation by the public exponent: a self-signed certificate with e close to n
    would make each request (no nonce needed) cost a hundred normal ones. Refused before any arithmetic."""
    n = rsa.generate_private_key(65537, 2048).public_key().public_numbers().n
    if what.startswith("an exponent"):
        key = rsa.RSAPublicNumbers(n - 2, n).public_key()
    else:
        key = rsa.RSAPublicNumbers(65537, (n << 14400) | 1).public_key()
    der = _der_with_key(key, ec.generate_private_key(ec.SECP256R1()))
    await api.add_device("dev-e")
    res = await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-e", "nonce": await api.nonce("dev-e"), "certificate": base64.b64encode(der).decode(),
        "signature": base64.b64encode(b"\x01" * (key.key_size // 8)).decode(), "algorithm": "rsa-pkcs1v15-sha256"})
    assert res["reason"] == Verdict.ALGORITHM_UNSUPPORTED.value and not res["managed"], res


async def test_a_first_use_after_the_day_91_window_is_refused_and_revokes(server, api, scepclient, tmp_path, clock):
    """The day-91 rule holds at the first attestation itself: a certificate never used within `unused_days` of
    issue is not used for the first time later, whether or not the hourly job has revoked it yet."""
    late = await enrol(scepclient, server.url, server.challenge(), tmp_path / "late", "dev-late")
    used = await enrol(scepclient, server.url, server.challenge(), tmp_path / "used", "dev-used")
    for name in ("dev-late", "dev-used"):
        await api.add_device(name)
    clock.advance(days=10)
    assert (await api.attest("dev-used", used.cert_pem, used.key))["managed"]
    clock.advance(days=80, minutes=1)  # 90 days and a minute after issue; the job has not run since
    assert (await _cert_status(server.runtime, late.serial)).status == "valid"
    res = await api.attest("dev-late", late.cert_pem, late.key)
    assert res["managed"] is False and res["reason"] == "certificate_revoked", res
    assert "never used within 90 days" in res["detail"], res
    record = await _cert_status(server.runtime, late.serial)
    assert record.status == "revoked" and record.first_used_at is None
    assert record.revocation_reason == Reason.CESSATION_OF_OPERATION
    # not bound, revoked once, by the rule
    async with server.runtime.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(device_certs).where(
            device_certs.c.serial == late.serial))).scalar() == 0
        revokes = (await conn.execute(sa.select(events.c.actor).where(
            events.c.kind == "pki.cert.revoke", events.c.subject == late.serial))).scalars().all()
    assert revokes == ["system:day-91"]
    assert (await api.attest("dev-late", late.cert_pem, late.key))["reason"] == "certificate_revoked"
    # a certificate used within the window stays managed
    assert (await api.attest("dev-used", used.cert_pem, used.key))["managed"]
    assert await server.runtime.revocation.revoke_unused(unused_days=90) == []
