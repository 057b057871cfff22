"""The decryption stage of the SCEP service has one answer: no padding, format or key-transport oracle.

A captured request's envelope, altered (IV, last ciphertext block, encrypted key) and re-wrapped in a SignedData
signed by the attacker's own self-signed key, must get the same CertRep FAILURE whatever the alteration did to
the plaintext; single DES is refused from the envelope's algorithm, before any decryption; a profile may require
the signer's key to be the CSR's key, and a key enrolled again under another signer is a security event.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import timedelta

import pytest
import sqlalchemy as sa
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scep_server.ca import inventory
from scep_server.ca.authority import CertificateAuthority, issue_ra_cert
from scep_server.ca.keys import FileKey
from scep_server.enrolment import ScepService
from scep_server.profiles import ProfileSettings, ProfileStore
from scep_server.scep import (ContentCipher, Digest, FailInfo, MessageType, PKIStatus, SCEPFailure, algorithms, client,
                              cms, oids, open_request, parse_pki_message)
from trustkit import der
from trustkit.db import writer
from scep_server.store.tables import events, profiles
from tests.factories import NOW, make_ca

from .capture_server import FIXTURES

SECRET = "s3cret-challenge"
ONE_ANSWER = (PKIStatus.FAILURE, FailInfo.BAD_MESSAGE_CHECK, "cannot decrypt the pkcsPKIEnvelope")
ALTERED = 2000  # envelopes per message type


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertificateAuthority:
    """The test CA with a 1024-bit RA key: the RA's two private-key operations per request stay cheap."""
    full = make_ca(tmp_path_factory.mktemp("ca"))
    ra_key = FileKey(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    ra_cert = issue_ra_cert(full.cert, full.key, ra_key.public_key(), subject="CN=Quick RA,O=Device Trust Tests",
                            validity_days=30, base_url=full.base_url, ca_name=full.name, now=NOW)
    return CertificateAuthority(name=full.name, cert=full.cert, key=full.key, ra_cert=ra_cert, ra_key=ra_key,
                                base_url=full.base_url)


@pytest.fixture(scope="module")
def device_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def attacker():
    """The attacker's own cheap signing key and self-signed certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key, client.make_self_signed_signer(key, cn="someone else")


@dataclass
class Scep:
    service: ScepService
    ca: CertificateAuthority
    engine: object

    async def send(self, body: bytes, key, profile: str = "p"):
        reply = await self.service.pki_operation(profile, body)
        rep = client.parse_cert_rep(reply, key, ra_cert_der=self.ca.ra_cert_der)
        return rep


async def _service(engine, ca, **settings) -> Scep:
    async with writer(engine).begin() as conn:
        await inventory.register_ca(conn, ca, NOW)
    store = ProfileStore(engine)
    await store.create("p", ca=ca.name, challenge_kind="static", static_secret=SECRET, now=NOW,
                       settings=ProfileSettings(**settings))
    return Scep(ScepService(engine=engine, cas={ca.name: ca}, profiles=store, clock=lambda: NOW + timedelta(hours=1)),
                ca, engine)


@pytest.fixture
async def scep(engine, ca) -> Scep:
    return await _service(engine, ca)


def _request(ca, key, message_type, content, *, signer=None, transaction_id="captured-1", cipher=None) -> bytes:
    cipher = cipher or ContentCipher.AES128_CBC
    signer_key, signer_der = signer or (key, client.make_self_signed_signer(key))
    return client.build_request(
        message_type, content=content, signer_cert_der=signer_der, signer_key=signer_key,
        recipient_cert_der=ca.ra_cert_der, transaction_id=transaction_id, sender_nonce=random.randbytes(16),
        cek=random.randbytes(cipher.key_size), iv=random.randbytes(cipher.block_size), cipher=cipher)


def _rewrap(envelope: bytes, attacker, message_type: MessageType, transaction_id: str, nonce: bytes) -> bytes:
    """The envelope in a SignedData signed by the attacker's key, as a fresh request of its own."""
    key, cert_der = attacker
    attrs = [cms.attribute(oids.MESSAGE_TYPE_DER, der.printable(str(int(message_type)))),
             cms.attribute(oids.TRANSACTION_ID_DER, der.printable(transaction_id)),
             cms.attribute(oids.SENDER_NONCE_DER, der.octet_string(nonce))]
    return cms.build_signed_data(econtent=envelope, signer_cert_der=cert_der, sign=client.rsa_signer(key),
                                 digest=Digest.SHA256, extra_attrs=attrs)


def _alterations(envelope: bytes, n: int, seed: int):
    """``n`` copies of the envelope with its IV or last ciphertext block altered the ways a padding oracle
    attack does: one byte XORed (every position, every value), the block replaced by random bytes, and the
    ciphertext cut after one block under an altered IV (the attack on the first block)."""
    env = cms.parse_enveloped_data(envelope)
    bs, iv, ct = env.cipher.block_size, env.iv, env.ciphertext
    iv_at, ct_at = envelope.find(iv), envelope.rfind(ct)
    assert iv_at > 0 and ct_at > iv_at and len(ct) >= 2 * bs
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 5
        new_iv, new_ct = bytearray(iv), bytearray(ct)
        if kind == 0:      # one IV byte XORed
            new_iv[rng.randrange(bs)] ^= rng.randrange(1, 256)
        elif kind == 1:    # a random IV
            new_iv = bytearray(rng.randbytes(bs))
        elif kind == 2:    # one byte of the block before the last XORed: the last block's padding probe
            new_ct[-2 * bs + rng.randrange(bs)] ^= rng.randrange(1, 256)
        elif kind == 3:    # one byte of the last block XORed
            new_ct[-bs + rng.randrange(bs)] ^= rng.randrange(1, 256)
        else:              # a random last block
            new_ct[-bs:] = rng.randbytes(bs)
        if kind == 0 and i % 2:  # the first block alone under the altered IV
            new_ct = new_ct[:bs]
            out.append(_replace_ciphertext(envelope, env, bytes(new_iv), bytes(new_ct)))
            continue
        out.append(envelope[:iv_at] + bytes(new_iv) + envelope[iv_at + bs:ct_at] + bytes(new_ct)
                   + envelope[ct_at + len(ct):])
    return out


def _replace_ciphertext(envelope: bytes, env, iv: bytes, ct: bytes) -> bytes:
    """The envelope re-encoded with another IV and ciphertext (their lengths may change)."""
    ci = der.read_one(envelope)
    kids = der.children(envelope, der.children(envelope, der.children(envelope, ci)[1])[0])
    eci = der.seq(oids.DATA_DER, algorithms.content_cipher_alg_der(env.cipher, iv), der.tlv(0x80, ct))
    return cms.content_info(oids.ENVELOPED_DATA_DER, der.seq(*[der.raw(envelope, k) for k in kids[:-1]], eci))


def _contents(ca, device_key) -> dict[MessageType, bytes]:
    csr = client.make_csr(device_key, "device-1", SECRET)
    subject = x509.load_der_x509_csr(csr).subject
    return {
        MessageType.PKCS_REQ: csr,
        MessageType.CERT_POLL: client.issuer_and_subject(ca.cert.subject, subject),
        MessageType.GET_CERT: client.issuer_and_serial(ca.cert.subject, 0x1F2E3D4C5B6A798800112233445566),
        MessageType.GET_CRL: client.issuer_and_serial(ca.cert.subject, 0x1F2E3D4C5B6A798800112233445566),
    }


@pytest.mark.parametrize("message_type", [MessageType.PKCS_REQ, MessageType.CERT_POLL, MessageType.GET_CERT,
                                          MessageType.GET_CRL], ids=lambda t: t.name)
async def test_altered_envelopes_of_a_captured_request_get_one_answer(scep, ca, device_key, attacker, message_type,
                                                                    monkeypatch):
    content = _contents(ca, device_key)[message_type]
    captured = _request(ca, device_key, message_type, content)
    envelope = parse_pki_message(captured).envelope

    # the unaltered envelope decrypts: its answer is the message's own (the baseline is not the uniform one)
    baseline = await scep.send(_rewrap(envelope, attacker, message_type, "baseline", b"b" * 16), attacker[0])
    assert (baseline.status, baseline.fail_info, baseline.fail_text) != ONE_ANSWER

    # every lookup the service makes for a request, counted: none may happen before the content parsed
    lookups = []
    store = scep.service.repository
    for obj, name in ((store, "find"), (store, "find_sync"), (store, "lookup_sync"), (inventory, "get"),
                      (inventory, "get_by_fingerprint")):
        real = getattr(obj, name, None)
        if real is None:  # find_sync, lookup_sync: SQLite only
            continue
        monkeypatch.setattr(obj, name, lambda *a, _real=real, _name=name, **k: lookups.append(_name) or _real(*a, **k))

    answers: dict[tuple, int] = {}
    for i, altered in enumerate(_alterations(envelope, ALTERED, seed=int(message_type))):
        rep = await scep.send(_rewrap(altered, attacker, message_type, f"probe-{i}", i.to_bytes(16, "big")),
                              attacker[0])
        key = (rep.status, rep.fail_info, rep.fail_text)
        answers[key] = answers.get(key, 0) + 1
    assert answers == {ONE_ANSWER: ALTERED}
    assert lookups == []
    async with scep.engine.connect() as conn:  # nothing was recorded for any of them
        assert (await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar() == (
            1 if message_type is MessageType.PKCS_REQ else 0)  # the baseline PKCSReq's issue event


def _with_encrypted_key(envelope: bytes, new_key: bytes) -> bytes:
    env = cms.parse_enveloped_data(envelope)
    old = env.recipients[0].encrypted_key
    at = envelope.find(old)
    assert len(new_key) == len(old)
    return envelope[:at] + new_key + envelope[at + len(old):]


async def test_key_transport_faults_read_like_padding_faults(scep, ca, device_key, attacker):
    """RSA PKCS#1 v1.5 key transport: a random or altered encryptedKey is not told apart (implicit rejection)."""
    envelope = parse_pki_message(_request(ca, device_key, MessageType.PKCS_REQ,
                                          _contents(ca, device_key)[MessageType.PKCS_REQ])).envelope
    old = cms.parse_enveloped_data(envelope).recipients[0].encrypted_key
    rng = random.Random(5)
    variants = [_with_encrypted_key(envelope, rng.randbytes(len(old))) for _ in range(20)]
    for i in range(20):
        flipped = bytearray(old)
        flipped[rng.randrange(len(old))] ^= 1 << rng.randrange(8)
        variants.append(_with_encrypted_key(envelope, bytes(flipped)))
    variants.append(_with_encrypted_key(envelope, b"\xff" * len(old)))  # >= the modulus: RSA itself refuses it
    answers = set()
    for i, v in enumerate(variants):
        rep = await scep.send(_rewrap(v, attacker, MessageType.PKCS_REQ, f"k-{i}", i.to_bytes(16, "big")), attacker[0])
        answers.add((rep.status, rep.fail_info, rep.fail_text))
    assert answers == {ONE_ANSWER}


def test_every_decryption_stage_fault_is_one_failure(ca, device_key):
    """At the codec: a CEK function that raises, returns a wrong-sized key or a wrong key, bad padding, content
    that is not the message type's: one failInfo and one text, whatever the cause."""
    content = _contents(ca, device_key)
    msg = parse_pki_message(_request(ca, device_key, MessageType.PKCS_REQ, content[MessageType.PKCS_REQ]))

    def real(ek, scheme):
        return ca.ra_key.decrypt(ek, scheme)

    def raises(ek, scheme):
        raise ValueError("Decryption failed")

    good = open_request(msg, real, recipient_cert_der=ca.ra_cert_der)
    assert good.csr is not None and good.der == content[MessageType.PKCS_REQ]
    faults = []
    for cek in (raises, lambda ek, s: b"\x00" * 5, lambda ek, s: b"\x00" * 16, lambda ek, s: None):
        with pytest.raises(SCEPFailure) as ei:
            open_request(msg, cek, recipient_cert_der=ca.ra_cert_der)
        faults.append(ei.value)
    # the right key, the wrong content for the message type (an IssuerAndSerialNumber in a PKCSReq)
    wrong = parse_pki_message(_request(ca, device_key, MessageType.PKCS_REQ, content[MessageType.GET_CERT]))
    # a CSR whose signature does not verify (no proof of possession)
    csr = bytearray(content[MessageType.PKCS_REQ])
    csr[-1] ^= 1
    unsigned = parse_pki_message(_request(ca, device_key, MessageType.PKCS_REQ, bytes(csr)))
    # a CertPoll naming another issuer
    other = parse_pki_message(_request(ca, device_key, MessageType.CERT_POLL, client.issuer_and_subject(
        x509.Name.from_rfc4514_string("CN=Another CA"), x509.Name.from_rfc4514_string("CN=device-1"))))
    for m in (wrong, unsigned, other):
        with pytest.raises(SCEPFailure) as ei:
            open_request(m, real, recipient_cert_der=ca.ra_cert_der, issuer=ca.cert.subject)
        faults.append(ei.value)
    assert {(f.fail_info, f.text) for f in faults} == {ONE_ANSWER[1:]}
    assert all(f.message is not None for f in faults)


# ---------------------------------------------------------------- single DES

def test_single_des_is_refused_from_the_algorithm_before_decrypting(ca, device_key):
    msg = parse_pki_message(_request(ca, device_key, MessageType.PKCS_REQ, client.make_csr(device_key, "d", SECRET),
                                     cipher=ContentCipher.DES_CBC))
    calls = []

    def cek(ek, scheme):
        calls.append(scheme)
        return ca.ra_key.decrypt(ek, scheme)

    with pytest.raises(SCEPFailure) as ei:
        open_request(msg, cek, recipient_cert_der=ca.ra_cert_der, allow_single_des=False)
    assert ei.value.fail_info is FailInfo.BAD_ALG and "single DES" in ei.value.text
    assert calls == []  # the RA key was not used
    assert open_request(msg, cek, recipient_cert_der=ca.ra_cert_der, allow_single_des=True).cipher \
        is ContentCipher.DES_CBC


async def test_new_profiles_refuse_single_des_and_a_profile_may_allow_it(scep, engine, ca, device_key):
    assert ProfileSettings().allow_single_des is False
    des = _request(ca, device_key, MessageType.PKCS_REQ, client.make_csr(device_key, "d", SECRET),
                   cipher=ContentCipher.DES_CBC, transaction_id="des-1")
    rep = await scep.send(des, device_key)
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_ALG and "single DES" in rep.fail_text

    store = scep.service.profiles
    p = await store.get("p")
    await store.update("p", now=NOW, settings=p.settings.model_copy(update={"allow_single_des": True}))
    with structlog.testing.capture_logs() as logs:
        rep = await scep.send(des, device_key)
    assert rep.status is PKIStatus.SUCCESS and rep.cipher is ContentCipher.AES128_CBC  # never DES in a reply
    assert [e for e in logs if e["event"] == "scep.single_des"][0]["transaction_id"] == "des-1"


async def test_profiles_stored_before_single_des_defaulted_off_keep_it(engine, ca):
    async with writer(engine).begin() as conn:
        await inventory.register_ca(conn, ca, NOW)
        stored = json.loads(ProfileSettings().model_dump_json())
        del stored["allow_single_des"], stored["require_signer_csr_key"]
        await conn.execute(profiles.insert().values(
            name="legacy", ca=ca.name, challenge_kind="static", static_secret_sha256=None,
            settings=json.dumps(stored), created_at=NOW, updated_at=NOW))
        off = json.loads(ProfileSettings().model_dump_json())
        await conn.execute(profiles.insert().values(
            name="explicit", ca=ca.name, challenge_kind="static", static_secret_sha256=None,
            settings=json.dumps(off), created_at=NOW, updated_at=NOW))
    store = ProfileStore(engine)
    assert (await store.get("legacy")).settings.allow_single_des is True
    assert (await store.get("explicit")).settings.allow_single_des is False
    created = await store.create("new", ca=ca.name, challenge_kind="static", static_secret="x", now=NOW)
    assert created.settings.allow_single_des is False
    assert (await ProfileStore(engine).get("new")).settings.allow_single_des is False


# ---------------------------------------------------------------- the signer's key

async def _security_events(engine) -> list[dict]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events).where(events.c.kind.like("security.%")))).all()
    return [dict(r._mapping) for r in rows]


