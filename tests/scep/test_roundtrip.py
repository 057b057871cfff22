"""Round trips through the client and server codecs for every cipher, digest and message type (RFC 8894 §3)."""
from __future__ import annotations

import dataclasses

import pytest
from asn1crypto import cms as acms
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from scep_server.scep import (ContentCipher, Digest, FailInfo, MessageType, PKIStatus, SCEPFailure, build_cert_rep,
                              build_degenerate, decrypt_envelope, parse_issuer_and_serial, parse_issuer_and_subject,
                              parse_pki_message)
from scep_server.scep import client

from .conftest import NOW

REPLY_NONCE = bytes(range(100, 116))


def cert_rep(pki, msg, status=PKIStatus.SUCCESS, **kw):
    if status == PKIStatus.SUCCESS:
        kw.setdefault("content", build_degenerate([pki.dev_der, pki.ca_der]))
        kw.setdefault("cek", bytes(range(32)))
        kw.setdefault("iv", bytes(range(16)))
    return build_cert_rep(request=msg, status=status, ra_cert_der=pki.ra_der, sign=pki.sign,
                          sender_nonce=REPLY_NONCE, signing_time=NOW, **kw)


@pytest.mark.parametrize("digest", list(Digest))
@pytest.mark.parametrize("cipher", list(ContentCipher))
def test_pkcsreq_every_cipher_and_digest(pki, cipher, digest):
    csr = pki.csr()
    req = pki.request(content=csr, cipher=cipher, digest=digest, transaction_id="T-" + cipher.name + digest.name)
    msg = parse_pki_message(req)
    assert msg.message_type is MessageType.PKCS_REQ
    assert msg.digest is digest and msg.cipher is cipher and msg.key_transport == "pkcs1v15"
    assert msg.transaction_id == "T-" + cipher.name + digest.name
    assert msg.signer_cert_der == pki.dev_der and msg.signing_time == NOW
    content, used = decrypt_envelope(msg, pki.decrypt_cek, recipient_cert_der=pki.ra_der)
    assert content == csr and used is cipher

    rep = client.parse_cert_rep(cert_rep(pki, msg), pki.dev_key, ra_cert_der=pki.ra_der)
    assert rep.status is PKIStatus.SUCCESS and rep.fail_info is None
    # The reply mirrors the request, except single DES -> AES-128-CBC and MD5 -> SHA-256 (RFC 8894 §3.5.2).
    assert rep.cipher is (ContentCipher.AES128_CBC if cipher is ContentCipher.DES_CBC else cipher)
    assert rep.digest is (Digest.SHA256 if digest is Digest.MD5 else digest)
    assert rep.transaction_id == msg.transaction_id
    assert rep.recipient_nonce == msg.sender_nonce and rep.sender_nonce == REPLY_NONCE
    assert rep.certs == [pki.dev_der, pki.ca_der] and rep.crls == []
    assert rep.signing_time == NOW


@pytest.mark.parametrize("message_type", [MessageType.PKCS_REQ, MessageType.RENEWAL_REQ, MessageType.CERT_POLL,
                                          MessageType.GET_CERT, MessageType.GET_CRL])
def test_every_request_type(pki, message_type):
    ca = x509.load_der_x509_certificate(pki.ca_der)
    subject = x509.Name.from_rfc4514_string("CN=device-1,O=Example")
    content = {
        MessageType.PKCS_REQ: pki.csr(),
        MessageType.RENEWAL_REQ: pki.csr(challenge=None),
        MessageType.CERT_POLL: client.issuer_and_subject(ca.subject, subject),
        MessageType.GET_CERT: client.issuer_and_serial(ca.subject, 0x1234567890ABCDEF1234),
        MessageType.GET_CRL: client.issuer_and_serial(ca.subject, 4096),
    }[message_type]
    msg = parse_pki_message(pki.request(message_type, content))
    assert msg.message_type is message_type
    plain, _ = msg.decrypt(pki.decrypt_cek, recipient_cert_der=pki.ra_der)
    assert plain == content
    if message_type is MessageType.CERT_POLL:
        assert parse_issuer_and_subject(plain) == (ca.subject, subject)
    elif message_type is MessageType.GET_CERT:
        assert parse_issuer_and_serial(plain) == (ca.subject, 0x1234567890ABCDEF1234)
    elif message_type is MessageType.GET_CRL:
        assert parse_issuer_and_serial(plain) == (ca.subject, 4096)
    else:
        assert x509.load_der_x509_csr(plain).is_signature_valid


