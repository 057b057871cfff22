"""Attestation nonces are spent by value: encoding variants of one nonce are not further nonces."""
from __future__ import annotations

import asyncio
import base64

from cryptography.hazmat.primitives import serialization

from scep_server.binding.attestation import Verdict
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from tests.binding.conftest import sign
from tests.binding.conftest import ca  # noqa: F401 - fixture
from tests.binding.test_nonces import _serial, _spellings, _spent, env, service  # noqa: F401 - fixture
from tests.factories import NOW, csr, record_issued


async def test_spellings_of_one_nonce_are_one_nonce(engine, env, ca):
    """1,000 encoding variants of one nonce, each correctly signed, plus the nonce itself: one acceptance."""
    from cryptography.hazmat.primitives.asymmetric import ec

    store, clock = env
    att = service(engine, ca, clock)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(csr(key, "device"), IssuancePolicy(CertificateTemplate()), serial=next(_serial), now=NOW)
    await record_issued(engine, ca, cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    await store.create("d1", actor="t")
    nonce = (await att.challenge("d1"))["nonce"]
    texts = _spellings(nonce, 1000) + [nonce]

    async def one(text):
        sig = base64.b64decode(sign(key, text, "d1", "ecdsa-sha256"))
        return (await att.verify(device_id="d1", nonce=text, certificate=der, signature=sig,
                                 algorithm="ecdsa-sha256")).reason

    reasons = await asyncio.gather(*(one(t) for t in texts))
    assert reasons.count(Verdict.MANAGED) == 1, [r.value for r in reasons].count("managed")
    assert reasons[-1] is Verdict.MANAGED  # the canonical text is the one accepted
    assert set(reasons[:-1]) == {Verdict.NONCE_UNKNOWN}
    assert await _spent(engine) == 1
