"""Where a certificate's `enrolled_device_id` comes from: a one-time challenge's expectations, an
administrator's pre-registration of (profile, transactionID), Intune's device id, or the certificate it
renews; and what it lets the certificate do at attestation. SQLite and PostgreSQL."""
from __future__ import annotations

import os

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.ca import inventory
from scep_server.challenge.service import intune_device_id
from scep_server.challenge.store import Expectations, expectations_from
from scep_server.scep import client
from scep_server.scep.types import ContentCipher, MessageType, PKIStatus
from tests.challenge.conftest import add_profile, dynamic, enrol as scep_enrol, pki
from tests.factories import csr, rsa_key
from tests.server import start_app

from .conftest import Api, tokens, trust_default_profile


@pytest.fixture
async def srv(aiohttp_server, tmp_path, db_url):
    running = await start_app(aiohttp_server, tmp_path, db_url)
    await trust_default_profile(running.runtime)
    return running


@pytest.fixture
async def api(srv):
    signin, admin = await tokens(srv.runtime)
    async with aiohttp.ClientSession() as session:
        yield Api(session, srv.url, signin, admin)


async def record(srv, der: bytes):
    async with srv.runtime.engine.connect() as conn:
        return await inventory.get_by_fingerprint(conn, __import__("hashlib").sha256(der).hexdigest())


def pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


async def test_challenge_expectation_names_the_device_and_replaces_its_certificate(srv, api):
    rt = srv.runtime
    await add_profile(srv, "jamf", "dynamic", dynamic())
    await api.add_device("mac-1")
    # the device's first certificate, from the static profile
    first_key = rsa_key()
    first = await scep_enrol(api.session, srv, "default", first_key, srv.challenge(), cn="mac-1")
    assert first.status is PKIStatus.SUCCESS
    assert (await record(srv, first.certs[0])).enrolled_device_id is None
    assert (await api.attest("mac-1", pem(first.certs[0]), first_key))["managed"]
    # a one-time challenge issued for mac-1 (as the MDM asks for it)
    issued = await rt.challenges.new_challenge("jamf", source="api",
                                                        expectations=expectations_from({"device_id": "mac-1"}))
    key = rsa_key()
    rep = await scep_enrol(api.session, srv, "jamf", key, issued.challenge, cn="mac-1")
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert (await record(srv, rep.certs[0])).enrolled_device_id == "mac-1"
    assert (await api.attest("mac-1", pem(rep.certs[0]), key))["managed"]
    shown = await api.get("/api/v1/devices/mac-1")
    assert [(c["serial"], c["current"], c["retired_reason"]) for c in shown["certificates"]] == [
        (format(x509.load_der_x509_certificate(first.certs[0]).serial_number, "x"), False, "superseded"),
        (format(x509.load_der_x509_certificate(rep.certs[0]).serial_number, "x"), True, None)]
    # another one-time challenge, for another device: its certificate is refused here
    await api.add_device("mac-2")
    other = await rt.challenges.new_challenge("jamf", source="api",
                                                       expectations=Expectations(device_id="mac-2"))
    key2 = rsa_key()
    rep2 = await scep_enrol(api.session, srv, "jamf", key2, other.challenge, cn="mac-2")
    res = await api.attest("mac-1", pem(rep2.certs[0]), key2)
    assert (res["managed"], res["reason"]) == (False, "certificate_of_other_device")
    assert (await api.attest("mac-2", pem(rep2.certs[0]), key2))["managed"]


async def test_an_approved_one_time_enrolment_keeps_the_device_its_challenge_named(srv, api):
    """The device a one-time challenge names is kept while its enrolment waits for approval: the certificate is
    that device's, and another device presenting it is refused."""
    rt = srv.runtime
    await add_profile(srv, "jamf-approved", "dynamic", dynamic(), require_approval=True, device_trust=True)
    for device in ("mac-2", "mac-3"):
        await api.add_device(device)
    issued = await rt.challenges.new_challenge("jamf-approved", source="api",
                                               expectations=expectations_from({"device_id": "mac-2"}))
    key = rsa_key()
    rep = await scep_enrol(api.session, srv, "jamf-approved", key, issued.challenge, cn="mac-2",
                           transaction_id="APPROVED-TX-1")
    assert rep.status is PKIStatus.PENDING
    serial = await rt.scep.decide("jamf-approved", "APPROVED-TX-1", approve=True, actor="admin")
    async with rt.engine.connect() as conn:
        approved = await inventory.get(conn, serial)
    assert approved.enrolled_device_id == "mac-2"
    res = await api.attest("mac-3", pem(approved.der), key)
    assert (res["managed"], res["reason"]) == (False, "certificate_of_other_device")
    assert (await api.attest("mac-2", pem(approved.der), key))["managed"]


