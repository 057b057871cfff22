"""A request signed by another key than its CSR's, for a key the profile already knows, is refused before its
challenge is looked at: a one-time challenge is not used up by it, and a delegated validator is not asked. SQLite
and PostgreSQL."""
from __future__ import annotations

import os

import aiohttp

from scep_server.scep import FailInfo, MessageType, PKIStatus, client
from scep_server.scep.types import ContentCipher
from tests.challenge.conftest import add_profile, build, dynamic, pki
from tests.factories import rsa_key

REFUSAL = ("this key is enrolled at this profile already: its requests must be signed by the key itself (or, to "
           "renew, by its certificate)")


def signed_by(srv, csr_key, signer_key, challenge: str, txid: str) -> bytes:
    ca = next(iter(srv.runtime.cas.values()))
    cipher = ContentCipher.AES128_CBC
    return client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(csr_key, "device", challenge, ()),
        signer_cert_der=client.make_self_signed_signer(signer_key), signer_key=signer_key,
        recipient_cert_der=ca.ra_cert_der, transaction_id=txid, sender_nonce=os.urandom(16),
        cek=os.urandom(cipher.key_size), iv=os.urandom(cipher.block_size), cipher=cipher)


async def test_a_foreign_signer_for_a_known_key_does_not_use_up_a_one_time_challenge(server):
    await add_profile(server, "dyn", "dynamic", dynamic())
    challenges = server.runtime.challenges
    key, other = rsa_key(), rsa_key()
    first = await challenges.new_challenge("dyn", source="api")
    async with aiohttp.ClientSession() as s:
        rep = await pki(s, server, "dyn", build(server, key, challenge=first.challenge), key)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        fresh = await challenges.new_challenge("dyn", source="api")
        rep = await pki(s, server, "dyn", signed_by(server, key, other, fresh.challenge, "foreign-1"), other)
        assert (rep.status, rep.fail_info, rep.fail_text) == (PKIStatus.FAILURE, FailInfo.BAD_REQUEST, REFUSAL)
        # the challenge is still there for the request it was meant for
        third = rsa_key()
        rep = await pki(s, server, "dyn", build(server, third, challenge=fresh.challenge), third)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