FOREIGN_REFUSAL = ("this key is enrolled at this profile already: its requests must be signed by the key itself (or, "
                   "to renew, by its certificate)")


async def test_a_rewrapped_captured_pkcsreq_is_refused_and_a_security_event(scep, engine, ca, device_key, attacker):
    csr = client.make_csr(device_key, "device-1", SECRET)
    captured = _request(ca, device_key, MessageType.PKCS_REQ, csr, transaction_id="original")
    first = await scep.send(captured, device_key)
    assert first.status is PKIStatus.SUCCESS
    # the device enrols its key again itself (new transaction): its own key signs, no event
    again = await scep.send(_request(ca, device_key, MessageType.PKCS_REQ, csr, transaction_id="again"), device_key)
    assert again.status is PKIStatus.SUCCESS
    assert await _security_events(engine) == []

    envelope = parse_pki_message(captured).envelope
    rep = await scep.send(_rewrap(envelope, attacker, MessageType.PKCS_REQ, "replayed", b"r" * 16), attacker[0])
    assert (rep.status, rep.fail_info, rep.fail_text, rep.certs) == (PKIStatus.FAILURE, FailInfo.BAD_REQUEST,
                                                                     FOREIGN_REFUSAL, [])
    found = await _security_events(engine)
    assert [e["kind"] for e in found] == ["security.scep.foreign_signer"]
    data = json.loads(found[0]["data"])
    assert found[0]["subject"] == "replayed" and data["profile"] == "p"
    assert data["signer_fingerprint_sha256"] == hashes_hex(attacker[1])
    issued = {inventory.serial_hex(x509.load_der_x509_certificate(r.certs[0]).serial_number) for r in (first, again)}
    assert set(data["valid_certificates"]) == issued


