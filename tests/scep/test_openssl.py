"""OpenSSL 3 as an independent implementation: it verifies and decrypts our replies, and makes messages we read."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.scep import (ContentCipher, Digest, FailInfo, MessageType, PKIStatus, SCEPFailure, build_cert_rep,
                              build_degenerate, build_next_ca_cert, cms, decrypt_envelope, oids,
                              parse_pki_message)
from scep_server.scep import client
from trustkit import der
from tests.helpers import require_tool

from .capture_server import FIXTURES
from .conftest import NOW

pytestmark = pytest.mark.interop


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("openssl"), *args], input=input, capture_output=True, timeout=30)


def ok(proc: subprocess.CompletedProcess) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def pem_subjects(text: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("subject=")]


@pytest.fixture
def files(tmp_path: Path, pki):
    (tmp_path / "signer.pem").write_bytes(x509.load_der_x509_certificate(pki.dev_der).public_bytes(
        serialization.Encoding.PEM))
    (tmp_path / "client.key").write_bytes((FIXTURES / "micromdm" / "client.key").read_bytes())
    return tmp_path


@pytest.mark.parametrize("cipher, digest", [
    (ContentCipher.AES128_CBC, Digest.SHA256), (ContentCipher.AES192_CBC, Digest.SHA1),
    (ContentCipher.AES256_CBC, Digest.SHA512), (ContentCipher.DES3_CBC, Digest.SHA256),
    (ContentCipher.DES_CBC, Digest.SHA1),  # answered with AES-128, which OpenSSL 3 decrypts
])
def test_openssl_verifies_and_decrypts_cert_rep_success(pki, files, cipher, digest):
    msg = parse_pki_message(pki.request(cipher=cipher, digest=digest))
    bundle = build_degenerate([pki.dev_der, pki.ca_der])
    rep = build_cert_rep(request=msg, status=PKIStatus.SUCCESS, ra_cert_der=pki.ra_der, sign=pki.sign,
                         sender_nonce=b"s" * 16, signing_time=NOW, content=bundle, cek=bytes(range(32)), iv=bytes(16))
    (files / "certrep.der").write_bytes(rep)
    # Signature check with the chain: the RA certificate in the reply chains to the fixture CA.
    ok(openssl("cms", "-verify", "-inform", "DER", "-in", str(files / "certrep.der"), "-CAfile",
               str(FIXTURES / "ca.pem"), "-purpose", "any", "-out", str(files / "envelope.der")))
    printed = ok(openssl("cms", "-cmsout", "-inform", "DER", "-in", str(files / "certrep.der"), "-print")).decode()
    for dotted in (oids.MESSAGE_TYPE, oids.PKI_STATUS, oids.TRANSACTION_ID, oids.SENDER_NONCE, oids.RECIPIENT_NONCE):
        assert dotted in printed
    ok(openssl("cms", "-decrypt", "-inform", "DER", "-in", str(files / "envelope.der"), "-recip",
               str(files / "signer.pem"), "-inkey", str(files / "client.key"), "-out", str(files / "issued.p7b")))
    assert (files / "issued.p7b").read_bytes() == bundle
    out = ok(openssl("pkcs7", "-inform", "DER", "-in", str(files / "issued.p7b"), "-print_certs")).decode()
    assert pem_subjects(out) == ["CN = SCEP SIGNER", "O = SCEP Codec Fixtures, CN = Fixture CA"]  # issued first


def test_openssl_verifies_cert_rep_failure(pki, files):
    msg = parse_pki_message(pki.request())
    rep = build_cert_rep(request=msg, status=PKIStatus.FAILURE, ra_cert_der=pki.ra_der, sign=pki.sign,
                         sender_nonce=b"s" * 16, signing_time=NOW, fail_info=FailInfo.BAD_REQUEST, fail_text="nope")
    (files / "failure.der").write_bytes(rep)
    out = ok(openssl("cms", "-verify", "-noverify", "-inform", "DER", "-in", str(files / "failure.der")))
    assert out == b""
    printed = ok(openssl("cms", "-cmsout", "-inform", "DER", "-in", str(files / "failure.der"), "-print")).decode()
    assert oids.FAIL_INFO_TEXT in printed and oids.FAIL_INFO in printed


@pytest.mark.parametrize("first", ["ra", "ca"])
def test_openssl_prints_degenerate_certs_in_our_order(pki, tmp_path, first):
    certs = [pki.ra_der, pki.ca_der] if first == "ra" else [pki.ca_der, pki.ra_der]
    (tmp_path / "ca.p7b").write_bytes(build_degenerate(certs))
    out = ok(openssl("pkcs7", "-inform", "DER", "-in", str(tmp_path / "ca.p7b"), "-print_certs")).decode()
    names = ["O = SCEP Codec Fixtures, CN = Fixture RA", "O = SCEP Codec Fixtures, CN = Fixture CA"]
    assert pem_subjects(out) == (names if first == "ra" else names[::-1])


def test_degenerate_order_differs_from_der_set_order(pki):
    """The set is emitted in the given order even where DER's SET OF sorting would reorder it."""
    sorted_first = min(pki.ra_der, pki.ca_der)
    other = max(pki.ra_der, pki.ca_der)
    assert client.certs_in_order(build_degenerate([other, sorted_first])) == [other, sorted_first]


