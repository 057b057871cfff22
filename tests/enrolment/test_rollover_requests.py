"""Across a CA rollover's activation: a device told PENDING by the previous CA polls as it began, with the RA
certificate and the CA name it had then (clients keep what GetCACert gave them for the whole transaction). Its
CertPoll, GetCert and GetCRL are answered by that CA: its RA decrypts them and signs the reply, which the device
can verify; nothing it was told is lost."""
from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import pytest
from cryptography import x509

from scep_server.ca.authority import load_ca
from scep_server.ca.rollover import activate, prepare
from scep_server.enrolment import ScepService
from scep_server.enrolment.model import CaNotLoaded
from scep_server.enrolment.memory import InMemoryRepository
from scep_server.profiles import Profile, ProfileSettings
from scep_server.scep import FailInfo, MessageType, PKIStatus, client
from tests.enrolment.test_rules import SECRET, Profiles
from tests.factories import NOW, PASSPHRASE, make_ca, rsa_key
from trustkit import der
from trustkit.clock import SettableClock


def request(message_type: MessageType, key, content: bytes, ra_der: bytes, txid: str) -> bytes:
    return client.build_request(message_type, content=content, signer_cert_der=client.make_self_signed_signer(key),
                                signer_key=key, recipient_cert_der=ra_der, transaction_id=txid,
                                sender_nonce=os.urandom(16), cek=os.urandom(16), iv=os.urandom(16))


class Rollover:
    """A profile on CA `default` that requires approval; `activate` moves it to the next CA."""

    def __init__(self, root):
        self.root = root
        self.old = make_ca(root / "default")
        self.profiles = Profiles()
        self.repo = InMemoryRepository()
        self.clock = SettableClock(NOW + timedelta(minutes=1))
        self.crls: dict[str, bytes] = {}
        self.profile("default")
        self.service = self.make_service({"default": self.old})

    def profile(self, ca: str) -> None:
        self.profiles.by_name["p"] = Profile(name="p", ca=ca, challenge_kind="static",
                                             static_secret_sha256=hashlib.sha256(SECRET.encode()).hexdigest(),
                                             settings=ProfileSettings(require_approval=True))

    def make_service(self, cas) -> ScepService:
        async def crl_source(name: str) -> bytes:
            return self.crls[name]
        return ScepService(cas=cas, profiles=self.profiles, clock=self.clock, repository=self.repo, threads=1,
                           crl_source=crl_source)

    async def activate(self) -> None:
        prepare(self.root / "default", self.old, key_size=2048, validity_days=3650, ra_validity_days=730,
                passphrase=PASSPHRASE, now=NOW)
        name = activate(self.root, "default")
        self.new = load_ca(self.root / name, name=name, passphrase=PASSPHRASE, base_url=self.old.base_url)
        self.old = load_ca(self.root / "default", name="default", passphrase=PASSPHRASE, base_url=self.old.base_url)
        self.profile(name)
        await self.service.close()
        self.service = self.make_service({name: self.new, "default": self.old})

    async def send(self, message_type, key, content: bytes, ca, txid: str) -> client.CertRepResult:
        """A request encrypted to ``ca``'s RA; its reply must verify with that RA certificate."""
        reply = await self.service.pki_operation("p", request(message_type, key, content, ca.ra_cert_der, txid))
        return client.parse_cert_rep(reply, key, ra_cert_der=ca.ra_cert_der)


@pytest.fixture
async def r(tmp_path):
    rollover = Rollover(tmp_path)
    yield rollover
    await rollover.service.close()


