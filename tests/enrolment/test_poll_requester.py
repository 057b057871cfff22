"""A CertPoll is answered only to the requester (RFC 8894 §3.3.3): signed by the key that signed the request, or by
the CSR's key. transactionIDs are derived from public keys and are no secret: anyone else gets the answer of an
unknown transactionID and learns nothing (state, failInfoText, certificate). Rules on the in-memory repository
(tests/challenge/test_poll_requester.py runs them against the server on SQLite and PostgreSQL)."""
from __future__ import annotations

from cryptography import x509

from scep_server.scep import FailInfo, MessageType, PKIStatus, client
from tests.enrolment.test_rules import SECRET, Harness, ca, h, keys  # noqa: F401 - fixtures


def txid(key) -> str:
    return client.transaction_id_for(key.public_key())


async def poll_as(h: Harness, profile: str, txid_: str, signer_key, *, cn: str = "device") -> client.CertRepResult:
    """A CertPoll for transaction `txid_`, signed by `signer_key` (a self-signed signer certificate)."""
    subject = x509.Name.from_rfc4514_string(f"CN={cn}")
    body = h.body(MessageType.CERT_POLL, signer_key, client.issuer_and_subject(h.ca.cert.subject, subject),
                  txid=txid_)
    return await h.send(profile, body, signer_key)


async def enrol_signed_by(h: Harness, profile: str, csr_key, signer_key) -> client.CertRepResult:
    body = h.body(MessageType.PKCS_REQ, csr_key, client.make_csr(csr_key, "device", SECRET, ()), txid=txid(csr_key),
                  signer_der=client.make_self_signed_signer(signer_key), signer_key=signer_key)
    return await h.send(profile, body, signer_key)


def unknown(rep: client.CertRepResult) -> bool:
    """The answer of a transactionID nobody used."""
    return (rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_CERT_ID
            and rep.fail_text == "no enrolment with this transactionID" and not rep.certs)