async def test_preregistered_transaction_names_the_device(srv, api):
    rt = srv.runtime
    from scep_server.profiles import ProfileSettings

    await rt.profiles.create("byod", ca=next(iter(rt.cas)), challenge_kind="static", now=rt.clock(),
                             static_secret="byod-secret-" + "x" * 20, settings=ProfileSettings(require_approval=True))
    await api.add_device("phone-1")
    # immediate issue (the default profile) and approval (byod), each pre-registered by transactionID
    txid = os.urandom(8).hex().upper()
    done = await api.post("/api/v1/devices/phone-1/enrolments", {"profile": "default", "transaction_id": txid},
                          admin=True, expect=201)
    assert done["device_id"] == "phone-1"
    await api.post("/api/v1/devices/phone-1/enrolments", {"profile": "default", "transaction_id": txid},
                   admin=True, expect=409)
    await api.post("/api/v1/devices/nobody/enrolments", {"profile": "default", "transaction_id": "t"},
                   admin=True, expect=404)
    key = rsa_key()
    rep = await scep_enrol(api.session, srv, "default", key, srv.challenge(), transaction_id=txid)
    assert (await record(srv, rep.certs[0])).enrolled_device_id == "phone-1"
    unnamed = await scep_enrol(api.session, srv, "default", rsa_key(), srv.challenge())
    assert (await record(srv, unnamed.certs[0])).enrolled_device_id is None

    pending_tx = os.urandom(8).hex().upper()
    key2 = rsa_key()
    rep2 = await scep_enrol(api.session, srv, "byod", key2, "byod-secret-" + "x" * 20, transaction_id=pending_tx)
    assert rep2.status is PKIStatus.PENDING
    await api.post("/api/v1/devices/phone-1/enrolments", {"profile": "byod", "transaction_id": pending_tx},
                   admin=True, expect=201)
    serial = await rt.scep.decide("byod", pending_tx, approve=True, actor="admin")
    async with rt.engine.connect() as conn:
        assert (await inventory.get(conn, serial)).enrolled_device_id == "phone-1"
    # the first pre-registered certificate binds; the approved one, also pre-registered, replaces it
    assert (await api.attest("phone-1", pem(rep.certs[0]), key))["managed"]
    async with rt.engine.connect() as conn:
        der = (await inventory.get(conn, serial)).der
    assert (await api.attest("phone-1", pem(der), key2))["managed"]
    shown = await api.get("/api/v1/devices/phone-1")
    assert [(c["serial"], c["current"]) for c in shown["certificates"]][-1] == (serial, True)


async def _renew(srv, api, signer_der: bytes, key, cn: str):
    new_key = rsa_key()
    ca = next(iter(srv.runtime.cas.values()))
    cipher = ContentCipher.AES128_CBC
    body = client.build_request(
        MessageType.RENEWAL_REQ, content=client.make_csr(new_key, cn, None, ()), signer_cert_der=signer_der,
        signer_key=key, recipient_cert_der=ca.ra_cert_der, transaction_id=client.transaction_id_for(new_key.public_key()),
        sender_nonce=os.urandom(16), cek=os.urandom(cipher.key_size), iv=os.urandom(cipher.block_size), cipher=cipher)
    return await pki(api.session, srv, "default", body, key), new_key


async def _renewals_any_time(srv) -> None:
    rt = srv.runtime
    profile = await rt.profiles.get("default")
    await rt.profiles.update("default", now=rt.clock(), settings=profile.settings.model_copy(
        update={"renewal_window_days": 100000}))