def test_openssl_verifies_next_ca_cert(pki, tmp_path):
    body = build_next_ca_cert([pki.ca_der], ra_cert_der=pki.ra_der, sign=pki.sign, digest=Digest.SHA256,
                              signing_time=NOW)
    (tmp_path / "next.der").write_bytes(body)
    content = ok(openssl("cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "next.der"), "-CAfile",
                         str(FIXTURES / "ca.pem"), "-purpose", "any"))
    assert client.certs_in_order(content) == [pki.ca_der]
    assert client.parse_next_ca_cert(body, ra_cert_der=pki.ra_der) == [pki.ca_der]


def sign_envelope(pki, envelope: bytes, digest: Digest = Digest.SHA256, message_type: str = "19") -> bytes:
    """Wrap an envelope made elsewhere in a SCEP SignedData from our client side."""
    attrs = [cms.attribute(oids.MESSAGE_TYPE_DER, der.printable(message_type)),
             cms.attribute(oids.TRANSACTION_ID_DER, der.printable("OPENSSL-ENV")),
             cms.attribute(oids.SENDER_NONCE_DER, der.octet_string(b"o" * 16))]
    return cms.build_signed_data(econtent=envelope, signer_cert_der=pki.dev_der, sign=client.rsa_signer(pki.dev_key),
                                 digest=digest, extra_attrs=attrs, signing_time=NOW)


@pytest.mark.parametrize("flag, cipher, keyopts", [
    ("-aes128", ContentCipher.AES128_CBC, ()), ("-aes192", ContentCipher.AES192_CBC, ()),
    ("-aes256", ContentCipher.AES256_CBC, ()), ("-des3", ContentCipher.DES3_CBC, ()),
    ("-aes128", ContentCipher.AES128_CBC, ("-keyopt", "rsa_padding_mode:oaep")),
    ("-aes256", ContentCipher.AES256_CBC, ("-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
                                           "-keyopt", "rsa_mgf1_md:sha256")),
])
def test_we_decrypt_openssl_envelopes(pki, tmp_path, flag, cipher, keyopts):
    csr = pki.csr()
    (tmp_path / "csr.der").write_bytes(csr)
    envelope = ok(openssl("cms", "-encrypt", "-binary", "-outform", "DER", "-in", str(tmp_path / "csr.der"), flag,
                          "-recip", str(FIXTURES / "ra.pem"), *keyopts))
    msg = parse_pki_message(sign_envelope(pki, envelope))
    assert msg.cipher is cipher
    assert msg.key_transport == ("pkcs1v15" if not keyopts else "oaep-sha1" if len(keyopts) == 2 else "oaep-sha256")
    content, used = decrypt_envelope(msg, pki.decrypt_cek, recipient_cert_der=pki.ra_der)
    assert content == csr and used is cipher


