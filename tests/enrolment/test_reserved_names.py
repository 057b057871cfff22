"""After a CA rollover is activated, the previous CA is still loaded (it publishes CRLs, its certificates renew at
the new one): its name and its RA's stay reserved, as the next CA's was while the rollover was only prepared."""
from __future__ import annotations

import hashlib
import os
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from scep_server.ca.authority import load_ca
from scep_server.ca.rollover import activate, prepare
from scep_server.enrolment import ScepService
from scep_server.enrolment.memory import InMemoryRepository
from scep_server.profiles import Profile, ProfileSettings
from scep_server.scep import MessageType, PKIStatus, client
from tests.enrolment.test_rules import SECRET, Profiles
from tests.factories import NOW, PASSPHRASE, make_ca, rsa_key
from trustkit.clock import SettableClock


def csr_named(key, name: x509.Name):
    b = x509.CertificateSigningRequestBuilder().subject_name(name)
    b = b.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, SECRET.encode())
    return b.sign(key, hashes.SHA256())


async def send(service, ca, profile, key, name):
    from cryptography.hazmat.primitives import serialization
    body = client.build_request(
        MessageType.PKCS_REQ, content=csr_named(key, name).public_bytes(serialization.Encoding.DER),
        signer_cert_der=client.make_self_signed_signer(key), signer_key=key, recipient_cert_der=ca.ra_cert_der,
        transaction_id=client.transaction_id_for(key.public_key()), sender_nonce=os.urandom(16),
        cek=os.urandom(16), iv=os.urandom(16))
    return client.parse_cert_rep(await service.pki_operation(profile, body), key, ra_cert_der=ca.ra_cert_der)


async def test_the_previous_cas_name_is_never_issued_after_activation(tmp_path):
    old = make_ca(tmp_path / "default")
    prepare(tmp_path / "default", old, key_size=2048, validity_days=3650, ra_validity_days=730,
            passphrase=PASSPHRASE, now=NOW)
    prepared_old = load_ca(tmp_path / "default", name="default", passphrase=PASSPHRASE, base_url=old.base_url)
    new_name = activate(tmp_path, "default")
    new = load_ca(tmp_path / new_name, name=new_name, passphrase=PASSPHRASE, base_url=old.base_url)
    old_loaded = load_ca(tmp_path / "default", name="default", passphrase=PASSPHRASE, base_url=old.base_url)
    profiles = Profiles()
    profiles.by_name["p"] = Profile(name="p", ca=new_name, challenge_kind="static",
                                    static_secret_sha256=hashlib.sha256(SECRET.encode()).hexdigest(),
                                    settings=ProfileSettings())
    profiles.by_name["q"] = Profile(name="q", ca="default", challenge_kind="static",
                                    static_secret_sha256=hashlib.sha256(SECRET.encode()).hexdigest(),
                                    settings=ProfileSettings())
    # control: before activation, the prepared next CA's name is refused at the old CA
    svc0 = ScepService(cas={"default": prepared_old}, profiles=profiles, clock=SettableClock(NOW + timedelta(minutes=1)),
                       repository=InMemoryRepository(), threads=1)
    ctrl = await send(svc0, prepared_old, "q", rsa_key(), new.cert.subject)
    await svc0.close()
    assert ctrl.status is PKIStatus.FAILURE, "control: the next CA's name is reserved"
    svc = ScepService(cas={new_name: new, "default": old_loaded}, profiles=profiles,
                      clock=SettableClock(NOW + timedelta(minutes=1)), repository=InMemoryRepository(), threads=1)
    try:
        own = await send(svc, new, "p", rsa_key(), new.cert.subject)
        assert own.status is PKIStatus.FAILURE, "control: the CA's own name is reserved"
        for name in (old.cert.subject, old.ra_cert.subject):
            rep = await send(svc, new, "p", rsa_key(), name)
            assert rep.status is PKIStatus.FAILURE and "is the name of a CA or an RA of this server" in rep.fail_text
    finally:
        await svc.close()