async def test_a_renewal_of_a_certificate_bound_at_first_use_is_for_its_device(srv, api):
    """A certificate enrolled for no device and bound at its first attestation: its renewal is enrolled for that
    device, so that it follows the device's lifecycle before it ever attests (a stolen laptop deactivated before
    its renewal is used), and renews no further once the device is gone."""
    await _renewals_any_time(srv)
    await api.add_device("lap-1")
    key = rsa_key()
    rep = await scep_enrol(api.session, srv, "default", key, srv.challenge(), cn="lap-1")
    assert (await record(srv, rep.certs[0])).enrolled_device_id is None
    assert (await api.attest("lap-1", pem(rep.certs[0]), key))["managed"]
    renewed, new_key = await _renew(srv, api, rep.certs[0], key, "lap-1")
    assert renewed.status is PKIStatus.SUCCESS, renewed.fail_text
    new = await record(srv, renewed.certs[0])
    assert new.enrolled_device_id == "lap-1"
    await api.action("lap-1", "deactivate")
    assert (await record(srv, renewed.certs[0])).status == "hold"
    again, _ = await _renew(srv, api, renewed.certs[0], new_key, "lap-1")
    assert again.status is PKIStatus.FAILURE and "on hold" in again.fail_text


async def test_a_renewal_records_its_lineage_and_keeps_the_enrolled_device(srv, api):
    await _renewals_any_time(srv)
    await api.add_device("tab-1")
    txid = os.urandom(8).hex().upper()
    await api.post("/api/v1/devices/tab-1/enrolments", {"profile": "default", "transaction_id": txid},
                   admin=True, expect=201)
    key = rsa_key()
    rep = await scep_enrol(api.session, srv, "default", key, srv.challenge(), cn="tab-1", transaction_id=txid)
    old = await record(srv, rep.certs[0])
    assert (await api.attest("tab-1", pem(rep.certs[0]), key))["managed"]
    # RenewalReq signed by the issued certificate, with a new key (the reply is for the signing certificate)
    renewed, new_key = await _renew(srv, api, rep.certs[0], key, "tab-1")
    assert renewed.status is PKIStatus.SUCCESS, renewed.fail_text
    new = await record(srv, renewed.certs[0])
    assert (new.renewal_of, new.enrolled_device_id) == (old.serial, "tab-1")
    assert (await api.attest("tab-1", pem(renewed.certs[0]), new_key))["managed"]


def test_intune_device_id_from_the_validated_request():
    key = rsa_key()
    uri = x509.UniformResourceIdentifier
    assert intune_device_id(csr(key, sans=[uri("IntuneDeviceId://0f3c2a1e-1111-2222-3333-444455556666")])) == \
        "0f3c2a1e-1111-2222-3333-444455556666"
    assert intune_device_id(csr(key, sans=[uri("intunedeviceid://abc"), x509.DNSName("x.example")])) == "abc"
    assert intune_device_id(csr(key)) is None
    assert intune_device_id(csr(key, sans=[uri("IntuneDeviceId://a"), uri("IntuneDeviceId://b")])) is None
    assert intune_device_id(csr(key, sans=[uri("IntuneDeviceId://")])) is None
    assert intune_device_id(csr(key, sans=[uri("IntuneDeviceId://" + "a" * 65)])) is None


async def test_intune_enrolment_names_the_device(srv, api, tmp_path):
    """A request Intune validated carries the device id in its IntuneDeviceId URI SAN: the certificate may
    replace the device's current certificate; one for another Intune device may not."""
    from tests.challenge.peers import CLIENT_SECRET, FakeIntune
    from tests.challenge.test_delegated import intune_settings

    secret = tmp_path / "intune-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    await api.add_device("win-1")
    first_key = rsa_key()
    first = await scep_enrol(api.session, srv, "default", first_key, srv.challenge(), cn="win-1")
    assert (await api.attest("win-1", pem(first.certs[0]), first_key))["managed"]
    async with FakeIntune() as fake:
        await add_profile(srv, "intune", "delegated", intune_settings(fake, secret),
                          template={"san_types": ["uri"]})  # Intune's profile puts the device id in a URI SAN
        uri = x509.UniformResourceIdentifier
        key, other_key = rsa_key(), rsa_key()
        rep = await scep_enrol(api.session, srv, "intune", key, "intune-challenge", cn="win-1",
                               sans=[uri("IntuneDeviceId://win-1")])
        other = await scep_enrol(api.session, srv, "intune", other_key, "intune-challenge-2", cn="win-2",
                                 sans=[uri("IntuneDeviceId://win-2")])
        assert rep.status is PKIStatus.SUCCESS and other.status is PKIStatus.SUCCESS, (rep.fail_text, other.fail_text)
    assert (await record(srv, rep.certs[0])).enrolled_device_id == "win-1"
    res = await api.attest("win-1", pem(other.certs[0]), other_key)
    assert (res["managed"], res["reason"]) == (False, "certificate_of_other_device")
    assert (await api.attest("win-1", pem(rep.certs[0]), key))["managed"]
