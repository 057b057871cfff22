"""A request's challengePassword is in no representation of what carries it after decryption (the decrypted
content, the request the challenge verifiers see): not in a log line, an error or a traceback that shows one, as
an issued one-time challenge (IssuedChallenge) and a YubiKey's secrets (SecretRecord) are not."""
from __future__ import annotations

import os

from scep_server.enrolment import EnrollmentRequest
from scep_server.scep import ContentCipher, MessageType, client, open_request, parse_pki_message
from tests.factories import make_ca, rsa_key

CHALLENGE = "TopSecretChallenge-4711"


def test_the_challenge_is_in_no_representation(tmp_path):
    ca, key = make_ca(tmp_path), rsa_key()
    cipher = ContentCipher.AES128_CBC
    body = client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(key, "device", CHALLENGE, ()),
        signer_cert_der=client.make_self_signed_signer(key), signer_key=key, recipient_cert_der=ca.ra_cert_der,
        transaction_id="t-1", sender_nonce=os.urandom(16), cek=os.urandom(cipher.key_size),
        iv=os.urandom(cipher.block_size), cipher=cipher)
    message = parse_pki_message(body)
    content = open_request(message, None, recipients=ca.ra_recipients)
    assert CHALLENGE.encode() in content.der  # decrypted: the CSR with its challengePassword
    request = EnrollmentRequest(profile=None, message=message, csr=content.csr, csr_der=content.der,
                                challenge=CHALLENGE, renewal_of=None)
    for shown in (repr(message), repr(content), str(content), repr(request), str(request)):
        assert CHALLENGE not in shown
    assert "transaction_id='t-1'" in repr(request)  # the rest is still shown