@pytest.mark.parametrize("keyid", [False, True])
def test_we_verify_openssl_signatures(pki, files, keyid):
    """An OpenSSL-signed (non-SCEP) SignedData verifies; it then fails for the missing SCEP attributes only.

    With -keyid the signer is named by SubjectKeyIdentifier instead of issuer and serial (RFC 5652 §5.3).
    """
    (files / "payload").write_bytes(b"not an envelope")
    signed = ok(openssl("cms", "-sign", "-binary", "-nodetach", "-outform", "DER", "-md", "sha256",
                        "-in", str(files / "payload"), "-signer", str(FIXTURES / "ra.pem"),
                        "-inkey", str(FIXTURES / "ra.key"), *(["-keyid"] if keyid else [])))
    with pytest.raises(SCEPFailure) as ei:
        parse_pki_message(signed)
    assert ei.value.fail_info is FailInfo.BAD_REQUEST and "messageType" in ei.value.text
    assert ei.value.message.signer_cert_der == pki.ra_der
    tampered = bytearray(signed)
    tampered[-3] ^= 0x40
    with pytest.raises(SCEPFailure) as ei:
        parse_pki_message(bytes(tampered))
    assert ei.value.fail_info is FailInfo.BAD_MESSAGE_CHECK


def test_openssl_parses_our_requests(pki, files):
    """Our client requests are well-formed CMS for OpenSSL too, and decrypt with the RA key."""
    for cipher in (ContentCipher.AES128_CBC, ContentCipher.DES3_CBC):
        req = pki.request(MessageType.PKCS_REQ, cipher=cipher)
        (files / "req.der").write_bytes(req)
        ok(openssl("cms", "-verify", "-noverify", "-inform", "DER", "-in", str(files / "req.der"),
                   "-out", str(files / "env.der")))
        out = ok(openssl("cms", "-decrypt", "-inform", "DER", "-in", str(files / "env.der"),
                         "-recip", str(FIXTURES / "ra.pem"), "-inkey", str(FIXTURES / "ra.key")))
        assert out == pki.csr()


def test_recipient_named_by_subject_key_identifier_both_ways(pki, files):
    """An envelope naming its recipient by SubjectKeyIdentifier (version 2, RFC 5652 §6.2.1): OpenSSL's (-keyid)
    is decrypted with the RA key it names, and ours decrypts with OpenSSL."""
    csr = pki.csr()
    (files / "csr.der").write_bytes(csr)
    theirs = ok(openssl("cms", "-encrypt", "-binary", "-outform", "DER", "-in", str(files / "csr.der"), "-aes128",
                        "-keyid", "-recip", str(FIXTURES / "ra.pem")))
    content, _ = decrypt_envelope(parse_pki_message(sign_envelope(pki, theirs)), pki.decrypt_cek,
                                  recipient_cert_der=pki.ra_der)
    assert content == csr

    rid = cms.subject_key_identifier_rid(pki.ra_der)
    ours = cms.build_enveloped_data(csr, recipient_cert_der=pki.ra_der, recipient_key=pki.ra_key.public_key(),
                                    cipher=ContentCipher.AES128_CBC, cek=b"k" * 16, iv=b"i" * 16, recipient_id_der=rid)
    (files / "ours.der").write_bytes(ours)
    printed = ok(openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", str(files / "ours.der"))).decode()
    assert "subjectKeyIdentifier" in printed and "version: 2" in printed
    out = ok(openssl("cms", "-decrypt", "-inform", "DER", "-in", str(files / "ours.der"),
                     "-recip", str(FIXTURES / "ra.pem"), "-inkey", str(FIXTURES / "ra.key")))
    assert out == csr