async def _certificates_of(engine, key) -> dict[str, str]:
    from scep_server.store.tables import certificates

    digest = inventory.public_key_sha256(key.public_key())
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(certificates.c.serial, certificates.c.status)
                                   .where(certificates.c.public_key_sha256 == digest))).all()
    return {r.serial: r.status for r in rows}


@pytest.mark.parametrize("status", ["valid", "hold", "revoked"])
async def test_a_captured_envelope_is_no_bearer_token_for_new_transactions(scep, engine, ca, device_key, attacker,
                                                                          status):
    """A captured PKCSReq (the static challenge inside) signed again by someone else under transactionIDs of their
    own: no certificate for the device's key, however often, and none after its certificate was put on hold or
    revoked (the key's holder would otherwise undo the decision with a request it kept)."""
    from scep_server.store.tables import certificates

    captured = _request(ca, device_key, MessageType.PKCS_REQ, client.make_csr(device_key, "victim", SECRET),
                        transaction_id="victim-tx")
    assert (await scep.send(captured, device_key)).status is PKIStatus.SUCCESS
    (serial,) = await _certificates_of(engine, device_key)
    if status != "valid":
        async with writer(engine).begin() as conn:
            await conn.execute(certificates.update().where(certificates.c.serial == serial).values(status=status))
    envelope = parse_pki_message(captured).envelope
    for i in range(3):
        rep = await scep.send(_rewrap(envelope, attacker, MessageType.PKCS_REQ, f"theirs-{i}", bytes([i]) * 16),
                              attacker[0])
        assert (rep.status, rep.fail_text, rep.certs) == (PKIStatus.FAILURE, FOREIGN_REFUSAL, [])
    assert await _certificates_of(engine, device_key) == {serial: status}
    assert len(await _security_events(engine)) == 3


