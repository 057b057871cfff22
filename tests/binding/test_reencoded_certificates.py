"""A certificate is the same certificate in every encoding of it: an ECDSA signature is malleable (s and n - s
both verify), so anyone holding a certificate signed with ECDSA can re-encode it (same TBSCertificate, issuer,
serial and key, a valid signature of the CA, another SHA-256 of the DER). Such a copy is judged as the
certificate it copies (issuer and serial): bound to another device, retired, managed; on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from crl.build import Issuer, build_crl
from crl.check import CrlChecker
from crl.config import CheckerSettings, Policy
from crl.signing import CrlSigner
from scep_server.binding import attestation as attestation_module
from scep_server.binding.attestation import AttestationService, Verdict
from scep_server.binding.devices import DeviceStore
from scep_server.binding.external import ExternalCas
from scep_server.binding.tables import device_certs
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from scep_server.store.tables import certificates, events
from tests.crl import pki
from tests.factories import NOW as FACTORIES_NOW, csr, make_ca, record_issued, register_ca
from trustkit.clock import SettableClock

from .conftest import START, attesting_profile, sign

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
CDP = "http://127.0.0.1:9/malleable.crl"


def _tlv(buf: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of the contents, end of the contents) of the DER TLV at `i`."""
    first = buf[i + 1]
    if first < 0x80:
        return buf[i], i + 2, i + 2 + first
    k = first & 0x7F
    n = int.from_bytes(buf[i + 2:i + 2 + k], "big")
    return buf[i], i + 2 + k, i + 2 + k + n


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def reencode(der: bytes) -> bytes:
    """The certificate with its P-256 ECDSA signature's s replaced by n - s: still a valid signature."""
    tag, start, end = _tlv(der, 0)
    assert tag == 0x30 and end == len(der)
    _, _, tbs_end = _tlv(der, start)
    _, _, alg_end = _tlv(der, tbs_end)
    bit_tag, bits_start, bits_end = _tlv(der, alg_end)
    assert bit_tag == 0x03 and der[bits_start] == 0 and bits_end == end
    r, s = decode_dss_signature(der[bits_start + 1:bits_end])
    signature = encode_dss_signature(r, P256_ORDER - s)
    return _der(0x30, der[start:alg_end] + _der(0x03, b"\x00" + signature))


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


async def attest(att: AttestationService, device_id: str, key, der: bytes, *, nonce: str | None = None):
    nonce = nonce or (await att.challenge(device_id))["nonce"]
    sig = base64.b64decode(sign(key, nonce, device_id, "ecdsa-sha256"))
    result = await att.verify(device_id=device_id, nonce=nonce, certificate=der, signature=sig,
                              algorithm="ecdsa-sha256")
    return result, nonce


async def second_device_events(engine) -> list:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.subject, events.c.data).where(
            events.c.kind == "security.cert.second_device"))).all()
    return [(subject, json.loads(data)) for subject, data in rows]


async def bindings(engine) -> list:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(device_certs.c.fingerprint_sha256, device_certs.c.device_id,
                                             device_certs.c.state, device_certs.c.retired_reason)
                                   .order_by(device_certs.c.bound_at))).all()


# ---------------------------------------------------------------- a customer CA signing with P-256

