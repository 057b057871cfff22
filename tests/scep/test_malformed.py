"""Malformed and hostile inputs: each is MalformedMessage (HTTP 400) or a SCEPFailure with the exact failInfo."""
from __future__ import annotations

import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scep_server.scep import (ContentCipher, Digest, FailInfo, MalformedMessage, MessageType, PKIStatus, SCEPFailure,
                              build_cert_rep, build_degenerate, cms, decode_get_message, decrypt_envelope, oids,
                              parse_issuer_and_serial, parse_issuer_and_subject, parse_pki_message)
from scep_server.scep import client
from trustkit import der

from .conftest import NOW

OID_SHA256 = der.oid("2.16.840.1.101.3.4.2.1")
OID_RSA = der.oid(oids.RSA_ENCRYPTION)


def failure(data: bytes) -> SCEPFailure:
    with pytest.raises(SCEPFailure) as ei:
        parse_pki_message(data)
    assert ei.value.message is not None, "a failure after the SignedData parsed must be addressable"
    return ei.value


def envelope_for(pki, content: bytes | None = None, cipher=ContentCipher.AES128_CBC, recipient=None) -> bytes:
    recipient = recipient or pki.ra_der
    return cms.build_enveloped_data(content if content is not None else pki.csr(), recipient_cert_der=recipient,
                                    recipient_key=x509.load_der_x509_certificate(recipient).public_key(),
                                    cipher=cipher, cek=bytes(range(cipher.key_size)), iv=bytes(cipher.block_size))


def signed(pki, econtent: bytes, *, message_type: str | None = "19", transaction_id: str | None = "TID",
           nonce: bytes | None = b"n" * 16, digest: Digest = Digest.SHA256, extra=()) -> bytes:
    attrs = list(extra)
    if message_type is not None:
        attrs.append(cms.attribute(oids.MESSAGE_TYPE_DER, der.printable(message_type)))
    if transaction_id is not None:
        attrs.append(cms.attribute(oids.TRANSACTION_ID_DER, der.printable(transaction_id)))
    if nonce is not None:
        attrs.append(cms.attribute(oids.SENDER_NONCE_DER, der.octet_string(nonce)))
    return cms.build_signed_data(econtent=econtent, signer_cert_der=pki.dev_der, sign=client.rsa_signer(pki.dev_key),
                                 digest=digest, extra_attrs=attrs, signing_time=NOW)


# ---------------------------------------------------------------- no signer to answer: HTTP 400

@pytest.mark.parametrize("data", [b"", b"garbage", b"\x30\x80", b"\x30\x03\x02\x01\x00", bytes(1000),
                                  b"-----BEGIN PKCS7-----\nMIIB\n-----END PKCS7-----\n"])
def test_garbage_is_malformed(data):
    with pytest.raises(MalformedMessage):
        parse_pki_message(data)


def test_truncated_anywhere_is_malformed_or_failure(pki):
    req = pki.request()
    for cut in list(range(0, 64)) + list(range(64, len(req), 37)) + [len(req) - 1]:
        with pytest.raises((MalformedMessage, SCEPFailure)):
            parse_pki_message(req[:cut])
    with pytest.raises(MalformedMessage, match="past the end"):
        parse_pki_message(req[:-1])


def test_trailing_garbage_is_malformed(pki):
    with pytest.raises(MalformedMessage, match="trailing"):
        parse_pki_message(pki.request() + b"\x00")


def test_outer_content_type_must_be_signed_data(pki):
    with pytest.raises(MalformedMessage, match=r"1\.2\.840\.113549\.1\.7\.3, not signedData"):
        parse_pki_message(envelope_for(pki))
    data_ci = cms.content_info(oids.DATA_DER, der.octet_string(b"hello"))
    with pytest.raises(MalformedMessage, match="not signedData"):
        parse_pki_message(data_ci)


def test_degenerate_without_signer_is_malformed(pki):
    with pytest.raises(MalformedMessage, match="no SignerInfo"):
        parse_pki_message(build_degenerate([pki.ra_der, pki.ca_der]))


def test_signer_certificate_missing_is_malformed(pki):
    req = cms.build_signed_data(econtent=envelope_for(pki), signer_cert_der=pki.dev_der,
                                sign=client.rsa_signer(pki.dev_key), digest=Digest.SHA256, certs=[pki.ca_der])
    with pytest.raises(MalformedMessage, match="matches the SignerInfo"):
        parse_pki_message(req)


# ---------------------------------------------------------------- signed FAILUREs

def test_bad_signature(pki):
    req = bytearray(pki.request(transaction_id="BAD-SIG"))
    req[-1] ^= 0xFF
    f = failure(bytes(req))
    assert f.fail_info is FailInfo.BAD_MESSAGE_CHECK and "signature" in f.text
    assert f.message.transaction_id == "BAD-SIG" and f.message.signer_cert_der == pki.dev_der


