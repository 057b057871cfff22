"""The admin API of certificates and CAs against a real server, on SQLite and PostgreSQL: filters, pages,
revoke/hold/release reaching the served CRL, the CA listing, CRL publishing, and every refusal a problem."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509

from scep_server.binding.service import services
from scep_server.binding.tables import device_certs
from scep_server.ca.authority import random_serial
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from scep_server.store.tables import certificates
from trustkit.db import writer
from tests.crlwiring.conftest import FAST_CRL, crl_serials, wait_for
from tests.factories import csr, record_issued, rsa_key
from tests.server import start_app

PROBLEM = "application/problem+json"


@pytest.fixture
async def api(aiohttp_server, tmp_path, db_url):
    srv = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL)
    await srv.runtime.crl.publishers["default"].wait_newer(None, timeout=10)
    rt = srv.runtime
    admin_id, admin = await rt.tokens.create(scope="admin", name="certs-admin", now=rt.clock())
    signin = (await rt.tokens.create(scope="signin", name="certs-signin", now=rt.clock()))[1]
    async with aiohttp.ClientSession() as session:
        api = Api(srv, session, admin, signin)
        api.admin_actor = f"token:{admin_id}:certs-admin"
        yield api


class Api:
    def __init__(self, srv, session, admin, signin):
        self.srv, self.session, self.admin, self.signin = srv, session, admin, signin
        self._key = rsa_key()

    async def call(self, method: str, path: str, *, token: str | None = "admin", **kw):
        headers = {}
        if token is not None:
            headers["Authorization"] = "Bearer " + (self.admin if token == "admin" else self.signin)
        async with self.session.request(method, self.srv.url + path, headers=headers, **kw) as r:
            body = await r.json(content_type=None)
            return r.status, r.headers, body

    async def issue(self, *, at, profile="default", cn="device") -> str:
        rt = self.srv.runtime
        ca = rt.cas["default"]
        cert = ca.issue(csr(self._key, cn), IssuancePolicy(CertificateTemplate()), serial=random_serial(), now=at)
        return await record_issued(rt.engine, ca, cert, issued_at=at, profile=profile)


async def _set(engine, serial: str, **values) -> None:
    async with writer(engine).begin() as conn:
        await conn.execute(certificates.update().where(certificates.c.serial == serial).values(**values))


async def test_filters_and_pages(api):
    rt = api.srv.runtime
    now = rt.clock()
    await rt.profiles.create("kiosk", ca="default", challenge_kind="static", static_secret="s", now=now)
    old = [await api.issue(at=now - timedelta(days=10, seconds=i)) for i in range(3)]
    new = [await api.issue(at=now - timedelta(seconds=i), profile="kiosk") for i in range(4)]
    await rt.revocation.hold(new[0], actor="test")

    status, headers, body = await api.call("GET", "/api/v1/certificates?limit=3")
    assert status == 200 and len(body["certificates"]) == 3 and body["next_cursor"]
    assert headers["Link"] == f'<{body["next"]}>; rel="next"'
    seen = [c["serial"] for c in body["certificates"]]
    pages = 1
    while body["next"] and pages < 10:
        status, _, body = await api.call("GET", body["next"])
        assert status == 200
        seen += [c["serial"] for c in body["certificates"]]
        pages += 1
    assert pages == 3 and seen == new + old  # newest first, each once
    assert body["next_cursor"] is None and body["next"] is None

    async def serials(query: str) -> list[str]:
        status, _, body = await api.call("GET", "/api/v1/certificates?" + query)
        assert status == 200, body
        return [c["serial"] for c in body["certificates"]]

    assert await serials("status=hold") == [new[0]]
    assert await serials("profile=kiosk&status=valid") == new[1:]
    cut = (now - timedelta(days=1)).isoformat()
    assert await serials(f"issued_before={aiohttp.helpers.quote(cut, safe='')}") == old
    assert await serials("issued_after=" + (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")) == new
    assert await serials("expires_after=2999-01-01") == []
    assert set(await serials("expires_before=2999-01-01")) == set(new + old)
    assert await serials("serial_prefix=" + new[2][:12].upper()) == [new[2]]
    # a filtered list pages too, and its next link keeps the filters
    status, _, body = await api.call("GET", "/api/v1/certificates?profile=kiosk&limit=2")
    assert "profile=kiosk" in body["next"]
    status, _, body = await api.call("GET", body["next"])
    assert [c["serial"] for c in body["certificates"]] == new[2:] and body["next"] is None


async def test_device_filter_reads_bindings_and_enrolment(api):
    rt = api.srv.runtime
    now = rt.clock()
    device = await services(rt).devices.create("laptop-7", name="", actor="test")
    bound, enrolled, other = [await api.issue(at=now - timedelta(seconds=i)) for i in range(3)]
    await _set(rt.engine, enrolled, enrolled_device_id=device.id)
    row = (await _row(rt.engine, bound))
    async with writer(rt.engine).begin() as conn:
        await conn.execute(device_certs.insert().values(
            fingerprint_sha256=row.fingerprint_sha256, device_id=device.id, ca="default", external=False,
            serial=bound, not_after=row.not_after, current=True, state="active", bound_at=now))
    status, _, body = await api.call("GET", "/api/v1/certificates?device=laptop-7")
    assert status == 200 and [c["serial"] for c in body["certificates"]] == [bound, enrolled]
    status, _, body = await api.call("GET", "/api/v1/certificates?device=nobody")
    assert status == 200 and body["certificates"] == []
    status, _, body = await api.call("GET", f"/api/v1/certificates/{bound}")
    assert body["binding"]["device_id"] == "laptop-7" and body["binding"]["current"] is True
    assert body["binding"]["device_status"] == "active"
    status, _, body = await api.call("GET", f"/api/v1/certificates/{other}")
    assert body["binding"] is None


async def _row(engine, serial):
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(certificates).where(certificates.c.serial == serial))).one()


async def test_show_revoke_hold_release_reach_the_crl(api):
    rt = api.srv.runtime
    now = rt.clock()
    a, b = await api.issue(at=now - timedelta(seconds=1)), await api.issue(at=now)

    status, _, body = await api.call("GET", f"/api/v1/certificates/{a.upper()}")
    assert status == 200 and body["serial"] == a and body["status"] == "valid"
    cert = x509.load_pem_x509_certificate(body["pem"].encode())
    assert format(cert.serial_number, "x") == a
    assert body["issuer"]["ca"] == "default" and body["issuer"]["subject"] == rt.cas["default"].cert.subject.rfc4514_string()
    assert body["events"] == []

    compromised = (now - timedelta(days=2)).replace(microsecond=0)
    status, _, body = await api.call("POST", f"/api/v1/certificates/{a}/revoke",
                                     json={"reason": "key-compromise", "invalidity_date": compromised.isoformat()})
    assert status == 200, body
    assert body["status"] == "revoked" and body["revocation_reason_name"] == "key-compromise"
    assert body["invalidity_date"] == compromised.isoformat()
    status, _, body = await api.call("POST", f"/api/v1/certificates/{b}/hold")
    assert status == 200 and body["status"] == "hold"

    async def listed():
        async with api.session.get(api.srv.url + "/crl/default.crl") as r:
            entries = crl_serials(await r.read())
        return entries if {int(a, 16), int(b, 16)} <= set(entries) else None

    entries, _ = await wait_for(listed, timeout=10)
    assert entries[int(a, 16)] == x509.ReasonFlags.key_compromise
    assert entries[int(b, 16)] == x509.ReasonFlags.certificate_hold
    crl = x509.load_der_x509_crl(await (await api.session.get(api.srv.url + "/crl/default.crl")).read())
    entry = crl.get_revoked_certificate_by_serial_number(int(a, 16))
    assert entry.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc == compromised

    # the actor of each change is the caller's token; the events come with the certificate
    status, _, body = await api.call("GET", f"/api/v1/certificates/{a}")
    assert [(e["kind"], e["actor"]) for e in body["events"]] == [("pki.cert.revoke", api.admin_actor)]
    assert body["events"][0]["data"]["reason"] == "KEY_COMPROMISE"

    # impossible transitions: 409; a release lifts the hold and the next CRL drops the serial
    for action in ("release", "hold", "revoke"):
        status, headers, body = await api.call("POST", f"/api/v1/certificates/{a}/{action}")
        assert status == 409 and headers["Content-Type"].startswith(PROBLEM), body
        assert body["code"] == "invalid_transition"
    status, _, body = await api.call("POST", f"/api/v1/certificates/{b}/release")
    assert status == 200 and body["status"] == "valid"
    status, _, body = await api.call("POST", f"/api/v1/certificates/{b}/release")
    assert status == 409

    # publishing now: a new number, and the CRL served lists the revoked serial, not the released one
    before = rt.crl.publishers["default"].current.number
    status, _, body = await api.call("POST", "/api/v1/cas/default/crl/publish")
    assert status == 200 and body["number"] > before and body["ca"] == "default"
    async with api.session.get(api.srv.url + "/crl/default.crl") as r:
        der = await r.read()
    served = x509.load_der_x509_crl(der)
    assert served.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number >= body["number"]
    assert set(crl_serials(der)) == {int(a, 16)}


async def test_cas(api):
    rt = api.srv.runtime
    status, headers, body = await api.call("GET", "/api/v1/cas")
    assert status == 200 and body["next_cursor"] is None and "Link" not in headers
    [ca] = body["cas"]
    real = rt.cas["default"]
    assert ca["name"] == "default"
    assert x509.load_pem_x509_certificate(ca["certificate"]["pem"].encode()) == real.cert
    assert x509.load_pem_x509_certificate(ca["ra_certificate"]["pem"].encode()) == real.ra_cert
    assert ca["ra_certificate"]["subject"] == real.ra_cert.subject.rfc4514_string()
    assert ca["certificate"]["not_after"] == real.cert.not_valid_after_utc.isoformat()
    current = rt.crl.publishers["default"].current
    assert ca["crl"]["number"] == current.number and ca["crl"]["state"] == "ok"
    assert ca["crl"]["next_update"] == current.next_update.isoformat() and ca["crl"]["last_error"] is None
    assert ca["crl"]["url"] == api.srv.url + "/crl/default.crl"
    status, _, body = await api.call("GET", "/api/v1/cas?cursor=" + "WyJkZWZhdWx0Il0")  # after "default"
    assert status == 200 and body["cas"] == []

    # a failing re-sign is reported: 503 on publish, the error in the CA's CRL state
    pub = rt.crl.publishers["default"]
    real_source = pub.source

    async def broken(now):
        raise RuntimeError("inventory unreadable")

    pub.source = broken
    try:
        status, headers, body = await api.call("POST", "/api/v1/cas/default/crl/publish")
        assert status == 503 and body["code"] == "crl_publish_failed" and headers["Retry-After"]
        status, _, body = await api.call("GET", "/api/v1/cas")
        assert body["cas"][0]["crl"]["state"] == "degraded"
        assert "inventory unreadable" in body["cas"][0]["crl"]["last_error"]
    finally:
        pub.source = real_source


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_refusals_are_problems(api):
    rt = api.srv.runtime
    serial = await api.issue(at=rt.clock())
    routes = [("GET", "/api/v1/certificates"), ("GET", f"/api/v1/certificates/{serial}"),
              ("POST", f"/api/v1/certificates/{serial}/revoke"), ("POST", f"/api/v1/certificates/{serial}/hold"),
              ("POST", f"/api/v1/certificates/{serial}/release"), ("GET", "/api/v1/cas"),
              ("POST", "/api/v1/cas/default/crl/publish")]
    for method, path in routes:
        status, headers, body = await api.call(method, path, token=None)
        assert status == 401 and headers["Content-Type"].startswith(PROBLEM), (path, body)
        assert headers["WWW-Authenticate"] == 'Bearer realm="device-trust", scope="admin"'
        status, headers, body = await api.call(method, path, token="signin")
        assert status == 403 and body["code"] == "forbidden", (path, body)
    assert (await rt.certificates.get(serial)).status == "valid"  # nothing changed on the way

    bad_queries = ["status=expired", "profile=a%0A", "device=" + "d" * 65, "device=%00x", "issued_after=yesterday",
                   "issued_before=2026-13-01", "expires_after=%D9%A1%D9%A2", "serial_prefix=xyz",
                   "serial_prefix=" + "a" * 41, "serial_prefix=%EF%BC%91", "serial_prefix=000",
                   "status=valid&status=hold", "limit=0", "limit=1001", "cursor=garbage", "cursor=WyJkZWZhdWx0Il0",
                   "expires_before=0001-01-01T00:00:00%2B01:00"]
    for query in bad_queries:
        status, headers, body = await api.call("GET", "/api/v1/certificates?" + query)
        assert status == 400 and headers["Content-Type"].startswith(PROBLEM), (query, status, body)
    for path in ("/api/v1/certificates/xyz", "/api/v1/certificates/" + "f" * 41, "/api/v1/certificates/%C2%B2",
                 "/api/v1/certificates/0", "/api/v1/certificates/-1"):
        for suffix, method in (("", "GET"), ("/revoke", "POST"), ("/hold", "POST")):
            status, _, body = await api.call(method, path + suffix)
            assert status == 400 and body["code"] == "invalid_input", (path, suffix, body)
    unknown = format(random_serial(), "x")
    for suffix, method in (("", "GET"), ("/revoke", "POST"), ("/hold", "POST"), ("/release", "POST")):
        status, _, body = await api.call(method, f"/api/v1/certificates/{unknown}{suffix}")
        assert status == 404 and body["code"] == "certificate_not_found", (suffix, body)
    status, _, body = await api.call("POST", "/api/v1/cas/nope/crl/publish")
    assert status == 404 and body["code"] == "ca_not_found"
    before = rt.crl.publishers["default"].current.number
    for bad in ({"now": True}, [], "x"):
        status, _, body = await api.call("POST", "/api/v1/cas/default/crl/publish", json=bad)
        assert status == 400 and body["code"] == "invalid_input", (bad, body)
    assert rt.crl.publishers["default"].current.number == before  # nothing signed

    future = (rt.clock() + timedelta(days=1)).isoformat()
    for bad in ({"reason": "certificate-hold"}, {"reason": "sleepy"}, {"reason": 1}, {"reasn": "superseded"},
                {"invalidity_date": future}, {"invalidity_date": "soon"}, {"reason": ["superseded"]}):
        status, _, body = await api.call("POST", f"/api/v1/certificates/{serial}/revoke", json=bad)
        assert status == 400 and body["code"] == "invalid_input", (bad, body)
    status, _, body = await api.call("POST", f"/api/v1/certificates/{serial}/hold", json={"reason": "x"})
    assert status == 400
    assert (await rt.certificates.get(serial)).status == "valid"


async def test_concurrent_release_and_revoke_never_500(api):
    rt = api.srv.runtime
    serial = await api.issue(at=rt.clock())
    await rt.revocation.hold(serial, actor="test")
    answers = await asyncio.gather(api.call("POST", f"/api/v1/certificates/{serial}/release"),
                                   api.call("POST", f"/api/v1/certificates/{serial}/revoke",
                                            json={"reason": "superseded"}))
    statuses = sorted(a[0] for a in answers)
    assert statuses in ([200, 200], [200, 409]), answers
