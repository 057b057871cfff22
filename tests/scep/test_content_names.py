"""The Names inside a CertPoll's IssuerAndSubject and a GetCert's or GetCRL's IssuerAndSerialNumber: a CA's name has
a handful of attributes and a subject at most 32 (ca.policy.MAX_SUBJECT_ATTRIBUTES), but a 64 KiB request holds a
Name of 4,000 or more, each made into a cryptography NameAttribute (about 15 ms, several times an enrolment's
work). A Name of more than MAX_NAME_ATTRIBUTES attributes is a fault of the content, answered as every
decryption-stage fault is (badMessageCheck), before it is built."""
from __future__ import annotations

import os

import pytest
from cryptography import x509

from scep_server.scep import FailInfo, MessageType, PKIStatus, SCEPFailure, client, parse_issuer_and_serial
from scep_server.scep import parse_issuer_and_subject
from tests.enrolment.test_rules import ca, h  # noqa: F401  (fixtures)
from tests.factories import rsa_key
from trustkit import der

MAX_NAME_ATTRIBUTES = 64  # scep_server.scep.message.MAX_NAME_ATTRIBUTES


def name_of(n: int, *, one_rdn: bool = False) -> bytes:
    """A Name of ``n`` distinct common names: one RDN each, or all in one RDN."""
    atvs = [der.seq(der.oid("2.5.4.3"), der.utf8(f"n{i}")) for i in range(n)]
    if one_rdn:
        return der.tlv(0x30, der.tlv(0x31, b"".join(atvs)))
    return der.tlv(0x30, b"".join(der.tlv(0x31, a) for a in atvs))


@pytest.mark.parametrize("one_rdn", [False, True], ids=["RDNs", "one RDN"])
def test_a_name_of_more_attributes_than_any_ca_or_subject_is_refused(ca, one_rdn):
    issuer = ca.cert.subject.public_bytes()
    for n in (MAX_NAME_ATTRIBUTES + 1, 5000):
        with pytest.raises(SCEPFailure, match=f"more than {MAX_NAME_ATTRIBUTES}"):
            parse_issuer_and_subject(der.tlv(0x30, issuer + name_of(n, one_rdn=one_rdn)))
        with pytest.raises(SCEPFailure, match=f"more than {MAX_NAME_ATTRIBUTES}"):
            parse_issuer_and_serial(der.tlv(0x30, name_of(n, one_rdn=one_rdn) + der.integer(5)))
    _, subject = parse_issuer_and_subject(der.tlv(0x30, issuer + name_of(MAX_NAME_ATTRIBUTES, one_rdn=one_rdn)))
    assert len(subject) == MAX_NAME_ATTRIBUTES


async def test_a_cert_poll_naming_a_subject_of_thousands_of_attributes_is_one_decryption_stage_fault(h):
    h.profiles.add("manual", require_approval=True)
    key = rsa_key()
    content = der.tlv(0x30, h.ca.cert.subject.public_bytes() + name_of(3800))
    assert len(content) < 64 * 1024
    body = client.build_request(MessageType.CERT_POLL, content=content, signer_cert_der=client.make_self_signed_signer(key),
                                signer_key=key, recipient_cert_der=h.ca.ra_cert_der, transaction_id="poll-3800",
                                sender_nonce=os.urandom(16), cek=os.urandom(16), iv=os.urandom(16))
    rep = await h.send("manual", body, key)
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_MESSAGE_CHECK, rep.fail_text
    assert rep.fail_text == "cannot decrypt the pkcsPKIEnvelope"
    # a subject a certificate may have is read as before: the poll finds no such enrolment
    content = der.tlv(0x30, h.ca.cert.subject.public_bytes() + name_of(32))
    body = client.build_request(MessageType.CERT_POLL, content=content, signer_cert_der=client.make_self_signed_signer(key),
                                signer_key=key, recipient_cert_der=h.ca.ra_cert_der, transaction_id="poll-32",
                                sender_nonce=os.urandom(16), cek=os.urandom(16), iv=os.urandom(16))
    rep = await h.send("manual", body, key)
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_CERT_ID, rep.fail_text