def test_signature_by_another_key(pki):
    req = signed(pki, envelope_for(pki))
    other = cms.build_signed_data(econtent=envelope_for(pki), signer_cert_der=pki.dev_der,
                                  sign=client.rsa_signer(pki.other_key), digest=Digest.SHA256)
    assert failure(other).fail_info is FailInfo.BAD_MESSAGE_CHECK
    assert parse_pki_message(req).transaction_id == "TID"


def test_bad_message_digest(pki):
    env = envelope_for(pki)
    req = bytearray(signed(pki, env))
    at = bytes(req).find(env) + len(env) - 1  # the last ciphertext byte: covered by messageDigest only
    req[at] ^= 0x01
    f = failure(bytes(req))
    assert f.fail_info is FailInfo.BAD_MESSAGE_CHECK and "messageDigest" in f.text


def test_content_type_attribute_mismatch(pki):
    env = envelope_for(pki)
    econtent_type_swapped = signed(pki, env).replace(
        der.seq(oids.DATA_DER, der.tlv(0xA0, der.octet_string(env))),
        der.seq(oids.ENVELOPED_DATA_DER, der.tlv(0xA0, der.octet_string(env))))
    assert failure(econtent_type_swapped).fail_info is FailInfo.BAD_MESSAGE_CHECK


def test_unknown_digest_algorithm(pki):
    req = pki.request().replace(OID_SHA256, der.oid("2.16.840.1.101.3.4.2.2"))  # SHA-384: not offered
    f = failure(req)
    assert f.fail_info is FailInfo.BAD_ALG and "digest" in f.text
    assert f.message.digest is Digest.SHA256  # the reply still has a digest to use


def test_unknown_signature_algorithm(pki):
    req = pki.request()
    at = req.rfind(OID_RSA)  # the SignerInfo's signatureAlgorithm is the last rsaEncryption in the message
    req = req[:at] + der.oid("1.2.840.113549.1.1.2") + req[at + len(OID_RSA):]  # md2WithRSAEncryption
    f = failure(req)
    assert f.fail_info is FailInfo.BAD_ALG and "signature algorithm" in f.text


def test_non_rsa_signer(pki):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=EC signer")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(NOW).not_valid_after(NOW.replace(year=2030))
            .sign(key, hashes.SHA256())).public_bytes(serialization.Encoding.DER)
    req = cms.build_signed_data(econtent=envelope_for(pki), signer_cert_der=cert, digest=Digest.SHA256,
                                sign=lambda data, d: key.sign(data, ec.ECDSA(d.hash_algorithm())))
    f = failure(req)
    assert f.fail_info is FailInfo.BAD_ALG and "RSA" in f.text


@pytest.mark.parametrize("gcm_or_rc2", ["2.16.840.1.101.3.4.1.6", "2.16.840.1.101.3.4.1.46"])
def test_unknown_content_cipher(pki, gcm_or_rc2):
    env = envelope_for(pki).replace(der.oid(ContentCipher.AES128_CBC.oid), der.oid(gcm_or_rc2))
    f = failure(signed(pki, env))
    assert f.fail_info is FailInfo.BAD_ALG and gcm_or_rc2 in f.text


def test_unknown_key_transport(pki):
    env = envelope_for(pki).replace(OID_RSA, der.oid("1.2.840.113549.1.1.2"))
    f = failure(signed(pki, env))
    assert f.fail_info is FailInfo.BAD_ALG and "key transport" in f.text


def test_password_recipient_only_is_unsupported(pki):
    env = envelope_for(pki)
    ci = der.read_one(env)
    ed = der.children(env, der.children(env, der.children(env, ci)[1])[0])
    ris = ed[1]
    pwri = der.tlv(0xA3, der.integer(0) + der.seq(der.oid("1.2.840.113549.1.9.16.3.9")) + der.octet_string(b"k"))
    patched = _rewrap(env, ris, der.tlv(der.SET, pwri))
    f = failure(signed(pki, patched))
    assert f.fail_info is FailInfo.BAD_ALG and "key transport recipient" in f.text


def _rewrap(env: bytes, old: der.Element, new: bytes) -> bytes:
    """Replace one element of the EnvelopedData and re-encode the enclosing lengths."""
    ci = der.read_one(env)
    ci_kids = der.children(env, ci)
    ed = der.children(env, der.children(env, ci_kids[1])[0])
    parts = [new if e == old else der.raw(env, e) for e in ed]
    return cms.content_info(oids.ENVELOPED_DATA_DER, der.seq(*parts))


def test_econtent_not_an_envelope(pki):
    f = failure(signed(pki, pki.csr()))
    assert f.fail_info is FailInfo.BAD_REQUEST and "EnvelopedData" in f.text


@pytest.mark.parametrize("kw, why", [
    ({"message_type": None}, "messageType"), ({"message_type": "3"}, "not a request"),
    ({"message_type": "99"}, "not a request"), ({"message_type": "x"}, "messageType"),
    ({"transaction_id": None}, "transactionID"), ({"nonce": None}, "senderNonce"),
])
def test_missing_or_wrong_scep_attributes(pki, kw, why):
    f = failure(signed(pki, envelope_for(pki), **kw))
    assert f.fail_info is FailInfo.BAD_REQUEST and why in f.text


