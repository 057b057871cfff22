"""The SHA-256 of an enrolment's CSR key identifies it everywhere (the transaction, the compromised-key check, a
one-time challenge's redemption, the foreign-signer rule, a CertPoll's requester): it is computed once, in the
decryption stage, and handed on."""
from __future__ import annotations


from scep_server.ca import inventory
from scep_server.scep import PKIStatus
from tests.enrolment.test_rules import ca, h, keys  # noqa: F401 - fixtures


async def test_the_csr_keys_digest_is_computed_once_per_enrolment(h, keys, monkeypatch):
    real = inventory.public_key_sha256
    spki = []

    def counting(pub):
        spki.append(real(pub))
        return spki[-1]

    monkeypatch.setattr(inventory, "public_key_sha256", counting)
    h.profiles.add("p")
    h.profiles.add("manual", require_approval=True)
    device = real(keys[0].public_key())
    assert (await h.enrol("p", keys[0])).status is PKIStatus.SUCCESS
    assert spki.count(device) == 1, spki  # the request signed by the CSR's own key, as most clients do
    spki.clear()
    assert (await h.enrol("manual", keys[1])).status is PKIStatus.PENDING
    assert spki.count(real(keys[1].public_key())) == 1, spki


async def test_a_challenge_verifier_is_handed_the_digest(h, keys):
    """A one-time challenge is redeemed for the CSR's key (scep_server.challenge.service): by the digest the
    enrolment computed."""
    seen = []

    class Verifier:
        async def verify(self, req):
            seen.append(req.public_key_sha256)

        async def after_issue(self, req, cert):
            return None

        async def after_failure(self, req, text):
            return None

    h.service.verifiers["dynamic"] = Verifier()
    h.profiles.add("dyn", kind="dynamic")
    assert (await h.enrol("dyn", keys[2])).status is PKIStatus.SUCCESS
    assert seen == [inventory.public_key_sha256(keys[2].public_key())]
