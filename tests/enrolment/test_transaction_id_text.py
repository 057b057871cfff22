"""A transactionID is shown where an administrator decides on a pending enrolment (`enrolment list`, the console,
the API) and typed back to approve it: one holding a C1 control (U+009B is a terminal's CSI: it can move the
cursor and rewrite the rows above) or a bidirectional formatting character (it reorders the rest of the line) is
refused like one holding a C0 control, before anything is stored; the subject is held to the same rule."""
from __future__ import annotations

import os

import pytest
from cryptography import x509

from scep_server.scep import MessageType, PKIStatus, client, cms, oids
from scep_server.scep.types import Digest
from tests.enrolment.test_rules import SECRET, Harness, ca, h, refused  # noqa: F401  (fixtures)
from tests.factories import rsa_key
from trustkit import der


def request(h: Harness, message_type: MessageType, key, content: bytes, txid: str) -> bytes:
    """A request whose transactionID is a UTF8String (as some clients send it)."""
    ra = h.ca.ra_cert_der
    envelope = cms.build_enveloped_data(content, recipient_cert_der=ra,
                                        recipient_key=x509.load_der_x509_certificate(ra).public_key(),
                                        cipher=client.ContentCipher.AES128_CBC, cek=os.urandom(16), iv=os.urandom(16))
    attrs = [cms.attribute(oids.MESSAGE_TYPE_DER, der.printable(str(int(message_type)))),
             cms.attribute(oids.TRANSACTION_ID_DER, der.utf8(txid)),
             cms.attribute(oids.SENDER_NONCE_DER, der.octet_string(os.urandom(16)))]
    return cms.build_signed_data(econtent=envelope, signer_cert_der=client.make_self_signed_signer(key),
                                 sign=client.rsa_signer(key), digest=Digest.SHA256, extra_attrs=attrs)


@pytest.mark.parametrize("txid", ["device-7\u009b1A\u009b2K", "device-7\u0085", "device-7\u202egpj.exe",
                                  "device-7\u2066x\u2069", "device-7\u200f"],
                         ids=["CSI", "NEL", "RLO", "LRI-PDI", "RLM"])
async def test_a_transaction_id_with_a_c1_or_bidi_control_is_refused(h, txid):
    h.profiles.add("manual", require_approval=True)
    key = rsa_key()
    rep = await h.send("manual", request(h, MessageType.PKCS_REQ, key, client.make_csr(key, "device-7", SECRET, ()),
                                         txid), key)
    assert refused(rep, "invalid transactionID"), rep.fail_text
    assert h.stored() == (0, 0, 0)
    poll = client.issuer_and_subject(h.ca.cert.subject, x509.Name.from_rfc4514_string("CN=device-7"))
    rep = await h.send("manual", request(h, MessageType.CERT_POLL, key, poll, txid), key)
    assert refused(rep, "invalid transactionID"), rep.fail_text


async def test_a_transaction_id_in_other_scripts_is_accepted(h):
    h.profiles.add("manual", require_approval=True)
    key = rsa_key()
    rep = await h.send("manual", request(h, MessageType.PKCS_REQ, key, client.make_csr(key, "device-7", SECRET, ()),
                                         "ünïcode-идентификатор-7"), key)
    assert rep.status is PKIStatus.PENDING, rep.fail_text
