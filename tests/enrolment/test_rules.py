"""The enrolment rules on the in-memory repository: real pkiMessages through ScepService, no database."""
from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import timedelta

import pytest
from trustkit.problems import Conflict
from cryptography import x509

from scep_server.ca.inventory import Reason, serial_hex
from scep_server.ca.policy import CertificateTemplate
from scep_server.enrolment import ChallengeRejected, EnrollmentRequest, ScepService
from scep_server.enrolment.memory import InMemoryRepository
from scep_server.enrolment.repository import Binding
from scep_server.profiles import Profile, ProfileSettings, UnknownProfile
from scep_server.scep import FailInfo, MessageType, PKIStatus, client
from tests.factories import NOW, make_ca, rsa_key
from trustkit.clock import SettableClock

SECRET = "in-memory-secret"


class Profiles:
    """A ProfileStore stand-in: profiles by name."""

    def __init__(self) -> None:
        self.by_name: dict[str, Profile] = {}

    def add(self, name: str, *, kind: str = "static", **settings) -> Profile:
        profile = Profile(name=name, ca="default", challenge_kind=kind,
                          static_secret_sha256=hashlib.sha256(SECRET.encode()).hexdigest(),
                          settings=ProfileSettings(**settings))
        self.by_name[name] = profile
        return profile

    async def get(self, name: str) -> Profile:
        try:
            return self.by_name[name]
        except KeyError:
            raise UnknownProfile(name) from None


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def keys():
    return [rsa_key() for _ in range(4)]


class Harness:
    def __init__(self, ca):
        self.ca = ca
        self.repo = InMemoryRepository()
        self.profiles = Profiles()
        self.clock = SettableClock(NOW + timedelta(minutes=1))
        self.service = ScepService(cas={"default": ca}, profiles=self.profiles, clock=self.clock,
                                   repository=self.repo, threads=2)

    def body(self, message_type: MessageType, key, content: bytes, *, txid: str, signer_der: bytes | None = None,
             signer_key=None) -> bytes:
        return client.build_request(
            message_type, content=content, signer_cert_der=signer_der or client.make_self_signed_signer(key),
            signer_key=signer_key or key, recipient_cert_der=self.ca.ra_cert_der, transaction_id=txid,
            sender_nonce=os.urandom(16), cek=os.urandom(16), iv=os.urandom(16))

    async def send(self, profile: str, body: bytes, reply_key) -> client.CertRepResult:
        reply = await self.service.pki_operation(profile, body)
        return client.parse_cert_rep(reply, reply_key, ra_cert_der=self.ca.ra_cert_der)

    async def enrol(self, profile: str, key, *, cn: str = "device", challenge: str | None = SECRET, sans=(),
                    txid: str | None = None) -> client.CertRepResult:
        txid = txid or client.transaction_id_for(key.public_key())
        body = self.body(MessageType.PKCS_REQ, key, client.make_csr(key, cn, challenge, sans), txid=txid)
        return await self.send(profile, body, key)

    async def poll(self, profile: str, key, *, cn: str = "device") -> client.CertRepResult:
        subject = x509.Name.from_rfc4514_string(f"CN={cn}")
        body = self.body(MessageType.CERT_POLL, key, client.issuer_and_subject(self.ca.cert.subject, subject),
                         txid=client.transaction_id_for(key.public_key()))
        return await self.send(profile, body, key)

    async def renew(self, profile: str, signer_der: bytes, signer_key, new_key, *, cn: str = "device",
                    sans=()) -> client.CertRepResult:
        body = self.body(MessageType.RENEWAL_REQ, new_key, client.make_csr(new_key, cn, None, sans),
                         txid=client.transaction_id_for(new_key.public_key()), signer_der=signer_der,
                         signer_key=signer_key)
        return await self.send(profile, body, signer_key)

    def stored(self) -> tuple[int, int, int]:
        return len(self.repo.certificates), len(self.repo.transactions), len(self.repo.events)


@pytest.fixture
async def h(ca):
    harness = Harness(ca)
    yield harness
    await harness.service.close()


def serial_of(rep: client.CertRepResult) -> str:
    return serial_hex(x509.load_der_x509_certificate(rep.certs[0]).serial_number)


def refused(rep: client.CertRepResult, text: str) -> bool:
    return rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST and text in (rep.fail_text or "")


# ---------------------------------------------------------------- transactions

async def test_a_retry_of_a_transaction_returns_the_same_certificate(h, keys):
    h.profiles.add("p")
    first = await h.enrol("p", keys[0])
    again = await h.enrol("p", keys[0])
    assert first.status is PKIStatus.SUCCESS and again.status is PKIStatus.SUCCESS
    assert again.certs[0] == first.certs[0]
    assert h.stored() == (1, 1, 1)
    assert h.repo.events[0]["kind"] == "pki.cert.issue" and h.repo.events[0]["subject"] == serial_of(first)


async def test_a_different_key_under_a_used_transaction_id_is_refused(h, keys):
    h.profiles.add("p")
    txid = client.transaction_id_for(keys[0].public_key())
    assert (await h.enrol("p", keys[0], txid=txid)).status is PKIStatus.SUCCESS
    rep = await h.enrol("p", keys[1], txid=txid)
    assert refused(rep, "already used with a different key")
    assert h.stored() == (1, 1, 1)


async def test_concurrent_retries_issue_one_certificate(h, keys):
    h.profiles.add("p")
    reps = await asyncio.gather(*(h.enrol("p", keys[0]) for _ in range(4)))
    assert {r.status for r in reps} == {PKIStatus.SUCCESS}
    assert len({r.certs[0] for r in reps}) == 1
    assert len(h.repo.certificates) == 1


async def test_a_transaction_id_no_client_sends_is_refused_before_anything_is_stored(h, keys):
    h.profiles.add("p")
    rep = await h.enrol("p", keys[0], txid="bad\x00id")
    assert refused(rep, "invalid transactionID")
    assert h.stored() == (0, 0, 0)


# ---------------------------------------------------------------- challenge and policy

async def test_a_wrong_or_missing_challenge_answers_bad_request_and_records_nothing(h, keys):
    h.profiles.add("p")
    assert refused(await h.enrol("p", keys[0], challenge="wrong"), "invalid challenge password")
    assert refused(await h.enrol("p", keys[1], challenge=None), "no challengePassword")
    assert h.stored() == (0, 0, 0)


