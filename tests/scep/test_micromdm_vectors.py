"""Known-answer tests on real requests captured from micromdm scepclient 2.1.0 (fixtures/README.md)."""
from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest
from asn1crypto import cms as acms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AttributeOID, NameOID

from scep_server.scep import (ContentCipher, Digest, MessageType, PKIStatus, decrypt_envelope,
                              parse_pki_message)
from scep_server.scep import client
from trustkit import der

from .capture_server import FIXTURES, load_key

MDM = FIXTURES / "micromdm"
CAPTURES = json.loads((MDM / "captures.json").read_text())


def client_logged_transaction_id(name: str) -> str:
    """The transactionID scepclient itself printed while making the capture."""
    for line in CAPTURES["captures"][name]["log"]:
        m = re.search(r'msg="creating SCEP CSR request" transaction_id="([^"]+)"', line)
        if m:
            return m.group(1)
    raise AssertionError("no transaction id in the capture log")


def micromdm_transaction_id(key_path) -> str:
    """scepclient 2.1.0's transactionID: base64 of the first 20 bytes of SHA-256 over the PKCS#1 RSAPublicKey."""
    pub = load_key(key_path).public_key()
    return base64.b64encode(hashlib.sha256(pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1)).digest()[:20]).decode()


def open_request(pki, name: str):
    msg = parse_pki_message((MDM / name).read_bytes())
    content, cipher = decrypt_envelope(msg, pki.decrypt_cek, recipient_cert_der=pki.ra_der)
    return msg, x509.load_der_x509_csr(content), cipher


def challenge_of(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        value = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound:
        return None
    return value.decode() if isinstance(value, bytes) else value


def test_pkcsreq(pki):
    msg, csr, cipher = open_request(pki, "pkcsreq.der")
    assert msg.message_type is MessageType.PKCS_REQ
    # scepclient 2.1.0 uses SHA-1 and single DES whatever the caps say.
    assert msg.digest is Digest.SHA1 and cipher is ContentCipher.DES_CBC and msg.key_transport == "pkcs1v15"
    tid = client_logged_transaction_id("pkcsreq.der")
    assert msg.transaction_id == tid == micromdm_transaction_id(MDM / "client.key")
    assert len(msg.sender_nonce) == 16
    signer = msg.signer_cert
    assert signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "SCEP SIGNER"
    assert signer.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "scep-client"
    assert signer.issuer == signer.subject
    key = load_key(MDM / "client.key").public_key()
    assert signer.public_key() == key and csr.public_key() == key and csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev1"
    assert challenge_of(csr) == "secret"
    assert msg.signing_time is not None  # Go's pkcs7 adds signingTime


def test_go_constructed_encrypted_content_is_the_quirk_we_handle(pki):
    """Go's pkcs7 sends encryptedContent as a constructed [0]; asn1crypto's cms rejects it, this codec does not."""
    msg = parse_pki_message((MDM / "pkcsreq.der").read_bytes())
    env = msg.envelope
    ci = der.read_one(env)
    ed = der.children(env, der.children(env, der.children(env, ci)[1])[0])
    eci = der.children(env, ed[2])
    assert eci[2][0] == 0xA0                                   # constructed [0] on the wire
    assert all(c[0] == der.OCTET_STRING for c in der.children(env, eci[2]))
    with pytest.raises(ValueError):
        acms.ContentInfo.load(env)["content"]["encrypted_content_info"]["encrypted_content"].native
    assert decrypt_envelope(env, pki.decrypt_cek)[1] is ContentCipher.DES_CBC


def test_renewalreq_signed_by_the_issued_certificate(pki):
    msg, csr, cipher = open_request(pki, "renewalreq.der")
    assert msg.message_type is MessageType.RENEWAL_REQ
    issued = x509.load_pem_x509_certificate((MDM / "issued.pem").read_bytes())
    assert msg.signer_cert == issued
    assert msg.signer_cert_der == issued.public_bytes(serialization.Encoding.DER)
    assert msg.transaction_id == client_logged_transaction_id("renewalreq.der")
    assert challenge_of(csr) is None and cipher is ContentCipher.DES_CBC and msg.digest is Digest.SHA1
    assert csr.public_key() == issued.public_key()


def test_wrong_challenge_request(pki):
    msg, csr, _ = open_request(pki, "pkcsreq_wrong_challenge.der")
    assert msg.transaction_id == micromdm_transaction_id(MDM / "client2.key")
    assert challenge_of(csr) == "wrong"
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev2"


def test_the_cert_rep_scepclient_accepted(pki):
    """Our reply to the captured PKCSReq, which scepclient accepted: AES-128 for its DES, SHA-1 mirrored."""
    rep = client.parse_cert_rep((MDM / "pkcsreq_certrep.der").read_bytes(), load_key(MDM / "client.key"),
                                ra_cert_der=pki.ra_der)
    req = parse_pki_message((MDM / "pkcsreq.der").read_bytes())
    issued = x509.load_pem_x509_certificate((MDM / "issued.pem").read_bytes())
    assert rep.status is PKIStatus.SUCCESS and rep.cipher is ContentCipher.AES128_CBC and rep.digest is Digest.SHA1
    assert rep.certs == [issued.public_bytes(serialization.Encoding.DER)]
    assert rep.transaction_id == req.transaction_id and rep.recipient_nonce == req.sender_nonce


def test_capture_order_of_operations():
    # scepclient does GetCACert, then GetCACaps, then POSTs the PKIOperation.
    assert CAPTURES["operations"][:3] == ["GetCACert", "GetCACaps", "PKIOperation"]