@pytest.fixture
async def customer(engine):
    """A P-256 customer CA registered fail-closed with its CRL installed, a device certificate of it, its copy."""
    clock = SettableClock(pki.NOW + timedelta(minutes=5))
    ca = pki.make_ca("Malleable Customer CA", kind="ec", slot=11, cdp="http://127.0.0.1:9/root.crl")
    ext = ExternalCas(engine, CrlChecker(settings=CheckerSettings(), clock=clock))
    await ext.add("cust", ca.cert, policy=Policy.FAIL_CLOSED, actor="t", now=clock())
    await ext.reload()
    crl = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=1,
                    this_update=pki.NOW, next_update=pki.NOW + timedelta(days=7), entries=[])
    assert (await ext.checker.install("cust", CDP, crl)).ok
    der = pki.issue(ca, 0x5EED, cdp=CDP).public_bytes(serialization.Encoding.DER)
    copy = reencode(der)
    # a second encoding of one certificate, with a signature the CA's key verifies
    parsed = x509.load_der_x509_certificate(copy)
    assert fingerprint(copy) != fingerprint(der)
    assert parsed.tbs_certificate_bytes == x509.load_der_x509_certificate(der).tbs_certificate_bytes
    ca.cert.public_key().verify(parsed.signature, parsed.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    store = DeviceStore(engine, clock=clock)
    for device in ("dev-a", "dev-b"):
        await store.create(device, actor="t")
    att = AttestationService(engine, cas={}, external=ext, clock=clock)
    yield att, pki.key("ec", 9), der, copy
    await att.aclose()


@pytest.mark.parametrize("revoke", [False, True], ids=["record", "revoke_on_second_device"])
async def test_a_copy_of_a_bound_customer_certificate_is_bound_to_its_device(engine, customer, revoke):
    att, key, der, copy = customer
    att.revoke_on_second_device = revoke
    assert (await attest(att, "dev-a", key, der))[0].reason is Verdict.MANAGED

    result, nonce = await attest(att, "dev-b", key, copy)
    assert result.reason is Verdict.BOUND_TO_OTHER_DEVICE, result
    assert [(s, d["bound_to"], d["presented_by"], d["presented_fingerprint_sha256"])
            for s, d in await second_device_events(engine)] == [(fingerprint(der), "dev-a", "dev-b", fingerprint(copy))]
    # the nonce was spent: the same signed request again is a replay
    assert (await attest(att, "dev-b", key, copy, nonce=nonce))[0].reason is Verdict.NONCE_REUSED
    assert len(await second_device_events(engine)) == 1

    if revoke:  # the binding is retired, whichever encoding is presented next
        assert await bindings(engine) == [(fingerprint(der), "dev-a", "retired", "key_compromise")]
        assert (await attest(att, "dev-a", key, der))[0].reason is Verdict.CERTIFICATE_RETIRED
        assert (await attest(att, "dev-a", key, copy))[0].reason is Verdict.CERTIFICATE_RETIRED
    else:  # for its own device the copy is the certificate bound to it
        assert (await attest(att, "dev-a", key, copy))[0].reason is Verdict.MANAGED
        assert (await attest(att, "dev-a", key, der))[0].reason is Verdict.MANAGED
        assert await bindings(engine) == [(fingerprint(der), "dev-a", "active", None)]


async def test_a_copy_presented_first_binds_the_certificate_for_every_encoding(engine, customer):
    att, key, der, copy = customer
    assert (await attest(att, "dev-a", key, copy))[0].reason is Verdict.MANAGED
    assert (await attest(att, "dev-b", key, der))[0].reason is Verdict.BOUND_TO_OTHER_DEVICE
    assert (await attest(att, "dev-a", key, der))[0].reason is Verdict.MANAGED
    assert [(s, d["bound_to"]) for s, d in await second_device_events(engine)] == [(fingerprint(copy), "dev-a")]
    assert [(fp, device) for fp, device, _, _ in await bindings(engine)] == [(fingerprint(copy), "dev-a")]


async def test_replayed_copies_are_answered_without_retries(engine, customer):
    """A copy for another device is judged in its batch like any request: no failed batch, no single retries."""
    att, key, der, copy = customer
    assert (await attest(att, "dev-a", key, der))[0].managed
    singles = []
    single = att._single

    async def counting(job):
        singles.append(job)
        return await single(job)

    att._single = counting
    att._group = None  # the committer is made again with the counting fallback
    results = await asyncio.gather(*(attest(att, "dev-b", key, copy) for _ in range(20)),
                                   *(attest(att, "dev-a", key, der) for _ in range(20)))
    assert sorted(r.reason.value for r, _ in results) == ["bound_to_other_device"] * 20 + ["managed"] * 20
    assert singles == []
    assert len(await second_device_events(engine)) == 20


async def test_a_conflict_that_persists_spends_the_nonce(engine, customer, monkeypatch):
    """A bind that fails at every attempt answers `conflict` once: the nonce is spent, so a replay of the request
    is `nonce_reused` and costs no further attempts."""
    att, key, der, _ = customer
    attempts = []

    async def always_changed(conn, info, fp, device_id, *args):
        attempts.append(device_id)
        raise attestation_module._CurrentChanged(device_id)

    monkeypatch.setattr(att, "_bind", always_changed)
    result, nonce = await attest(att, "dev-a", key, der)
    assert result.reason is Verdict.CONFLICT, result
    tried = len(attempts)
    assert tried == 4  # the batch, then three attempts on its own
    assert (await attest(att, "dev-a", key, der, nonce=nonce))[0].reason is Verdict.NONCE_REUSED
    assert len(attempts) == tried
    assert await bindings(engine) == []


# ---------------------------------------------------------------- our own CA signing with P-256

@pytest.fixture(scope="module")
def ec_ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ec-ca"), name="ecca", key_type="ec-p256")


@pytest.fixture
async def ours(engine, ec_ca):
    await register_ca(engine, ec_ca)
    await attesting_profile(engine, ec_ca.name)
    clock = SettableClock(START)
    store = DeviceStore(engine, clock=clock)
    for device in ("dev-a", "dev-b"):
        await store.create(device, actor="t")
    att = AttestationService(engine, cas={ec_ca.name: ec_ca}, external=None, clock=clock)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ec_ca.issue(csr(key, "device"), IssuancePolicy(CertificateTemplate()), serial=0x7A11, now=FACTORIES_NOW)
    await record_issued(engine, ec_ca, cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    yield att, key, der, reencode(der)
    await att.aclose()


async def test_a_copy_of_one_of_our_certificates_is_that_certificate(engine, ours):
    att, key, der, copy = ours
    assert (await attest(att, "dev-a", key, der))[0].reason is Verdict.MANAGED
    result, nonce = await attest(att, "dev-b", key, copy)
    assert result.reason is Verdict.BOUND_TO_OTHER_DEVICE, result
    assert [(s, d["bound_to"], d["presented_fingerprint_sha256"]) for s, d in await second_device_events(engine)] \
        == [(fingerprint(der), "dev-a", fingerprint(copy))]
    assert (await attest(att, "dev-b", key, copy, nonce=nonce))[0].reason is Verdict.NONCE_REUSED
    assert (await attest(att, "dev-a", key, copy))[0].reason is Verdict.MANAGED


async def test_a_copy_of_our_certificate_presented_first_binds_the_issued_certificate(engine, ours):
    """Bound under the inventory's fingerprint (the DER this server issued), whichever encoding came first."""
    att, key, der, copy = ours
    assert (await attest(att, "dev-a", key, copy))[0].reason is Verdict.MANAGED
    assert [(fp, device) for fp, device, _, _ in await bindings(engine)] == [(fingerprint(der), "dev-a")]
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(certificates.c.first_used_at))).scalar() is not None
    assert (await attest(att, "dev-b", key, der))[0].reason is Verdict.BOUND_TO_OTHER_DEVICE
    assert (await attest(att, "dev-a", key, der))[0].reason is Verdict.MANAGED


async def test_our_signature_over_another_certificate_of_a_known_serial_is_not_that_certificate(engine, ours, ec_ca):
    """Our CA never signs two certificates with one serial: one that differs from the inventory's is unknown."""
    att, key, der, _ = ours
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = ec_ca.issue(csr(other_key, "other"), IssuancePolicy(CertificateTemplate()), serial=0x7A11,
                        now=FACTORIES_NOW).public_bytes(serialization.Encoding.DER)
    result, _ = await attest(att, "dev-a", other_key, other)
    assert result.reason is Verdict.CERTIFICATE_UNKNOWN, result
    assert await bindings(engine) == []
    assert (await attest(att, "dev-a", key, der))[0].reason is Verdict.MANAGED
    assert (await attest(att, "dev-a", other_key, other))[0].reason is Verdict.CERTIFICATE_UNKNOWN