async def test_a_captured_pending_enrolment_is_not_copied_under_other_transactions(engine, ca, device_key, attacker):
    """On a profile that requires approval, copies of the device's pending enrolment would look like it to the
    approver (approving one sends the certificate to the attacker's poll): none is made."""
    from scep_server.store.tables import scep_transactions

    scep = await _service(engine, ca, require_approval=True)
    captured = _request(ca, device_key, MessageType.PKCS_REQ, client.make_csr(device_key, "victim", SECRET),
                        transaction_id="victim-tx")
    assert (await scep.send(captured, device_key)).status is PKIStatus.PENDING
    envelope = parse_pki_message(captured).envelope
    rep = await scep.send(_rewrap(envelope, attacker, MessageType.PKCS_REQ, "theirs", b"t" * 16), attacker[0])
    assert (rep.status, rep.fail_text) == (PKIStatus.FAILURE, FOREIGN_REFUSAL)
    async with engine.connect() as conn:
        txids = (await conn.execute(sa.select(scep_transactions.c.transaction_id))).scalars().all()
    assert txids == ["victim-tx"]


async def test_a_request_signed_by_another_key_enrols_a_key_the_profile_never_saw(scep, engine, ca, attacker):
    """``require_signer_csr_key`` off (the default): a client may sign its first request with another key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = _request(ca, key, MessageType.PKCS_REQ, client.make_csr(key, "new-device", SECRET),
                    signer=attacker, transaction_id="first")
    rep = await scep.send(body, attacker[0])
    assert rep.status is PKIStatus.SUCCESS and rep.certs
    assert await _security_events(engine) == []


def hashes_hex(der_bytes: bytes) -> str:
    h = hashes.Hash(hashes.SHA256())
    h.update(der_bytes)
    return h.finalize().hex()


async def test_a_profile_can_require_the_signer_to_hold_the_csr_key(engine, ca, device_key, attacker):
    # renewal_window_days: this test renews right after issue (renewal opens in the last third by default)
    scep = await _service(engine, ca, require_signer_csr_key=True, renewal_window_days=3650)
    csr = client.make_csr(device_key, "device-1", SECRET)
    captured = _request(ca, device_key, MessageType.PKCS_REQ, csr, transaction_id="original")
    first = await scep.send(captured, device_key)
    assert first.status is PKIStatus.SUCCESS

    envelope = parse_pki_message(captured).envelope
    for txid in ("original", "replayed"):  # the same transaction or a new one: refused either way
        rep = await scep.send(_rewrap(envelope, attacker, MessageType.PKCS_REQ, txid, b"r" * 16), attacker[0])
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "CSR's" in rep.fail_text
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(
            sa.text("certificates")))).scalar() == 1

    # a renewal signed by the certificate we issued (a new key in the CSR) is not a self-signed request
    issued_der = first.certs[0]
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    renewal = _request(ca, new_key, MessageType.RENEWAL_REQ, client.make_csr(new_key, "device-1"),
                       signer=(device_key, issued_der), transaction_id="renew")
    rep = await scep.send(renewal, device_key)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert await _security_events(engine) == []


def test_the_project_builders_sign_with_the_csr_key(device_key):
    """The test builders (like scepclient, see test_micromdm_vectors) sign a PKCSReq with the CSR's own key."""
    signer = x509.load_der_x509_certificate(client.make_self_signed_signer(device_key))
    assert signer.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo) == \
        device_key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def test_scepclient_signs_its_pkcsreq_with_the_csr_key(pki):
    """micromdm's scepclient 2.1.0 (captured request, fixtures/README.md) signs a PKCSReq with the CSR's key:
    ``require_signer_csr_key`` does not stop it."""
    msg = parse_pki_message((FIXTURES / "micromdm" / "pkcsreq.der").read_bytes())
    content = open_request(msg, pki.decrypt_cek, recipient_cert_der=pki.ra_der, allow_single_des=True)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert msg.signer_cert.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        content.public_key.public_bytes(serialization.Encoding.DER, spki)
    assert msg.signer_cert.subject != content.csr.subject  # a separate self-signed "SCEP SIGNER" certificate