def test_get_crl_reply_carries_the_crl(pki):
    crl = bytes.fromhex("3003020100")  # any DER value stands in: the codec does not interpret CRLs
    msg = parse_pki_message(pki.request(MessageType.GET_CRL, client.issuer_and_serial(
        x509.load_der_x509_certificate(pki.ca_der).subject, 1)))
    rep = client.parse_cert_rep(cert_rep(pki, msg, content=build_degenerate([], [crl])), pki.dev_key)
    assert rep.certs == [] and rep.crls == [crl]


@pytest.mark.parametrize("scheme", ["oaep-sha1", "oaep-sha256", "oaep-sha512"])
def test_oaep_key_transport_is_decrypted_and_mirrored(pki, scheme):
    msg = parse_pki_message(pki.request(key_transport=scheme))
    assert msg.key_transport == scheme
    assert msg.decrypt(pki.decrypt_cek)[0] == pki.csr()
    rep = client.parse_cert_rep(cert_rep(pki, msg), pki.dev_key)
    assert rep.key_transport == scheme and rep.certs[0] == pki.dev_der


def test_failure_has_failinfo_and_text_and_no_envelope(pki):
    msg = parse_pki_message(pki.request(transaction_id="FAIL-1"))
    der = cert_rep(pki, msg, PKIStatus.FAILURE, fail_info=FailInfo.BAD_REQUEST, fail_text="wrong challenge ✗")
    rep = client.parse_cert_rep(der, pki.dev_key, ra_cert_der=pki.ra_der)
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
    assert rep.fail_text == "wrong challenge ✗" and rep.certs == [] and rep.cipher is None
    assert rep.transaction_id == "FAIL-1" and rep.recipient_nonce == msg.sender_nonce


def test_pending(pki):
    msg = parse_pki_message(pki.request())
    rep = client.parse_cert_rep(cert_rep(pki, msg, PKIStatus.PENDING), pki.dev_key)
    assert rep.status is PKIStatus.PENDING and rep.fail_info is None and rep.certs == []


def _signed_attrs(der: bytes) -> dict:
    """Read a CertRep with asn1crypto, an independent decoder (the SCEP OIDs are registered by the codec)."""
    ci = acms.ContentInfo.load(der)
    si = ci["content"]["signer_infos"][0]
    return {a["type"].native: a["values"][0].native for a in si["signed_attrs"]}, ci, si


def test_cert_rep_attribute_set_and_structure(pki):
    msg = parse_pki_message(pki.request(transaction_id="ATTR-1", digest=Digest.SHA512))
    attrs, ci, si = _signed_attrs(cert_rep(pki, msg))
    assert attrs == {
        "content_type": "data", "signing_time": NOW, "message_digest": attrs["message_digest"],
        "message_type": "3", "pki_status": "0", "transaction_id": "ATTR-1",
        "sender_nonce": REPLY_NONCE, "recipient_nonce": msg.sender_nonce,
    }
    sd = ci["content"]
    assert [c.chosen.dump() for c in sd["certificates"]] == [pki.ra_der]      # the RA certificate is included
    assert si["sid"].chosen["serial_number"].native == 0x1001                  # ... and is the signer
    assert si["digest_algorithm"]["algorithm"].native == "sha512"
    # The signed attributes are in DER SET OF order (X.690 §11.6): re-encoding them changes nothing.
    raw = si["signed_attrs"].contents
    assert sorted(a.dump() for a in si["signed_attrs"]) == [a.dump() for a in si["signed_attrs"]]
    assert b"".join(a.dump() for a in si["signed_attrs"]) == raw

    failure, _, _ = _signed_attrs(cert_rep(pki, msg, PKIStatus.FAILURE, fail_info=FailInfo.BAD_TIME, fail_text="x"))
    assert failure["pki_status"] == "2" and failure["fail_info"] == "3" and failure["fail_info_text"] == "x"