async def test_another_signer_learns_nothing_of_a_pending_enrolment(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    assert unknown(await poll_as(h, "manual", "never-used", keys[1]))
    assert unknown(await poll_as(h, "manual", txid(keys[0]), keys[1]))
    assert (await poll_as(h, "manual", txid(keys[0]), keys[0])).status is PKIStatus.PENDING


async def test_another_signer_gets_neither_the_certificate_nor_the_rejection(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    assert (await h.enrol("manual", keys[2])).status is PKIStatus.PENDING
    await h.service.decide("manual", txid(keys[0]), approve=True, actor="admin")
    await h.service.decide("manual", txid(keys[2]), approve=False, actor="admin", reason="lost laptop of J. Doe")
    assert unknown(await poll_as(h, "manual", txid(keys[0]), keys[1]))
    assert unknown(await poll_as(h, "manual", txid(keys[2]), keys[1]))
    assert (await poll_as(h, "manual", txid(keys[0]), keys[0])).status is PKIStatus.SUCCESS
    rejected = await poll_as(h, "manual", txid(keys[2]), keys[2])
    assert rejected.status is PKIStatus.FAILURE and rejected.fail_text == "lost laptop of J. Doe"


async def test_an_issued_enrolment_is_polled_only_by_its_requester(h, keys):
    h.profiles.add("p")
    assert (await h.enrol("p", keys[0])).status is PKIStatus.SUCCESS
    assert unknown(await poll_as(h, "p", txid(keys[0]), keys[1]))
    assert (await poll_as(h, "p", txid(keys[0]), keys[0])).status is PKIStatus.SUCCESS


async def test_a_request_signed_by_another_key_is_polled_by_that_key_or_the_csrs(h, keys):
    """Profiles that allow a signer other than the CSR's key (require_signer_csr_key off, the default)."""
    h.profiles.add("manual", require_approval=True)
    assert (await enrol_signed_by(h, "manual", keys[0], keys[1])).status is PKIStatus.PENDING
    stored = h.repo.transactions[("manual", txid(keys[0]))]
    assert stored["signer_key_sha256"] != stored["public_key_sha256"]
    assert (await poll_as(h, "manual", txid(keys[0]), keys[1])).status is PKIStatus.PENDING
    assert (await poll_as(h, "manual", txid(keys[0]), keys[0])).status is PKIStatus.PENDING
    assert unknown(await poll_as(h, "manual", txid(keys[0]), keys[2]))


async def test_a_transaction_stored_without_its_signer_is_polled_as_before(h, keys):
    """Rows written before migration core_0014 have no signer: any signer's CertPoll is answered, as it was."""
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    h.repo.transactions[("manual", txid(keys[0]))]["signer_key_sha256"] = None
    assert (await poll_as(h, "manual", txid(keys[0]), keys[1])).status is PKIStatus.PENDING


async def test_a_pending_renewal_is_polled_by_its_signing_certificate(h, keys):
    from tests.enrolment.test_rules import renewal_profile

    from datetime import timedelta

    renewal_profile(h, require_approval=True, renewal_requires_approval=True)
    first = await h.enrol("r", keys[0])
    assert first.status is PKIStatus.PENDING
    await h.service.decide("r", txid(keys[0]), approve=True, actor="admin")
    signer_der = (await h.poll("r", keys[0])).certs[0]
    h.clock.advance(timedelta(days=25))
    assert (await h.renew("r", signer_der, keys[0], keys[1])).status is PKIStatus.PENDING
    subject = x509.Name.from_rfc4514_string("CN=device")
    content = client.issuer_and_subject(h.ca.cert.subject, subject)
    by_signer = h.body(MessageType.CERT_POLL, keys[1], content, txid=txid(keys[1]), signer_der=signer_der,
                       signer_key=keys[0])
    assert (await h.send("r", by_signer, keys[0])).status is PKIStatus.PENDING
    assert unknown(await poll_as(h, "r", txid(keys[1]), keys[2]))


def refused_to_another(rep: client.CertRepResult) -> bool:
    """The answer to a known transaction's request signed by neither the requester's key nor the CSR's."""
    return (rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
            and rep.fail_text == "this transactionID was already used by another requester" and not rep.certs)


async def test_a_captured_request_signed_again_by_another_key_gets_no_certificate(h, keys):
    """The envelope of a captured PKCSReq is signed again by an attacker's key (the CSR inside is the device's):
    the retry is not the requester's, so it learns nothing of the transaction; the device's own retry still is."""
    h.profiles.add("p")
    assert (await h.enrol("p", keys[0])).status is PKIStatus.SUCCESS
    assert refused_to_another(await enrol_signed_by(h, "p", keys[0], keys[1]))
    again = await h.enrol("p", keys[0])
    assert again.status is PKIStatus.SUCCESS and again.certs


async def test_a_captured_request_signed_again_learns_neither_the_state_nor_the_rejection(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    assert (await h.enrol("manual", keys[2])).status is PKIStatus.PENDING
    assert refused_to_another(await enrol_signed_by(h, "manual", keys[0], keys[1]))
    await h.service.decide("manual", txid(keys[2]), approve=False, actor="admin", reason="lost laptop of J. Doe")
    assert refused_to_another(await enrol_signed_by(h, "manual", keys[2], keys[1]))
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    rejected = await h.enrol("manual", keys[2])
    assert rejected.status is PKIStatus.FAILURE and rejected.fail_text == "lost laptop of J. Doe"


async def test_a_request_signed_by_another_key_is_retried_by_that_key_or_the_csrs(h, keys):
    h.profiles.add("p")
    first = await enrol_signed_by(h, "p", keys[0], keys[1])
    assert first.status is PKIStatus.SUCCESS
    assert (await enrol_signed_by(h, "p", keys[0], keys[1])).certs == first.certs
    assert (await h.enrol("p", keys[0])).certs == first.certs
    assert refused_to_another(await enrol_signed_by(h, "p", keys[0], keys[2]))
    assert len([r for r in h.repo.transactions if r[0] == "p"]) == 1