def test_unknown_message_type_is_kept_as_a_number(pki):
    f = failure(signed(pki, envelope_for(pki), message_type="18"))  # UpdateReq: unassigned in RFC 8894
    assert f.message.message_type == 18 and f.fail_info is FailInfo.BAD_REQUEST


def test_duplicate_attribute(pki):
    dup = cms.attribute(oids.TRANSACTION_ID_DER, der.printable("OTHER"))
    f = failure(signed(pki, envelope_for(pki), extra=[dup]))
    assert f.fail_info is FailInfo.BAD_MESSAGE_CHECK and "twice" in f.text


def test_wrong_recipient(pki):
    msg = parse_pki_message(signed(pki, envelope_for(pki, recipient=pki.ca_der)))
    with pytest.raises(SCEPFailure) as ei:
        decrypt_envelope(msg, pki.decrypt_cek, recipient_cert_der=pki.ra_der)
    assert ei.value.fail_info is FailInfo.BAD_MESSAGE_CHECK and "not addressed" in ei.value.text
    assert ei.value.message is msg
    with pytest.raises(SCEPFailure) as ei:   # without the recipient check, the RA key cannot decrypt it
        decrypt_envelope(msg, pki.decrypt_cek)
    assert ei.value.fail_info is FailInfo.BAD_MESSAGE_CHECK and ei.value.text == "cannot decrypt the pkcsPKIEnvelope"


def test_corrupt_ciphertext_and_key_give_one_answer(pki):
    """Padding faults and key faults read the same (no padding oracle)."""
    env = bytearray(envelope_for(pki))
    env[-1] ^= 0x01
    with pytest.raises(SCEPFailure) as a:
        decrypt_envelope(bytes(env), pki.decrypt_cek)
    with pytest.raises(SCEPFailure) as b:
        decrypt_envelope(envelope_for(pki), lambda ek, s: b"\x00" * 5)
    assert a.value.text == b.value.text == "cannot decrypt the pkcsPKIEnvelope"
    assert a.value.fail_info is b.value.fail_info is FailInfo.BAD_MESSAGE_CHECK
    with pytest.raises(SCEPFailure) as c:
        decrypt_envelope(b"\x30\x00", pki.decrypt_cek)
    assert c.value.fail_info is FailInfo.BAD_REQUEST and c.value.message is None


def test_envelope_contents_are_checked():
    with pytest.raises(SCEPFailure) as ei:
        parse_issuer_and_subject(b"\x30\x00")
    assert ei.value.fail_info is FailInfo.BAD_REQUEST
    with pytest.raises(SCEPFailure) as ei:
        parse_issuer_and_serial(der.seq(der.seq(), der.printable("not an integer")))
    assert ei.value.fail_info is FailInfo.BAD_REQUEST
    with pytest.raises(SCEPFailure):
        parse_issuer_and_serial(b"garbage")


def test_random_corruption_never_escapes_the_two_errors(pki):
    """Single-byte corruptions anywhere give a result, MalformedMessage or SCEPFailure: nothing else."""
    req = pki.request()
    rng = random.Random(8894)
    outcomes = {"ok": 0, "malformed": 0, "failure": 0}
    for _ in range(400):
        data = bytearray(req)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        try:
            msg = parse_pki_message(bytes(data))
            msg.decrypt(pki.decrypt_cek)
            outcomes["ok"] += 1
        except MalformedMessage:
            outcomes["malformed"] += 1
        except SCEPFailure as f:
            outcomes["failure"] += 1
            if f.message is not None:  # every such failure can be answered
                build_cert_rep(request=f.message, status=PKIStatus.FAILURE, ra_cert_der=pki.ra_der, sign=pki.sign,
                               sender_nonce=b"x" * 16, signing_time=NOW, fail_info=f.fail_info, fail_text=f.text)
    assert outcomes["failure"] > 100 and outcomes["malformed"] > 0


def test_get_message_garbage():
    for raw in ["", "!!!!", "a", "%ZZ", "%FF%FE", "abc$def"]:
        with pytest.raises(MalformedMessage):
            decode_get_message(raw)


def test_cert_rep_to_a_failure_without_transaction_id(pki):
    f = failure(signed(pki, envelope_for(pki), transaction_id=None, nonce=None))
    rep = build_cert_rep(request=f.message, status=PKIStatus.FAILURE, ra_cert_der=pki.ra_der, sign=pki.sign,
                         sender_nonce=b"x" * 16, signing_time=NOW, fail_info=f.fail_info, fail_text=f.text)
    parsed = client.parse_cert_rep(rep, pki.dev_key)
    assert parsed.fail_info is FailInfo.BAD_REQUEST and parsed.transaction_id == "" and parsed.recipient_nonce == b""


def test_message_type_constants_are_wire_values():
    assert [int(m) for m in MessageType] == [3, 17, 19, 20, 21, 22]
    assert [int(s) for s in PKIStatus] == [0, 2, 3] and [int(i) for i in FailInfo] == [0, 1, 2, 3, 4]