def test_transaction_id_is_echoed_in_its_received_encoding(pki):
    # A client sending transactionID as UTF8String gets the same bytes back.
    from scep_server.scep import cms, oids
    from trustkit import der
    envelope = cms.build_enveloped_data(pki.csr(), recipient_cert_der=pki.ra_der,
                                        recipient_key=x509.load_der_x509_certificate(pki.ra_der).public_key(),
                                        cipher=ContentCipher.AES256_CBC, cek=bytes(32), iv=bytes(16))
    attrs = [cms.attribute(oids.MESSAGE_TYPE_DER, der.printable("19")),
             cms.attribute(oids.TRANSACTION_ID_DER, der.utf8("ünïcode_id")),
             cms.attribute(oids.SENDER_NONCE_DER, der.octet_string(b"n" * 16))]
    req = cms.build_signed_data(econtent=envelope, signer_cert_der=pki.dev_der, sign=client.rsa_signer(pki.dev_key),
                                digest=Digest.SHA256, extra_attrs=attrs)
    msg = parse_pki_message(req)
    assert msg.transaction_id == "ünïcode_id"
    assert der.utf8("ünïcode_id") in cert_rep(pki, msg, PKIStatus.PENDING)


def test_reply_never_uses_single_des(pki):
    msg = parse_pki_message(pki.request(cipher=ContentCipher.DES_CBC))
    assert msg.cipher is ContentCipher.DES_CBC and msg.reply_cipher is ContentCipher.AES128_CBC
    ci = acms.ContentInfo.load(cert_rep(pki, msg))
    env = acms.ContentInfo.load(ci["content"]["encap_content_info"]["content"].native)
    alg = env["content"]["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].dotted
    assert alg == ContentCipher.AES128_CBC.oid
    assert b"\x06\x05\x2b\x0e\x03\x02\x07" not in cert_rep(pki, msg)   # desCBC OID nowhere in the reply


def test_build_cert_rep_is_deterministic_for_failures(pki):
    msg = parse_pki_message(pki.request())
    a = cert_rep(pki, msg, PKIStatus.FAILURE, fail_info=FailInfo.BAD_REQUEST)
    assert a == cert_rep(pki, msg, PKIStatus.FAILURE, fail_info=FailInfo.BAD_REQUEST)


def test_build_cert_rep_argument_errors(pki):
    msg = parse_pki_message(pki.request())
    with pytest.raises(ValueError, match="fail_info"):
        cert_rep(pki, msg, PKIStatus.FAILURE)
    with pytest.raises(ValueError, match="content"):
        cert_rep(pki, msg, PKIStatus.SUCCESS, content=None)
    with pytest.raises(ValueError, match="key bytes"):
        cert_rep(pki, msg, PKIStatus.SUCCESS, cek=b"short")


def test_a_success_the_signer_key_cannot_receive_is_a_bad_alg_failure(pki):
    """A 1024-bit key cannot receive a content key with OAEP-SHA512 (RFC 8017 §7.1.1): the CertRep says so."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    msg = dataclasses.replace(parse_pki_message(pki.request()), key_transport="oaep-sha512",
                              _signer_key=small.public_key())
    rep = client.parse_cert_rep(cert_rep(pki, msg), small, ra_cert_der=pki.ra_der)
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_ALG and rep.certs == []
    assert "oaep-sha512" in rep.fail_text


def test_failure_reply_to_an_unverified_message(pki):
    """A message whose signature fails is still answered, to its signer, with its transactionID and nonce."""
    req = bytearray(pki.request(transaction_id="BADSIG"))
    req[-5] ^= 0x01  # inside the signature, the last field of the message
    with pytest.raises(SCEPFailure) as ei:
        parse_pki_message(bytes(req))
    f = ei.value
    assert f.fail_info is FailInfo.BAD_MESSAGE_CHECK and f.message is not None
    rep = client.parse_cert_rep(cert_rep(pki, f.message, PKIStatus.FAILURE, fail_info=f.fail_info, fail_text=f.text),
                                pki.dev_key)
    assert rep.transaction_id == "BADSIG" and rep.recipient_nonce == f.message.sender_nonce
    assert rep.fail_info is FailInfo.BAD_MESSAGE_CHECK
