"""A pkcsPKIEnvelope lists one RecipientInfo per certificate the client encrypted its content key to (one RA
certificate; micromdm's scepclient encrypts to every certificate GetCACert returns: the RA certificates and the
CA). One listing thousands of tiny RecipientInfos (64 KiB hold about 2,000) made the server parse each and compare
each with every RA certificate, several times the work of a real request: at most MAX_RECIPIENTS are walked, and
an envelope with more is refused (badRequest) before anything is decrypted or looked up."""
from __future__ import annotations

import os

import pytest
from asn1crypto import cms as asn1_cms
from cryptography import x509

from scep_server.scep import FailInfo, MessageType, PKIStatus, client, cms, oids
from scep_server.scep.types import ContentCipher, Digest
from tests.enrolment.test_rules import SECRET, Harness, ca, h  # noqa: F401  (fixtures)
from tests.factories import make_ca, rsa_key
from trustkit import der

MAX_RECIPIENTS = 16  # scep_server.scep.cms.MAX_RECIPIENTS


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    """Another CA: its RA certificate is named by the RecipientInfos that are not ours."""
    return make_ca(tmp_path_factory.mktemp("stranger"))


def envelope(content: bytes, ours: bytes, other: bytes, extra: int, *, tiny: bool) -> bytes:
    """``content`` enveloped to ``ours`` behind ``extra`` RecipientInfos naming ``other`` (with ``tiny``: an empty
    issuer, serial 1 and a one-byte encryptedKey, the smallest a RecipientInfo gets)."""
    def to(cert_der: bytes) -> bytes:
        return cms.build_enveloped_data(content, recipient_cert_der=cert_der,
                                        recipient_key=x509.load_der_x509_certificate(cert_der).public_key(),
                                        cipher=ContentCipher.AES128_CBC, cek=key, iv=iv)
    key, iv = os.urandom(16), os.urandom(16)
    mine = asn1_cms.ContentInfo.load(to(ours))
    decoy = asn1_cms.ContentInfo.load(to(other))["content"]["recipient_infos"][0]
    if tiny:
        decoy.chosen["encrypted_key"] = b"\x00"
        decoy.chosen["rid"].chosen["issuer"] = asn1_cms.Name.build({})
        decoy.chosen["rid"].chosen["serial_number"] = 1
    mine["content"]["recipient_infos"] = asn1_cms.RecipientInfos(
        [*[decoy] * extra, mine["content"]["recipient_infos"][0]])
    return mine.dump(force=True)


def request(h: Harness, message_type: MessageType, key, enveloped: bytes, txid: str) -> bytes:
    attrs = [cms.attribute(oids.MESSAGE_TYPE_DER, der.printable(str(int(message_type)))),
             cms.attribute(oids.TRANSACTION_ID_DER, der.printable(txid)),
             cms.attribute(oids.SENDER_NONCE_DER, der.octet_string(os.urandom(16)))]
    return cms.build_signed_data(econtent=enveloped, signer_cert_der=client.make_self_signed_signer(key),
                                 sign=client.rsa_signer(key), digest=Digest.SHA256, extra_attrs=attrs)


@pytest.mark.parametrize("message_type", [MessageType.CERT_POLL, MessageType.PKCS_REQ])
async def test_an_envelope_of_thousands_of_recipients_is_refused_before_decryption(h, stranger, message_type):
    h.profiles.add("manual", require_approval=True)
    key = rsa_key()
    content = (client.issuer_and_subject(h.ca.cert.subject, x509.Name.from_rfc4514_string("CN=dev"))
               if message_type is MessageType.CERT_POLL else client.make_csr(key, "dev", SECRET, ()))
    body = request(h, message_type, key, envelope(content, h.ca.ra_cert_der, stranger.ra_cert_der, 1900, tiny=True),
                   client.transaction_id_for(key.public_key()))
    assert len(body) < 64 * 1024  # what the HTTP layer accepts
    rep = await h.send("manual", body, key)
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST, rep.fail_text
    assert f"more than {MAX_RECIPIENTS}" in rep.fail_text
    assert h.stored() == (0, 0, 0)


async def test_an_envelope_naming_the_ra_among_a_few_other_recipients_enrols(h, stranger):
    """scepclient's envelope names the RA certificate(s) and the CA: a few RecipientInfos, ours not first."""
    h.profiles.add("manual", require_approval=True)
    key = rsa_key()
    body = request(h, MessageType.PKCS_REQ, key,
                   envelope(client.make_csr(key, "dev", SECRET, ()), h.ca.ra_cert_der, stranger.ra_cert_der,
                            MAX_RECIPIENTS - 1, tiny=False),
                   client.transaction_id_for(key.public_key()))
    rep = await h.send("manual", body, key)
    assert rep.status is PKIStatus.PENDING, rep.fail_text