async def test_the_template_refuses_before_the_challenge_is_asked(h, keys):
    h.profiles.add("p")  # the default template copies no SAN
    asked = []

    class Counting:
        async def verify(self, req: EnrollmentRequest):
            asked.append(req)

        async def after_issue(self, req, cert):
            return None

        async def after_failure(self, req, text):
            return None

    h.service.verifiers["static"] = Counting()
    rep = await h.enrol("p", keys[0], sans=["device.example.com"])
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
    assert "subject alternative name" in rep.fail_text
    assert asked == [] and h.stored() == (0, 0, 0)


async def test_the_template_judges_the_subject_and_sans_once_per_enrolment(h, keys, monkeypatch):
    """The decryption stage's verdict (IssuancePolicy.check) is what the certificate and its inventory row get:
    the subject and SANs are not judged a second time when the certificate is signed."""
    from scep_server.ca.policy import IssuancePolicy

    h.profiles.add("p", template=CertificateTemplate(san_types=["dns"]))
    calls = []
    judge = IssuancePolicy.subject_and_sans

    def counting(self, csr, **kwargs):
        calls.append(csr)
        return judge(self, csr, **kwargs)

    monkeypatch.setattr(IssuancePolicy, "subject_and_sans", counting)
    rep = await h.enrol("p", keys[0], cn="laptop-7", sans=["laptop-7.example.com"])
    assert rep.status is PKIStatus.SUCCESS and len(calls) == 1
    cert = x509.load_der_x509_certificate(rep.certs[0])
    row = h.repo.certificates[serial_of(rep)]
    assert row["subject"] == cert.subject.rfc4514_string() == "CN=laptop-7"
    assert row["sans"] == '["dns:laptop-7.example.com"]'


async def test_a_verifier_may_name_the_device_and_withdraw_after_issue(h, keys):
    h.profiles.add("p")

    class Naming:
        def __init__(self):
            self.refuse = False

        async def verify(self, req):
            return "device-42"

        async def after_issue(self, req, cert):
            if self.refuse:
                raise ChallengeRejected("the MDM refused the certificate")

        async def after_failure(self, req, text):
            return None

    verifier = h.service.verifiers["static"] = Naming()
    rep = await h.enrol("p", keys[0], cn="named")
    assert rep.status is PKIStatus.SUCCESS
    assert h.repo.certificates[serial_of(rep)]["enrolled_device_id"] == "device-42"

    verifier.refuse = True
    rep = await h.enrol("p", keys[1], cn="withdrawn")
    assert refused(rep, "the MDM refused the certificate")
    withdrawn = [c for c in h.repo.certificates.values() if c["subject"] == "CN=withdrawn"]
    assert [(c["status"], c["revocation_reason"]) for c in withdrawn] == [
        ("revoked", int(Reason.CESSATION_OF_OPERATION))]
    # a retry learns the refusal, and gets no certificate
    assert refused(await h.enrol("p", keys[1], cn="withdrawn"), "the MDM refused the certificate")


# ---------------------------------------------------------------- approval

