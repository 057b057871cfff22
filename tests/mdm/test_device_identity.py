"""A profile's `device_id` setting: the request names its device (a subject attribute or a URI SAN filled in by the
MDM's profile variables); the certificate is issued for that device, created if new, and follows it from issue on.
SQLite and PostgreSQL for the enrolment tests."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from scep_server.ca import inventory
from scep_server.challenge.store import expectations_from
from scep_server.enrolment.identity import NoDeviceId, device_id_of
from scep_server.profiles import DeviceIdSource, InvalidSettings, ProfileError, parse_settings
from scep_server.scep.types import PKIStatus
from tests.binding.conftest import Api, tokens
from tests.challenge.conftest import add_profile, dynamic, enrol
from tests.factories import rsa_key
from tests.server import start_app

UDID = "00008030-001A2B3C4D5E802E"
UDID_PATTERN = r"[0-9A-F]{8}-[0-9A-F]{16}"


def _csr(subject: list[tuple], sans: list[x509.GeneralName] = ()) -> x509.CertificateSigningRequest:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value) for oid, value in subject]))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(rsa_key(), hashes.SHA256())


def test_the_device_id_is_read_where_the_profile_says():
    cn = DeviceIdSource()
    assert device_id_of(_csr([(NameOID.COMMON_NAME, UDID)]), cn) == UDID
    serial = DeviceIdSource(attribute="serialNumber")
    assert device_id_of(_csr([(NameOID.COMMON_NAME, "x"), (NameOID.SERIAL_NUMBER, "C02XYZ")]), serial) == "C02XYZ"
    uri = DeviceIdSource(source="san_uri", uri_prefix="urn:device:")
    csr = _csr([(NameOID.COMMON_NAME, "x")], [x509.UniformResourceIdentifier("https://example.com/a"),
                                               x509.UniformResourceIdentifier("urn:device:dev-42")])
    assert device_id_of(csr, uri) == "dev-42"


@pytest.mark.parametrize("subject, why", [
    ([(NameOID.ORGANIZATION_NAME, "no CN")], "found 0"),
    ([(NameOID.COMMON_NAME, "a"), (NameOID.COMMON_NAME, "b")], "found 2"),  # ambiguous: refused, never the first
    ([(NameOID.COMMON_NAME, "../../etc")], "pattern"),
    ([(NameOID.COMMON_NAME, "dev\nother")], "pattern"),
    ([(NameOID.USER_ID, "x" * 65)], "pattern"),  # the profile's pattern cannot widen the device id syntax
])
def test_a_request_that_names_no_single_acceptable_device_is_refused(subject, why):
    wide = DeviceIdSource(pattern=r".+", attribute="UID" if subject[0][0] == NameOID.USER_ID else "CN")
    with pytest.raises(NoDeviceId, match=why):
        device_id_of(_csr(subject), wide)


def test_the_setting_is_refused_on_static_profiles_and_a_bad_pattern_is_refused():
    with pytest.raises(InvalidSettings, match="static profile cannot name devices"):
        parse_settings({"device_id": {"source": "subject"}}, kind="static")
    assert parse_settings({"device_id": {"source": "subject", "pattern": UDID_PATTERN}},
                          kind="dynamic").device_id.pattern == UDID_PATTERN
    with pytest.raises(InvalidSettings, match="device_id.pattern"):
        parse_settings({"device_id": {"pattern": "(unclosed"}}, kind="dynamic")
    with pytest.raises(InvalidSettings, match="device_id.source"):
        parse_settings({"device_id": {"source": "issuer"}}, kind="dynamic")


async def test_the_store_refuses_the_setting_on_static_profiles(srv):
    from scep_server.profiles import ProfileSettings
    from tests.factories import NOW

    store = srv.runtime.profiles
    with pytest.raises(ProfileError, match="static profile cannot name devices"):
        await store.create("s", ca="default", challenge_kind="static", now=NOW, static_secret="x" * 32,
                           settings=ProfileSettings(device_id=DeviceIdSource()))
    await store.create("s", ca="default", challenge_kind="static", now=NOW, static_secret="x" * 32)
    with pytest.raises(ProfileError, match="static profile cannot name devices"):
        await store.update("s", now=NOW, settings=ProfileSettings(device_id=DeviceIdSource()))


@pytest.fixture
async def srv(aiohttp_server, tmp_path, db_url):
    running = await start_app(aiohttp_server, tmp_path, db_url, crl={"coalesce_delay": 0.1, "poll_interval": 0.5})
    await add_profile(running, "jamf", "dynamic", dynamic(),
                      device_id=DeviceIdSource(attribute="CN", pattern=UDID_PATTERN))
    return running


@pytest.fixture
async def api(srv):
    signin, admin = await tokens(srv.runtime)
    async with aiohttp.ClientSession() as session:
        yield Api(session, srv.url, signin, admin)


async def _record(srv, der: bytes):
    async with srv.runtime.engine.connect() as conn:
        return await inventory.get_by_fingerprint(conn, __import__("hashlib").sha256(der).hexdigest())


async def _on_crl(api, serial: int, reason, timeout: float = 10) -> bool:
    """Whether `serial` comes on the served CRL with `reason` within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with api.session.get(api.url + "/crl/default.crl") as resp:
            entry = x509.load_der_x509_crl(await resp.read()).get_revoked_certificate_by_serial_number(serial)
        if entry is not None and entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is reason:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_an_enrolment_names_its_device_which_is_created_and_followed(srv, api):
    rt = srv.runtime
    issued = await rt.challenges.new_challenge("jamf", source="api")
    # a request whose CN is not a UDID is refused before the one-time challenge is spent
    bad = await enrol(api.session, srv, "jamf", rsa_key(), issued.challenge, cn="laptop")
    assert bad.status is PKIStatus.FAILURE and "pattern" in bad.fail_text
    rep = await enrol(api.session, srv, "jamf", rsa_key(), issued.challenge, cn=UDID)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    record = await _record(srv, rep.certs[0])
    assert record.enrolled_device_id == UDID
    device = await api.get(f"/api/v1/devices/{UDID}")
    assert (device["status"], device["created_by"]) == ("active", "scep:jamf")

    # the certificate follows the device before it ever attested (it is bound to nothing yet)
    assert device["certificates"] == []
    await api.action(UDID, "deactivate")
    serial = x509.load_der_x509_certificate(rep.certs[0]).serial_number
    assert await _on_crl(api, serial, x509.ReasonFlags.certificate_hold)
    # a deactivated device gets no new certificate (it would be valid, off the CRL, while the old one is held)
    held = await rt.challenges.new_challenge("jamf", source="api")
    refused = await enrol(api.session, srv, "jamf", rsa_key(), held.challenge, cn=UDID)
    assert refused.status is PKIStatus.FAILURE and f"device {UDID} is deactivated" in refused.fail_text
    await api.action(UDID, "delete")
    assert await _on_crl(api, serial, x509.ReasonFlags.cessation_of_operation)

    # a deleted device's id is never enrolled again
    again = await rt.challenges.new_challenge("jamf", source="api")
    refused = await enrol(api.session, srv, "jamf", rsa_key(), again.challenge, cn=UDID)
    assert refused.status is PKIStatus.FAILURE and "deleted" in refused.fail_text


