"""The OCSP URL in issued certificates: on for new profiles, off for profiles stored before the setting, and
absent while the responder is switched off."""
from __future__ import annotations

import json

import aiohttp
import sqlalchemy as sa
from cryptography import x509
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from scep_server.store.tables import profiles
from tests.crlwiring.conftest import enrol_with_codec
from tests.server import start_app
from trustkit.db import writer

from .conftest import post, request_der


def aia(cert: x509.Certificate) -> dict:
    value = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    return {d.access_method: d.access_location.value for d in value}


async def _enrol(srv) -> x509.Certificate:
    async with aiohttp.ClientSession() as session:
        _key, cert = await enrol_with_codec(session, srv.url, srv.challenge(), "aia-device")
    return cert


async def test_new_profiles_name_the_responder_and_it_answers_there(aiohttp_server, tmp_path, db_url):
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    cert = await _enrol(srv)
    urls = aia(cert)
    assert urls[AuthorityInformationAccessOID.OCSP] == f"{srv.url}/ocsp/default"
    assert urls[AuthorityInformationAccessOID.CA_ISSUERS] == f"{srv.url}/ca/default.crt"
    ca = srv.runtime.cas["default"]
    async with aiohttp.ClientSession() as session:
        async with session.post(urls[AuthorityInformationAccessOID.OCSP], data=request_der(cert, ca.cert)) as resp:
            answer = ocsp.load_der_ocsp_response(await resp.read())
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD  # the SCEP service recorded it


async def test_profiles_stored_before_the_setting_keep_certificates_as_they_were(aiohttp_server, tmp_path, db_url):
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    async with writer(srv.runtime.engine).begin() as conn:  # settings as stored before ocsp_aia existed
        raw = json.loads((await conn.execute(sa.select(profiles.c.settings).where(
            profiles.c.name == "default"))).scalar_one())
        raw.pop("ocsp_aia")
        await conn.execute(profiles.update().where(profiles.c.name == "default").values(settings=json.dumps(raw)))
    srv.runtime.profiles._cache.clear()  # the profile as read from its row (the cache lasts seconds)
    assert (await srv.runtime.profiles.get("default")).settings.ocsp_aia is False
    cert = await _enrol(srv)
    assert AuthorityInformationAccessOID.OCSP not in aia(cert)
    assert AuthorityInformationAccessOID.CA_ISSUERS in aia(cert)


async def test_switched_off_no_route_and_no_url(aiohttp_server, tmp_path, db_url):
    srv = await start_app(aiohttp_server, tmp_path, db_url, ocsp={"enabled": False})
    assert srv.runtime.ocsp is None
    cert = await _enrol(srv)
    assert AuthorityInformationAccessOID.OCSP not in aia(cert)
    http, _ = await post(srv.url, request_der(cert, srv.runtime.cas["default"].cert))
    assert http.status == 404
    assert not (srv.data_dir / "ca" / "default" / "ocsp.key").exists()


async def test_a_certificate_issued_on_approval_names_the_responder_too(aiohttp_server, tmp_path, db_url):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from scep_server.ca import inventory
    from scep_server.scep import MessageType, PKIStatus, client
    from scep_server.store.tables import scep_transactions
    from tests.crlwiring.conftest import _request, ra_and_ca, scep_operation

    srv = await start_app(aiohttp_server, tmp_path, db_url)
    rt = srv.runtime
    profile = await rt.profiles.get("default")
    await rt.profiles.update("default", now=rt.clock(),
                             settings=profile.settings.model_copy(update={"require_approval": True}))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    url = srv.url
    async with aiohttp.ClientSession() as session:
        ra_der, _ = await ra_and_ca(session, url)
        body = _request(key, ra_der, MessageType.PKCS_REQ, client.make_csr(key, "approved", srv.challenge()),
                        client.make_self_signed_signer(key))
        assert (await scep_operation(session, url, body, key, ra_der)).status is PKIStatus.PENDING
    async with rt.engine.connect() as conn:
        txid = (await conn.execute(sa.select(scep_transactions.c.transaction_id).where(
            scep_transactions.c.state == "pending"))).scalar_one()
    serial = await rt.scep.decide("default", txid, approve=True, actor="test")
    async with rt.engine.connect() as conn:
        cert = x509.load_der_x509_certificate((await inventory.get(conn, serial)).der)
    assert aia(cert)[AuthorityInformationAccessOID.OCSP] == f"{srv.url}/ocsp/default"