async def test_a_pending_enrolment_is_issued_once_approved(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    assert (await h.poll("manual", keys[0])).status is PKIStatus.PENDING
    assert h.repo.certificates == {}
    txid = client.transaction_id_for(keys[0].public_key())
    serial = await h.service.decide("manual", txid, approve=True, actor="admin")
    rep = await h.poll("manual", keys[0])
    assert rep.status is PKIStatus.SUCCESS and serial_of(rep) == serial
    assert (await h.enrol("manual", keys[0])).certs[0] == rep.certs[0]  # the retried PKCSReq too
    with pytest.raises(LookupError, match="no pending enrolment"):
        await h.service.decide("manual", txid, approve=False, actor="admin")


async def test_once_the_ca_certificate_expired_enrolments_and_approvals_are_refused_not_failed(h, keys, ca):
    """A certificate ends with its CA's: one issued after the CA expired would end before it starts (cryptography
    refuses to build it, which was an HTTP 500). The request gets a FAILURE naming the expiry before a challenge
    is used; a pending enrolment stays pending (409) until a new CA is active."""
    h.profiles.add("p")
    h.profiles.add("manual", require_approval=True, pending_expiry_days=0)  # waits years, for the CA alone
    assert (await h.enrol("manual", keys[1])).status is PKIStatus.PENDING
    for i, late in enumerate((timedelta(0), timedelta(days=1))):
        h.clock.set(ca.cert.not_valid_after_utc + late)
        rep = await h.enrol("p", keys[0], txid=f"late-{i}")
        assert refused(rep, "the certificate of CA 'default' expired at"), rep.fail_text
    assert h.repo.certificates == {}
    with pytest.raises(Conflict, match="expired at"):
        await h.service.decide("manual", client.transaction_id_for(keys[1].public_key()), approve=True, actor="admin")
    assert [t["state"] for t in h.repo.transactions.values()] == ["pending"]


async def test_a_rejected_enrolment_fails_at_its_next_poll_and_is_not_decided_twice(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    txid = client.transaction_id_for(keys[0].public_key())
    assert await h.service.decide("manual", txid, approve=False, actor="admin", reason="unknown device") == "rejected"
    assert refused(await h.poll("manual", keys[0]), "unknown device")
    with pytest.raises(LookupError):
        await h.service.decide("manual", txid, approve=True, actor="admin")
    assert h.repo.certificates == {}
    assert [e["kind"] for e in h.repo.events] == ["scep.enrolment.reject"]


async def test_two_decisions_at_once_issue_at_most_one_certificate(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    txid = client.transaction_id_for(keys[0].public_key())
    results = await asyncio.gather(h.service.decide("manual", txid, approve=True, actor="a"),
                                   h.service.decide("manual", txid, approve=False, actor="b"),
                                   return_exceptions=True)
    lost = (LookupError, Conflict)  # no longer pending, or decided while this decision was being made (409)
    assert sum(isinstance(r, lost) for r in results) == 1
    assert len(h.repo.certificates) == (1 if isinstance(results[1], lost) else 0)


async def test_an_approval_the_template_now_refuses_rejects_the_enrolment(h, keys):
    from scep_server.enrolment import ApprovalRefused

    h.profiles.add("manual", require_approval=True, template=CertificateTemplate(min_rsa_bits=2048))
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    h.profiles.add("manual", require_approval=True, template=CertificateTemplate(subject_patterns={"CN": "kiosk-.*"}))
    with pytest.raises(ApprovalRefused):
        await h.service.decide("manual", client.transaction_id_for(keys[0].public_key()), approve=True, actor="a")
    assert refused(await h.poll("manual", keys[0]), "template refuses")
    assert h.repo.certificates == {}


# ---------------------------------------------------------------- renewal

def renewal_profile(h: Harness, name: str = "r", **settings) -> None:
    h.profiles.add(name, template=CertificateTemplate(validity_days=30, san_types=["dns"]), **settings)


async def test_a_renewal_within_the_window_supersedes_its_signer(h, keys):
    renewal_profile(h)
    old = await h.enrol("r", keys[0], sans=["a.example.com", "b.example.com"])
    h.clock.advance(days=21)
    rep = await h.renew("r", old.certs[0], keys[0], keys[1], sans=["a.example.com"])
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    signer = h.repo.certificates[serial_of(old)]
    assert (signer["status"], signer["revocation_reason"]) == ("revoked", int(Reason.SUPERSEDED))
    renewed = h.repo.certificates[serial_of(rep)]
    assert renewed["renewal_of"] == serial_of(old)
    assert h.repo.events[-1]["kind"] == "pki.cert.renew"
    # the superseded certificate renews no more
    assert refused(await h.renew("r", old.certs[0], keys[0], keys[2]), "revoked (superseded)")


async def test_a_renewal_before_the_window_is_refused(h, keys):
    renewal_profile(h)
    old = await h.enrol("r", keys[0])
    h.clock.advance(days=5)
    assert refused(await h.renew("r", old.certs[0], keys[0], keys[1]), "renewal is accepted only within 10 days")
    assert len(h.repo.certificates) == 1


async def test_a_renewal_may_not_add_subject_alternative_names(h, keys):
    renewal_profile(h)
    old = await h.enrol("r", keys[0], sans=["a.example.com"])
    h.clock.advance(days=21)
    rep = await h.renew("r", old.certs[0], keys[0], keys[1], sans=["a.example.com", "b.example.com"])
    assert refused(rep, "names subject alternative names the signing certificate does not have")
    renewal_profile(h, "equal", renewal_sans="equal")
    old = await h.enrol("equal", keys[2], cn="eq", sans=["a.example.com", "b.example.com"])
    h.clock.advance(days=21)
    assert refused(await h.renew("equal", old.certs[0], keys[2], keys[3], cn="eq", sans=["a.example.com"]),
                   "differ from the signing certificate's")


async def test_a_revoked_held_or_unbound_signer_is_refused(h, keys):
    renewal_profile(h)
    reps = [await h.enrol("r", key, cn=f"d{i}") for i, key in enumerate(keys[:3])]
    h.clock.advance(days=21)
    h.repo.certificates[serial_of(reps[0])]["status"] = "revoked"
    h.repo.certificates[serial_of(reps[1])]["status"] = "hold"
    h.repo.bindings[serial_of(reps[2])] = Binding(state="active", device_id="dev-1", device_status="retired")
    assert refused(await h.renew("r", reps[0].certs[0], keys[0], keys[3], cn="d0"), "signing certificate is revoked")
    assert refused(await h.renew("r", reps[1].certs[0], keys[1], keys[3], cn="d1"), "signing certificate is on hold")
    assert refused(await h.renew("r", reps[2].certs[0], keys[2], keys[3], cn="d2"),
                   "bound to device dev-1, which is retired")
    assert len(h.repo.certificates) == 3


async def test_a_key_revoked_as_compromised_is_never_certified_again(h, keys):
    """A certificate revoked for keyCompromise (by an administrator, or presented by a second device): its key is
    refused at a new enrolment (any profile) and as a renewal's new key, before a challenge is asked; a key whose
    certificate was revoked otherwise (superseded, withdrawn) enrols again."""
    renewal_profile(h)
    h.profiles.add("other")
    stolen = await h.enrol("r", keys[0], cn="d0")
    h.repo.certificates[serial_of(stolen)].update(status="revoked", revocation_reason=int(Reason.KEY_COMPROMISE))
    for profile in ("r", "other"):
        rep = await h.enrol(profile, keys[0], cn="d0", txid=f"again-{profile}")
        assert refused(rep, f"certificate {serial_of(stolen)} for it was revoked for keyCompromise"), rep.fail_text
    kept = await h.enrol("r", keys[1], cn="d1")
    h.clock.advance(days=21)
    assert refused(await h.renew("r", kept.certs[0], keys[1], keys[0], cn="d1"), "the public key is compromised")
    h.repo.certificates[serial_of(stolen)]["revocation_reason"] = int(Reason.CESSATION_OF_OPERATION)
    assert (await h.enrol("other", keys[0], cn="d0", txid="withdrawn")).status is PKIStatus.SUCCESS
    assert len(h.repo.certificates) == 3


async def test_an_enrolment_waiting_for_approval_whose_key_was_revoked_as_compromised_is_rejected(h, keys):
    from scep_server.enrolment.model import ApprovalRefused

    h.profiles.add("manual", require_approval=True)
    h.profiles.add("other")
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    other = await h.enrol("other", keys[0], txid="other")
    h.repo.certificates[serial_of(other)].update(status="revoked", revocation_reason=int(Reason.KEY_COMPROMISE))
    with pytest.raises(ApprovalRefused, match="revoked for keyCompromise while the enrolment waited"):
        await h.service.decide("manual", client.transaction_id_for(keys[0].public_key()), approve=True, actor="admin")
    assert refused(await h.poll("manual", keys[0]), "revoked for keyCompromise")
    assert len(h.repo.certificates) == 1


async def test_a_renewal_is_renewed_only_at_its_own_profile_unless_listed(h, keys):
    renewal_profile(h, "a")
    renewal_profile(h, "b")
    old = await h.enrol("a", keys[0])
    h.clock.advance(days=21)
    assert refused(await h.renew("b", old.certs[0], keys[0], keys[1]), "is renewed only there")
    renewal_profile(h, "a", renewal_to=["b"])
    assert (await h.renew("b", old.certs[0], keys[0], keys[1])).status is PKIStatus.SUCCESS


async def test_a_renewal_req_not_signed_by_this_ca_needs_a_challenge(h, keys):
    h.profiles.add("p")
    body = h.body(MessageType.RENEWAL_REQ, keys[0], client.make_csr(keys[0], "device"),
                  txid=client.transaction_id_for(keys[0].public_key()))
    assert refused(await h.send("p", body, keys[0]), "RenewalReq must be signed by a valid certificate")
    assert h.stored() == (0, 0, 0)


# ---------------------------------------------------------------- the chain

async def test_a_check_added_to_the_chain_runs_before_issue(h, keys):
    h.profiles.add("p")

    async def no_test_devices(e):
        if e.content.csr.subject.rfc4514_string().startswith("CN=test-"):
            raise e.refuse("test devices are not enrolled here")

    h.service.checks.append(no_test_devices)
    assert refused(await h.enrol("p", keys[0], cn="test-1"), "test devices are not enrolled here")
    assert (await h.enrol("p", keys[1], cn="real-1")).status is PKIStatus.SUCCESS
    assert len(h.repo.certificates) == 1


class NamingMdm:
    """An MDM's verifier (Intune, a webhook) that names the device, as Intune's IntuneDeviceId SAN does, and can
    be told to refuse it or to name another."""

    def __init__(self):
        self.asked = 0
        self.allowed = True
        self.device = "dev-1"

    async def verify(self, req: EnrollmentRequest) -> str | None:
        self.asked += 1
        if not self.allowed:
            raise ChallengeRejected("the MDM no longer allows this device")
        return self.device

    async def after_issue(self, req, cert) -> None:
        return None

    async def after_failure(self, req, text) -> None:
        return None


async def test_a_delegated_renewal_is_revalidated_though_its_signer_names_a_device(h, keys):
    mdm = NamingMdm()
    h.service.verifiers["delegated"] = mdm
    h.profiles.add("mdm", kind="delegated", template=CertificateTemplate(validity_days=30))
    first = await h.enrol("mdm", keys[0])
    assert first.status is PKIStatus.SUCCESS, first.fail_text
    assert h.repo.certificates[serial_of(first)]["enrolled_device_id"] == "dev-1"
    h.clock.advance(days=21)
    mdm.allowed, mdm.asked = False, 0  # retired or non-compliant in the MDM meanwhile
    assert refused(await h.renew("mdm", first.certs[0], keys[0], keys[1]), "no longer allows")
    assert mdm.asked == 1
    mdm.allowed, mdm.device = True, "dev-2"  # the MDM names another device than the signer's
    assert refused(await h.renew("mdm", first.certs[0], keys[0], keys[1]), "names device 'dev-2'")
    mdm.device = "dev-1"
    renewed = await h.renew("mdm", first.certs[0], keys[0], keys[1])
    assert renewed.status is PKIStatus.SUCCESS, renewed.fail_text
    assert h.repo.certificates[serial_of(renewed)]["enrolled_device_id"] == "dev-1"


async def test_two_pending_renewals_of_one_kept_certificate_issue_one_when_approved(h, keys):
    renewal_profile(h, supersede_on_renewal=False, require_approval=True)
    txid = client.transaction_id_for(keys[0].public_key())
    assert (await h.enrol("r", keys[0], txid=txid)).status is PKIStatus.PENDING
    await h.service.decide("r", txid, approve=True, actor="admin")
    old = await h.poll("r", keys[0])
    h.clock.advance(days=21)
    for new_key in keys[1:3]:  # both wait for approval before either is issued
        assert (await h.renew("r", old.certs[0], keys[0], new_key)).status is PKIStatus.PENDING
    pending = [k for (_, k), t in h.repo.transactions.items() if t["state"] == "pending"]
    assert len(pending) == 2
    await h.service.decide("r", pending[0], approve=True, actor="admin")
    with pytest.raises(LookupError, match="already renewed"):
        await h.service.decide("r", pending[1], approve=True, actor="admin")
    renewals = [r for r in h.repo.certificates.values() if r.get("renewal_of") == serial_of(old)]
    assert len(renewals) == 1


class AckFailsOnce:
    """A delegated verifier whose acknowledgement fails once (the MDM unreachable): the certificate waits."""

    def __init__(self):
        self.fail_next = False

    async def verify(self, req) -> None:
        return None

    async def after_issue(self, req, cert) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("connection reset while notifying the MDM")

    async def after_failure(self, req, text) -> None:
        return None


@pytest.mark.parametrize("supersede", [True, False])
async def test_a_waiting_renewal_of_a_signer_revoked_meanwhile_is_not_delivered(h, keys, supersede):
    mdm = AckFailsOnce()
    h.service.verifiers["delegated"] = mdm
    h.profiles.add("mdm", kind="delegated", template=CertificateTemplate(validity_days=30),
                   supersede_on_renewal=supersede)
    old = await h.enrol("mdm", keys[0])
    assert old.status is PKIStatus.SUCCESS, old.fail_text
    h.clock.advance(days=21)
    mdm.fail_next = True
    assert (await h.renew("mdm", old.certs[0], keys[0], keys[1])).status is PKIStatus.PENDING  # awaiting_ack
    h.repo.certificates[serial_of(old)].update(status="revoked", revocation_reason=int(Reason.KEY_COMPROMISE))
    h.clock.advance(minutes=20)
    outcomes = await h.service.reconcile_unacknowledged(older_than=timedelta(minutes=15))
    assert list(outcomes.values()) == ["revoked"], outcomes


class OneTimeForDevice:
    """A one-time challenge whose expectations name device dev-1 (as DynamicVerifier's do)."""

    async def verify(self, req) -> str:
        return "dev-1"

    async def after_issue(self, req, cert) -> None:
        return None

    async def after_failure(self, req, text) -> None:
        return None


async def test_an_approved_enrolment_keeps_the_device_its_challenge_named(h, keys):
    h.service.verifiers["dynamic"] = OneTimeForDevice()
    h.profiles.add("direct", kind="dynamic")
    h.profiles.add("approved", kind="dynamic", require_approval=True)
    direct = await h.enrol("direct", keys[0])
    assert h.repo.certificates[serial_of(direct)]["enrolled_device_id"] == "dev-1"
    txid = client.transaction_id_for(keys[1].public_key())
    assert (await h.enrol("approved", keys[1], txid=txid)).status is PKIStatus.PENDING
    serial = await h.service.decide("approved", txid, approve=True, actor="admin")
    assert h.repo.certificates[serial]["enrolled_device_id"] == "dev-1"


async def test_a_pending_renewal_whose_signer_expired_or_left_its_device_is_rejected_when_approved(h, keys):
    from scep_server.enrolment.model import ApprovalRefused

    renewal_profile(h, require_approval=True)
    olds = []
    for i, key in enumerate(keys[:2]):
        txid = client.transaction_id_for(key.public_key())
        assert (await h.enrol("r", key, cn=f"d{i}", txid=txid)).status is PKIStatus.PENDING
        await h.service.decide("r", txid, approve=True, actor="admin")
        olds.append(await h.poll("r", key, cn=f"d{i}"))
    h.clock.advance(days=21)
    keys_of = {}
    for i, old in enumerate(olds):
        assert (await h.renew("r", old.certs[0], keys[i], keys[2 + i], cn=f"d{i}")).status is PKIStatus.PENDING
        keys_of[i] = next(k for (_, k), t in h.repo.transactions.items()
                          if t["state"] == "pending" and t.get("renewal_of") == serial_of(old))
    h.repo.bindings[serial_of(olds[0])] = Binding(state="active", device_id="dev-1", device_status="retired")
    with pytest.raises(ApprovalRefused, match="bound to device dev-1, which became retired"):
        await h.service.decide("r", keys_of[0], approve=True, actor="admin")
    h.clock.advance(days=10)  # past the signers' 30 days
    with pytest.raises(ApprovalRefused, match="has expired"):
        await h.service.decide("r", keys_of[1], approve=True, actor="admin")
    assert [r for r in h.repo.certificates.values() if r.get("renewal_of")] == []
    assert {h.repo.transactions[("r", k)]["state"] for k in keys_of.values()} == {"rejected"}


async def test_an_enrolment_cannot_take_the_key_of_another_devices_renewal(h, keys):
    """The victim's transactionID and serial number are no secret (any captured request, GetCert): an enrolment
    whose transactionID spells the victim's renewal key gets a key of its own."""
    renewal_profile(h)
    victim_key, attacker_key = keys[0], keys[1]
    victim_txid = client.transaction_id_for(victim_key.public_key())
    victim = await h.enrol("r", victim_key, cn="victim", txid=victim_txid)
    assert victim.status is PKIStatus.SUCCESS
    victim_serial = x509.load_der_x509_certificate(victim.certs[0]).serial_number
    squat = await h.enrol("r", attacker_key, cn="attacker", txid=f"{victim_txid}/renewal/{victim_serial:x}")
    assert squat.status is PKIStatus.SUCCESS
    h.clock.advance(days=21)
    # the victim renews keeping its key, and so its transactionID (docs/scep.md)
    body = h.body(MessageType.RENEWAL_REQ, victim_key, client.make_csr(victim_key, "victim", None, ()),
                  txid=victim_txid, signer_der=victim.certs[0], signer_key=victim_key)
    renewed = await h.send("r", body, victim_key)
    assert renewed.status is PKIStatus.SUCCESS, renewed.fail_text


# ---------------------------------------------------------------- CSRs built by hand (what no library would make)

def _signed_csr(key, name_der: bytes, challenge: str, extensions: list[bytes] = ()) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    from trustkit import der

    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    attrs = [der.seq(der.oid("1.2.840.113549.1.9.7"), der.set_of([der.utf8(challenge)]))]
    if extensions:
        attrs.append(der.seq(der.oid("1.2.840.113549.1.9.14"), der.set_of([der.seq(*extensions)])))
    tbs = der.seq(der.integer(0), name_der, spki, der.tlv(0xA0, b"".join(sorted(attrs))))
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return der.seq(tbs, der.seq(der.oid("1.2.840.113549.1.1.11"), b"\x05\x00"), der.tlv(0x03, b"\x00" + signature))


def _cn(value: bytes, tag: int = 0x0C) -> bytes:
    from trustkit import der

    return der.seq(der.set_of([der.seq(der.oid("2.5.4.3"), der.tlv(tag, value))]))


def _san_extension(value: bytes) -> bytes:
    """A subjectAltName Extension whose extnValue is ``value`` (a SubjectAlternativeName's DER)."""
    from trustkit import der

    return der.seq(der.oid("2.5.29.17"), der.octet_string(value))


def _san(*general_names: bytes) -> bytes:
    from trustkit import der

    return der.seq(der.oid("2.5.29.17"), der.octet_string(der.seq(*general_names)))


async def _send_csr(h, profile: str, key, csr_der: bytes):
    body = h.body(MessageType.PKCS_REQ, key, csr_der, txid=client.transaction_id_for(key.public_key()))
    return await h.send(profile, body, key)


async def test_a_subject_attribute_that_is_no_string_type_is_refused(h, keys):
    """A CN tagged OCTET STRING decodes as text, but is no X.520 string: refused, not copied into a certificate."""
    h.profiles.add("p")
    rep = await _send_csr(h, "p", keys[0], _signed_csr(keys[0], _cn(b"device", tag=0x04), SECRET))
    assert refused(rep, "subject attribute CN is not a string")
    rep = await _send_csr(h, "p", keys[0], _signed_csr(keys[0], _cn(b"device", tag=0x13), SECRET))  # PrintableString
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text


def _name(*attributes: tuple[str, int, bytes]) -> bytes:
    """A Name of one-attribute RDNs: (OID, string tag, encoded value) each."""
    from trustkit import der

    return der.seq(*(der.set_of([der.seq(der.oid(oid), der.tlv(tag, value))]) for oid, tag, value in attributes))


def pkilint_findings(cert_der: bytes, tmp_path) -> str:
    """What pkilint's RFC 5280 profile finds in a certificate (warnings and worse); empty when it finds nothing."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers import require_tool

    lint = require_tool(str(Path(sys.executable).parent / "lint_pkix_cert"))
    path = tmp_path / f"leaf-{hashlib.sha256(cert_der).hexdigest()[:12]}.der"
    path.write_bytes(cert_der)
    out = subprocess.run([lint, "lint", "-s", "WARNING", path], capture_output=True, text=True)
    return "" if out.returncode == 0 else out.stdout + out.stderr


@pytest.mark.parametrize("tag, encoding", [(0x16, "ascii"), (0x1A, "ascii"), (0x12, "ascii"), (0x14, "latin-1"),
                                           (0x1E, "utf-16-be"), (0x1C, "utf-32-be")],
                         ids=["IA5String", "VisibleString", "NumericString", "TeletexString", "BMPString",
                              "UniversalString"])
async def test_a_subject_is_issued_in_the_string_types_rfc_5280_names(h, keys, tmp_path, tag, encoding):
    """A CSR chooses its subject's string types; the certificate carries a DirectoryString as UTF8String (or a
    PrintableString kept), countryName and serialNumber as PrintableString: an IA5String CN or a UTF8String C is
    no X.520 name a relying party decodes (pkilint: invalid ASN.1 syntax), a UniversalString one few parse."""
    from cryptography.x509.name import _ASN1Type
    from cryptography.x509.oid import NameOID

    h.profiles.add("p")
    name = _name(("2.5.4.6", tag, "DE".encode(encoding)), ("2.5.4.5", tag, "0042".encode(encoding)),
                 ("2.5.4.3", tag, "1234".encode(encoding)))
    rep = await _send_csr(h, "p", keys[0], _signed_csr(keys[0], name, SECRET))
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    cert = x509.load_der_x509_certificate(rep.certs[0])
    assert [(a.oid, a.value, a._type) for a in cert.subject] == [
        (NameOID.COUNTRY_NAME, "DE", _ASN1Type.PrintableString),
        (NameOID.SERIAL_NUMBER, "0042", _ASN1Type.PrintableString),
        (NameOID.COMMON_NAME, "1234", _ASN1Type.UTF8String)]
    assert pkilint_findings(rep.certs[0], tmp_path) == ""


async def test_a_subject_of_more_attributes_than_any_device_sends_is_refused(h, keys):
    """Each value is within RFC 5280's upper bound, but 2,000 of them (26 KB, within a request's 64 KiB) would make a
    certificate every relying party parses, and an inventory row, an audit event and a console page, that size."""
    h.profiles.add("p", template=CertificateTemplate(subject_attributes=["CN", "OU"]))
    many = _name(*[("2.5.4.11", 0x0C, b"x")] * 2000, ("2.5.4.3", 0x0C, b"device"))
    rep = await _send_csr(h, "p", keys[0], _signed_csr(keys[0], many, SECRET))
    assert refused(rep, "the subject has 2001 attributes, more than 32"), rep.fail_text
    most = _name(*[("2.5.4.11", 0x0C, b"x%d" % i) for i in range(31)], ("2.5.4.3", 0x0C, b"device"))
    assert (await _send_csr(h, "p", keys[1], _signed_csr(keys[1], most, SECRET))).status is PKIStatus.SUCCESS


async def test_a_subject_value_its_issued_string_type_cannot_carry_is_refused(h, keys):
    """serialNumber and C are PrintableStrings (no `_`, `@`, `*` or letters beyond ASCII), C two letters."""
    h.profiles.add("p")
    for i, (oid, value, text) in enumerate((
            ("2.5.4.5", "C02_X1", "subject attribute serialNumber must be a PrintableString"),
            ("2.5.4.5", "C02X1\u00e9", "subject attribute serialNumber must be a PrintableString"),
            ("2.5.4.6", "D", "subject attribute C must be a two-letter country code"))):
        name = _name((oid, 0x0C, value.encode()), ("2.5.4.3", 0x0C, b"device"))
        rep = await _send_csr(h, "p", keys[i], _signed_csr(keys[i], name, SECRET))
        assert refused(rep, text), rep.fail_text


@pytest.mark.parametrize("usages, key_type, issued", [
    (["digital_signature", "key_encipherment"], "EC", {"digital_signature"}),
    (["digital_signature", "key_encipherment", "data_encipherment", "key_agreement"], "EC",
     {"digital_signature", "key_agreement"}),
    (["digital_signature", "key_agreement"], "RSA", {"digital_signature"}),
    (["key_encipherment", "data_encipherment"], "RSA", {"key_encipherment", "data_encipherment"}),
])
async def test_a_certificate_carries_only_the_key_usages_its_key_type_can_have(h, keys, tmp_path, usages, key_type,
                                                                               issued):
    """A template that names keyEncipherment (what Intune and Jamf profiles commonly ask for) on a profile that
    allows EC: an EC key never enciphers (RFC 5480 §3), an RSA key never agrees keys (RFC 3279 §2.3.1); a
    certificate claiming so is malformed (pkilint: prohibited key usage)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    h.profiles.add("p", template=CertificateTemplate(allow_ec=True, key_usage=usages))
    key = ec.generate_private_key(ec.SECP256R1()) if key_type == "EC" else keys[1]
    body = h.body(MessageType.PKCS_REQ, keys[0], client.make_csr(key, "device", SECRET),
                  txid=client.transaction_id_for(key.public_key()))
    rep = await h.send("p", body, keys[0])
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    ku = x509.load_der_x509_certificate(rep.certs[0]).extensions.get_extension_for_class(x509.KeyUsage).value
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    assert {n for n in names if getattr(ku, n)} == issued
    assert pkilint_findings(rep.certs[0], tmp_path) == ""


async def test_a_key_type_the_template_leaves_no_key_usage_is_refused(h, keys):
    from cryptography.hazmat.primitives.asymmetric import ec

    h.profiles.add("p", template=CertificateTemplate(allow_ec=True, key_usage=["key_encipherment"]))
    key = ec.generate_private_key(ec.SECP256R1())
    body = h.body(MessageType.PKCS_REQ, keys[0], client.make_csr(key, "device", SECRET),
                  txid=client.transaction_id_for(key.public_key()))
    assert refused(await h.send("p", body, keys[0]),
                   "the profile's key usage (key_encipherment) leaves nothing an EC key may be used for")
    assert (await h.enrol("p", keys[1])).status is PKIStatus.SUCCESS


async def test_a_subject_emailaddress_is_issued_beside_the_same_e_mail_san(h, keys, tmp_path):
    """RFC 5280 §4.1.2.6: a certificate with an e-mail address has it as an rfc822Name SAN; an emailAddress in
    the subject alone (pkilint: subject_email_address_not_in_san), as Intune's "CN and e-mail" subject sends it,
    gets that SAN beside it, held to the e-mail rules, whether the profile lets a CSR ask for e-mail SANs or not."""
    name = _name(("2.5.4.3", 0x0C, b"device"), ("1.2.840.113549.1.9.1", 0x16, b"ops@example.com"))
    h.profiles.add("plain", template=CertificateTemplate(subject_attributes=["CN", "emailAddress"]))
    rep = await _send_csr(h, "plain", keys[0], _signed_csr(keys[0], name, SECRET, []))
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    cert = x509.load_der_x509_certificate(rep.certs[0])
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == x509.SubjectAlternativeName(
        [x509.RFC822Name("ops@example.com")])
    assert pkilint_findings(rep.certs[0], tmp_path) == ""

    h.profiles.add("p", template=CertificateTemplate(subject_attributes=["CN", "emailAddress"], san_types=["email"]))
    for i, sans in enumerate(([x509.RFC822Name("other@example.com")], [x509.RFC822Name("ops@example.com")]), 1):
        ext = x509.SubjectAlternativeName(sans).public_bytes()
        rep = await _send_csr(h, "p", keys[i], _signed_csr(keys[i], name, SECRET, [_san_extension(ext)]))
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        cert = x509.load_der_x509_certificate(rep.certs[0])
        assert set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == {
            *sans, x509.RFC822Name("ops@example.com")}
        assert pkilint_findings(rep.certs[0], tmp_path) == ""

    h.profiles.add("q", template=CertificateTemplate(subject_attributes=["CN", "emailAddress"],
                                                     email_domains=["example.org"]))
    rep = await _send_csr(h, "q", keys[3], _signed_csr(keys[3], name, SECRET, []))
    assert refused(rep, "outside the profile's e-mail domains"), rep.fail_text


async def test_an_ip_san_of_an_address_and_a_mask_is_refused(h, keys):
    """8 octets (a name constraint's address and mask) read as a network whose text matches the IP pattern."""
    from trustkit import der

    h.profiles.add("p", template=CertificateTemplate(san_types=["ip"], san_patterns={"ip": r"10\.1\..*"}))
    network = der.tlv(0x87, bytes([10, 1, 0, 0, 255, 255, 0, 0]))
    rep = await _send_csr(h, "p", keys[0], _signed_csr(keys[0], _cn(b"device"), SECRET, [_san(network)]))
    assert refused(rep, "is not one IP address")
    address = der.tlv(0x87, bytes([10, 1, 2, 3]))
    rep = await _send_csr(h, "p", keys[1], _signed_csr(keys[1], _cn(b"device"), SECRET, [_san(address)]))
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text


@pytest.mark.parametrize("san, text", [
    (x509.DNSName("dev-1.example.com."), "'DNS:dev-1.example.com.' is not a host name"),
    (x509.DNSName("_dev-1.example.com"), "'DNS:_dev-1.example.com' is not a host name"),
    (x509.DNSName("dev_.example.com"), "'DNS:dev_.example.com' is not a host name"),
    (x509.DNSName("dev-1._tcp.example.com"), "'DNS:dev-1._tcp.example.com' is not a host name"),
    (x509.RFC822Name("a..b@example.com"), "'email:a..b@example.com' is not an e-mail address"),
    (x509.RFC822Name(".a@example.com"), "'email:.a@example.com' is not an e-mail address"),
    (x509.RFC822Name("a@-example_.com"), "'email:a@-example_.com' is not an e-mail address"),
    (x509.RFC822Name("a@example.com."), "'email:a@example.com.' is not an e-mail address"),
    (x509.RFC822Name("x" * 65 + "@example.com"), "is not an e-mail address"),
    (x509.UniformResourceIdentifier("device-1"), "'URI:device-1' is not an absolute URI"),
    (x509.UniformResourceIdentifier("//devices.example.com/1"), "is not an absolute URI"),
    (x509.UniformResourceIdentifier("https://example.com/<x>"), "is not an absolute URI"),
    (x509.UniformResourceIdentifier("https://example.com/%zz"), "is not an absolute URI"),
])
async def test_a_san_outside_rfc_5280s_syntax_for_its_type_is_refused(h, keys, san, text):
    """RFC 5280 §4.2.1.6: a dNSName in the preferred name syntax (no `_`, no trailing dot), an rfc822Name a
    Mailbox, a URI absolute. A relying party that parses them strictly (pkilint: invalid syntax) or one that
    compares them loosely would each read such a name their own way."""
    h.profiles.add("p", template=CertificateTemplate(san_types=["dns", "email", "uri"]))
    assert refused(await h.enrol("p", keys[0], sans=[san]), text)


async def test_sans_of_every_type_in_rfc_5280s_syntax_are_issued(h, keys, tmp_path):
    sans = [x509.DNSName("Dev-1.example.com"), x509.DNSName("1.example.com"),
            x509.RFC822Name("first.last+tag@example.com"),
            x509.UniformResourceIdentifier("https://devices.example.com/d/1?x=%20y#f")]
    h.profiles.add("p", template=CertificateTemplate(san_types=["dns", "email", "uri"]))
    rep = await h.enrol("p", keys[0], sans=sans)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    cert = x509.load_der_x509_certificate(rep.certs[0])
    assert list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == sans
    assert pkilint_findings(rep.certs[0], tmp_path) == ""


async def test_windows_computer_names_with_underscores_are_issued_and_renewed(h, keys):
    """Windows computer names may hold an `_` (DESKTOP_7K2): Intune and Workspace ONE put the device's FQDN in a DNS
    SAN (and a URI), and its certificates issued before must renew. A label starting with `_` (a service label) or
    ending with one is still no host name; the DNS suffixes still hold."""
    h.profiles.add("r", template=CertificateTemplate(validity_days=30, san_types=["dns", "uri"],
                                                     dns_suffixes=["corp.example.com"]))
    sans = [x509.DNSName("DESKTOP_7K2.corp.example.com"),
            x509.UniformResourceIdentifier("https://ws_01.corp.example.com/")]
    old = await h.enrol("r", keys[0], sans=sans)
    assert old.status is PKIStatus.SUCCESS, old.fail_text
    cert = x509.load_der_x509_certificate(old.certs[0])
    assert list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == sans
    h.clock.advance(days=21)
    renewed = await h.renew("r", old.certs[0], keys[0], keys[1], sans=sans)
    assert renewed.status is PKIStatus.SUCCESS, renewed.fail_text
    for i, san in enumerate((x509.DNSName("DESKTOP_7K2.other.example.com"),
                             x509.UniformResourceIdentifier("https://ws_01.other.example.com/"))):
        rep = await h.enrol("r", keys[2 + i], sans=[san], txid=f"outside-{i}")
        assert refused(rep, "is outside the profile's DNS suffixes"), rep.fail_text


async def test_a_uri_san_naming_a_host_is_held_to_the_dns_suffixes(h, keys):
    """A profile limited to its own domains does not vouch for another's host in a URI SAN (what a name constraint,
    RFC 5280 §4.2.1.10, and a relying party matching URIs read as its domain), userinfo or not; a URI whose
    authority names no host is refused. Undotted hosts (Intune's IntuneDeviceId://<id>), IP addresses and URIs
    without an authority are names only."""
    h.profiles.add("p", template=CertificateTemplate(san_types=["dns", "uri"], dns_suffixes=["devices.example.com"]))
    for i, (uri, text) in enumerate((
            ("https://vpn.example.org/", "'URI:https://vpn.example.org/' is outside the profile's DNS suffixes"),
            ("https://devices.example.com@vpn.example.org:443/", "is outside the profile's DNS suffixes"),
            ("https://vpn.devices.example.com.evil.example/x", "is outside the profile's DNS suffixes"),
            ("https:///etc/passwd", "names no host name or IP address"),
            ("ldap://[2001:db8::1/", "names no host name or IP address"))):
        rep = await h.enrol("p", keys[i % len(keys)], sans=[x509.UniformResourceIdentifier(uri)], txid=f"no-{i}")
        assert refused(rep, text), (uri, rep.fail_text)
    for i, uri in enumerate(("https://Dev-1.Devices.example.com:8443/a?b", "IntuneDeviceId://1b2c3d4e-aaaa",
                             "https://[2001:db8::1]/x", "tag:microsoft.com,2022-09-14:sid:S-1-5-21",
                             "urn:udid:a1b2c3")):
        rep = await h.enrol("p", keys[i % len(keys)], sans=[x509.UniformResourceIdentifier(uri)], txid=f"ok-{i}")
        assert rep.status is PKIStatus.SUCCESS, (uri, rep.fail_text)


async def test_an_approval_applies_the_key_rules_the_template_has_then(h):
    from scep_server.enrolment.model import ApprovalRefused

    key = rsa_key(2048)
    h.profiles.add("manual", require_approval=True, template=CertificateTemplate(min_rsa_bits=2048))
    assert (await h.enrol("manual", key)).status is PKIStatus.PENDING
    h.profiles.add("manual", require_approval=True, template=CertificateTemplate(min_rsa_bits=3072))
    with pytest.raises(ApprovalRefused, match="3072"):
        await h.service.decide("manual", client.transaction_id_for(key.public_key()), approve=True, actor="admin")
    assert h.repo.certificates == {}


@pytest.mark.parametrize("cn", ["laptop\u202egpj.exe", "laptop\u0085", "lap\u2066top\u2069", "laptop\x7f"])
async def test_a_subject_with_control_or_bidi_characters_is_refused(h, keys, cn):
    """A C1 control or a bidirectional override in a CN would hide or reorder what the console and the logs show."""
    h.profiles.add("p")
    assert refused(await h.enrol("p", keys[0], cn=cn), "printable characters")


async def test_a_cn_naming_a_host_or_a_mailbox_is_held_to_the_san_domain_rules(h, keys):
    """A relying party that maps a certificate by its CN (a VPN or RADIUS server by host name, a service by
    e-mail address) reads it as the SAN it looks like: a profile limited to its own domains does not vouch for
    another's in the CN."""
    h.profiles.add("p", template=CertificateTemplate(dns_suffixes=["devices.example.com"],
                                                     email_domains=["example.com"]))
    for cn, text in (("vpn.example.org", "subject CN='vpn.example.org' is outside the profile's DNS suffixes"),
                     ("admin@example.org", "subject CN='admin@example.org' is outside the profile's e-mail domains")):
        assert refused(await h.enrol("p", keys[0], cn=cn), text)
    for i, cn in enumerate(("laptop-42.devices.example.com", "alice@example.com", "laptop-42", "Jane Doe",
                            "Jane Doe (laptop.2)")):
        rep = await h.enrol("p", keys[i % len(keys)], cn=cn, txid=f"ok-{i}")
        assert rep.status is PKIStatus.SUCCESS, (cn, rep.fail_text)


@pytest.mark.parametrize("subject, text", [
    ("CN=dev,CN=gw.example.org", "subject CN='gw.example.org' is outside the profile's DNS suffixes"),
    ("emailAddress=ceo@example.org", "subject emailAddress='ceo@example.org' is outside the profile's e-mail"),
    ("emailAddress=not-an-address", "subject emailAddress='not-an-address' is not an e-mail address"),
    ("DC=example,DC=org,CN=dev", "subject DC 'example.org' is outside the profile's DNS suffixes"),
])
def test_every_subject_value_naming_a_host_or_a_mailbox_is_held_to_the_domain_rules(subject, text):
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from scep_server.ca.policy import IssuancePolicy, PolicyViolation

    policy = IssuancePolicy(CertificateTemplate(subject_attributes=["CN", "emailAddress", "DC"],
                                                dns_suffixes=["example.com"], email_domains=["example.com"]))
    key = rsa_key()

    def name(text: str) -> x509.Name:
        return x509.Name.from_rfc4514_string(text, {"emailAddress": NameOID.EMAIL_ADDRESS})

    def csr(text: str):
        return x509.CertificateSigningRequestBuilder().subject_name(name(text)).sign(key, hashes.SHA256())
    with pytest.raises(PolicyViolation, match=text.replace("(", r"\(")):
        policy.subject_and_sans(csr(subject))
    allowed = "DC=example,DC=com,CN=dev,CN=gw.example.com,emailAddress=ceo@example.com"
    assert policy.subject_and_sans(csr(allowed))[0] == name(allowed)


@pytest.mark.parametrize("subject", [
    "CN=vpn.example.org ", "CN= vpn.example.org", "CN=vpn.example.org.", "CN=*.example.org", "CN=*.example.com",
    "CN=vpn\uff0eexample\uff0eorg", "CN=vpn\u3002example\u3002org", "CN=\uff56\uff50\uff4e.example.org",
    "CN=ceo@example.org ", "CN=ceo@example\uff0eorg", "CN=ceo@*.example.com", "CN=ceo@[192.0.2.1]",
    "emailAddress=ceo@example.org ", "DC=*,DC=example,DC=com,CN=dev", "DC=example ,DC=org,CN=dev",
])
def test_a_subject_value_is_held_to_the_domain_rules_as_a_relying_party_reads_it(subject):
    """Insignificant spaces, IDNA's other full stops, fullwidth letters and wildcards do not take a CN, an
    emailAddress or a DC out of the domain rules: a relying party reads `vpn.example.org ` or `vpn．example．org`
    as vpn.example.org."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from scep_server.ca.policy import IssuancePolicy, PolicyViolation

    policy = IssuancePolicy(CertificateTemplate(subject_attributes=["CN", "emailAddress", "DC"],
                                                dns_suffixes=["example.com"], email_domains=["example.com"]))
    key = rsa_key()

    def csr(text: str):  # RFC 4514 order (the last RDN first), the values exactly as written
        name = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(
            {"CN": NameOID.COMMON_NAME, "emailAddress": NameOID.EMAIL_ADDRESS,
             "DC": NameOID.DOMAIN_COMPONENT}[k], v)]) for k, v in (p.split("=", 1) for p in reversed(text.split(",")))])
        return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    with pytest.raises(PolicyViolation, match="outside the profile's|is not an e-mail address"):
        policy.subject_and_sans(csr(subject))
    # the same values within the domains, and names that are no host or address, are issued
    for allowed in ("CN=vpn.example.com ", "CN=vpn\uff0eexample\uff0ecom", "CN=ceo@example.com ",
                    "CN=Jane Doe (laptop.2)", "CN=Jane Doe @ home", "CN=laptop-42", "DC=example ,DC=com,CN=dev"):
        policy.subject_and_sans(csr(allowed))
    # without domain rules none of this is refused, but an emailAddress that is no mailbox: it is issued as an
    # e-mail SAN as well (RFC 5280 §4.1.2.6), and `ceo@example.org ` is none
    lenient = IssuancePolicy(CertificateTemplate(subject_attributes=["CN", "emailAddress", "DC"]))
    if subject.startswith("emailAddress="):
        with pytest.raises(PolicyViolation, match="issued as an e-mail subject alternative name too"):
            lenient.subject_and_sans(csr(subject))
    else:
        lenient.subject_and_sans(csr(subject))