async def test_a_request_naming_another_device_than_its_challenge_is_refused(srv, api):
    rt = srv.runtime
    other = "00008030-0000000000000001"
    issued = await rt.challenges.new_challenge("jamf", source="api",
                                               expectations=expectations_from({"device_id": UDID}))
    rep = await enrol(api.session, srv, "jamf", rsa_key(), issued.challenge, cn=other)
    assert rep.status is PKIStatus.FAILURE
    async with rt.engine.connect() as conn:
        from scep_server.binding.tables import devices
        import sqlalchemy as sa
        assert (await conn.execute(sa.select(devices.c.id).where(devices.c.id == other))).first() is None


async def test_an_approved_enrolment_is_issued_for_the_device_it_names(srv, api):
    rt = srv.runtime
    await add_profile(srv, "held", "dynamic", dynamic(), require_approval=True,
                      device_id=DeviceIdSource(attribute="CN", pattern=UDID_PATTERN))
    issued = await rt.challenges.new_challenge("held", source="api")
    from scep_server.scep import client

    key = rsa_key()
    rep = await enrol(api.session, srv, "held", key, issued.challenge, cn=UDID)
    assert rep.status is PKIStatus.PENDING
    serial = await rt.scep.decide("held", client.transaction_id_for(key.public_key()), approve=True, actor="admin")
    async with rt.engine.connect() as conn:
        assert (await inventory.get(conn, serial)).enrolled_device_id == UDID
    assert (await api.get(f"/api/v1/devices/{UDID}"))["status"] == "active"