async def test_a_pending_enrolment_is_picked_up_with_the_previous_ra_after_activation(r):
    key = rsa_key()
    txid = client.transaction_id_for(key.public_key())
    enrolled = await r.send(MessageType.PKCS_REQ, key, client.make_csr(key, "dev", SECRET, ()), r.old, txid)
    assert enrolled.status is PKIStatus.PENDING
    poll = client.issuer_and_subject(r.old.cert.subject, x509.Name.from_rfc4514_string("CN=dev"))
    await r.activate()
    assert (await r.send(MessageType.CERT_POLL, key, poll, r.old, txid)).status is PKIStatus.PENDING
    serial = await r.service.decide("p", txid, approve=True, actor="admin")

    rep = await r.send(MessageType.CERT_POLL, key, poll, r.old, txid)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    issued = x509.load_der_x509_certificate(rep.certs[0])
    assert format(issued.serial_number, "x") == serial
    issued.verify_directly_issued_by(r.new.cert)  # issued by the CA that issues now
    # a device that began after the activation polls the new CA, as before
    fresh = client.issuer_and_subject(r.new.cert.subject, x509.Name.from_rfc4514_string("CN=dev"))
    assert (await r.send(MessageType.CERT_POLL, key, fresh, r.new, txid)).certs[0] == rep.certs[0]
    # the RA of one CA does not answer for the other CA's name: the decryption stage's one badMessageCheck,
    # signed by the profile's RA as before
    for ra, named in ((r.old, r.new), (r.new, r.old)):
        mixed = client.issuer_and_subject(named.cert.subject, x509.Name.from_rfc4514_string("CN=dev"))
        body = request(MessageType.CERT_POLL, key, mixed, ra.ra_cert_der, txid)
        rep = client.parse_cert_rep(await r.service.pki_operation("p", body), key, ra_cert_der=r.new.ra_cert_der)
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_MESSAGE_CHECK


async def test_get_cert_and_get_crl_of_the_previous_ca_after_activation(r):
    key = rsa_key()
    txid = client.transaction_id_for(key.public_key())
    pending = await r.send(MessageType.PKCS_REQ, key, client.make_csr(key, "dev", SECRET, ()), r.old, txid)
    assert pending.status is PKIStatus.PENDING
    before = await r.service.decide("p", txid, approve=True, actor="admin")  # issued by the previous CA
    await r.activate()
    r.crls = {"default": der.seq(der.utf8("previous CA's CRL")), r.new.name: der.seq(der.utf8("new CA's CRL"))}
    other = rsa_key()
    rep = await r.send(MessageType.GET_CERT, other, client.issuer_and_serial(r.old.cert.subject, int(before, 16)),
                       r.old, "get-cert")
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert x509.load_der_x509_certificate(rep.certs[0]).issuer == r.old.cert.subject
    rep = await r.send(MessageType.GET_CRL, other, client.issuer_and_serial(r.old.cert.subject, int(before, 16)),
                       r.old, "get-crl")
    assert rep.status is PKIStatus.SUCCESS and rep.crls == [r.crls["default"]], rep.fail_text
    # the new CA does not serve the previous CA's certificate under its own name
    rep = await r.send(MessageType.GET_CERT, other, client.issuer_and_serial(r.new.cert.subject, int(before, 16)),
                       r.new, "get-cert-new")
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_CERT_ID


async def test_a_poll_at_a_process_that_has_not_loaded_the_new_ca_yet_is_answered_try_again(r):
    """Another process activated the rollover and issued the certificate on approval; this one still reads the
    profile on the previous CA and has not loaded the new one: the poll is answered 503 (try again, CaNotLoaded),
    as a request for a profile whose CA is not loaded yet is, not an internal error."""
    key = rsa_key()
    txid = client.transaction_id_for(key.public_key())
    enrolled = await r.send(MessageType.PKCS_REQ, key, client.make_csr(key, "dev", SECRET, ()), r.old, txid)
    assert enrolled.status is PKIStatus.PENDING
    await r.activate()
    await r.service.decide("p", txid, approve=True, actor="admin")  # at the process that activated it
    r.profile("default")  # what the lagging process's profile cache still says
    poll = client.issuer_and_subject(r.old.cert.subject, x509.Name.from_rfc4514_string("CN=dev"))
    lagging_service = r.make_service({"default": r.old})
    try:
        with pytest.raises(CaNotLoaded, match="default-g2"):
            await lagging_service.pki_operation("p", request(MessageType.CERT_POLL, key, poll, r.old.ra_cert_der,
                                                             txid))
    finally:
        await lagging_service.close()
