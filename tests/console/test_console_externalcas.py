"""The console's external CAs page over HTTP: the list with the CRL checker's latest outcome per CA and its
filters, add (an uploaded PEM or DER certificate, refused as the API refuses it), remove with a confirmation;
both audited with the session's principal; anonymous requests, missing CSRF tokens and hostile values end in a
redirect or a 4xx page, never a 500. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from crl.check import FailureKind, SourceStatus
from crl.config import Policy
from scep_server.binding.external import _outcome
from scep_server.store.tables import events
from tests.factories import rsa_key

from .conftest import CSRF

ROW = re.compile(r'<tr class="external-ca" data-name="([^"]*)">(.*?)</tr>', re.S)
NOW = datetime.now(timezone.utc)


def customer_ca(cn: str = "Acme Devices CA", *, ca: bool = True, cdp: bool = True) -> x509.Certificate:
    key = rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
               .not_valid_after(NOW + timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, ca, ca, False, False), critical=True))
    if cdp:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier("http://127.0.0.1:9/devices.crl")], None, None, None)]), critical=False)
    return builder.sign(key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def names(text: str) -> list[str]:
    return [html.unescape(n) for n, _ in ROW.findall(text)]


def row_of(text: str, name: str) -> str:
    return dict((html.unescape(n), body) for n, body in ROW.findall(text))[name]


async def upload(console, cookie: str, data: bytes | None, *, csrf: str | None, name: str = "acme",
                 policy: str = "fail-closed", headers: dict | None = None):
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf", csrf)
    form.add_field("name", name)
    form.add_field("policy", policy)
    if data is not None:
        form.add_field("file", data, filename="ca.pem", content_type="application/x-pem-file")
    hdrs = {"Cookie": f"console_session={cookie}", **(headers or {})}
    async with console.http.post(console.url + "/admin/external-cas/new", data=form, headers=hdrs,
                                 allow_redirects=False) as r:
        return r.status, r.headers, await r.text()


async def registered(console) -> list[str]:
    return [ca.name for ca in await console.srv.runtime.binding.external.list()]


async def ca_events(console) -> list[tuple]:
    async with console.srv.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.kind, events.c.subject, events.c.actor)
                                   .where(events.c.kind.like("pki.ca.%")).order_by(events.c.id))).all()
    return [tuple(r) for r in rows]


async def test_anonymous_requests_go_to_the_sign_in_page(console):
    for path in ("/admin/external-cas", "/admin/external-cas/new", "/admin/external-cas/remove?name=acme"):
        status, headers, _ = await console.get(path)
        assert status == 303 and headers["Location"] == "/admin/login", path
    status, headers, _ = await upload(console, "nobody", pem(customer_ca()), csrf="0" * 64)
    assert status == 303 and headers["Location"] == "/admin/login"
    status, headers, _ = await console.post("/admin/external-cas/remove", {"csrf": "0" * 64, "name": "acme"})
    assert status == 303 and await registered(console) == []


async def test_posts_without_the_sessions_csrf_token_or_from_another_site_are_refused(console):
    rt = console.srv.runtime
    await rt.binding.external.add("kept", customer_ca("Kept CA"), policy=Policy.FAIL_CLOSED, actor="test",
                                  now=rt.clock())
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie, "/admin/external-cas/new")
    for csrf in (None, "f" * 64):
        status, _, text = await upload(console, cookie, pem(customer_ca()), csrf=csrf)
        assert status == 403 and "CSRF" in text
        form = {"name": "kept", **({"csrf": csrf} if csrf else {})}
        assert (await console.post("/admin/external-cas/remove", form, cookie))[0] == 403
    status, _, _ = await upload(console, cookie, pem(customer_ca()), csrf=token, headers={"Origin": "https://evil.example"})
    assert status == 403
    status, _, _ = await console.post("/admin/external-cas/remove", {"name": "kept", "csrf": token}, cookie,
                                      headers={"Origin": "https://evil.example"})
    assert status == 403
    assert await registered(console) == ["kept"]


async def test_add_list_filter_and_remove_audited_with_the_session(console):
    external = console.srv.runtime.binding.external
    cookie, _ = await console.sign_in()
    status, _, text = await console.get("/admin/external-cas", cookie)
    assert status == 200 and "No external CA." in text and 'href="/admin/external-cas"' in text  # in the navigation
    status, _, text = await console.get("/admin/external-cas/new", cookie)
    assert status == 200 and 'enctype="multipart/form-data"' in text
    token = CSRF.search(text).group(1)
    acme = customer_ca()
    status, headers, _ = await upload(console, cookie, pem(acme), csrf=token, name="acme", policy="fail-open")
    assert status == 303 and headers["Location"] == "/admin/external-cas?name=acme"
    beta = customer_ca("Beta <b>CA</b>")  # a DER file works too
    status, _, _ = await upload(console, cookie, beta.public_bytes(serialization.Encoding.DER), csrf=token,
                                name="beta & co")
    assert status == 303
    assert await registered(console) == ["acme", "beta & co"]
    # the checker holds both (reloaded after each change), with no CRL URL seen yet
    _, _, text = await console.get("/admin/external-cas", cookie)
    assert names(text) == ["acme", "beta & co"] and "&lt;b" in row_of(text, "beta & co") and "<b>" not in text
    assert 'class="state no_crl_url"' in row_of(text, "acme") and ">fail-open<" in row_of(text, "acme")
    # a CRL for acme that does not parse: the checker's last outcome is a failure, shown with its kind
    outcome = await external.checker.install("acme", "http://127.0.0.1:9/devices.crl", b"not a CRL")
    assert not outcome.ok
    _, _, text = await console.get("/admin/external-cas", cookie)
    assert 'class="state failing"' in row_of(text, "acme")
    assert re.search(r"(malformed|forbidden_destination): ", row_of(text, "acme"))
    assert 'class="state no_crl_url"' in row_of(text, "beta & co")
    cases = {"name=ACM": ["acme"], "name=co": ["beta & co"], "name=zzz": [], "policy=fail-open": ["acme"],
             "policy=fail-closed": ["beta & co"], "state=failing": ["acme"], "state=no_crl_url": ["beta & co"],
             "state=fresh": [], "name=a&policy=fail-closed": ["beta & co"]}
    for query, expected in cases.items():
        status, _, text = await console.get(f"/admin/external-cas?{query}", cookie)
        assert status == 200 and names(text) == expected, query
    # remove, through its confirmation page
    status, _, text = await console.get("/admin/external-cas/remove?name=beta+%26+co", cookie)
    assert status == 200 and 'name="name" value="beta &amp; co"' in text
    status, headers, _ = await console.post("/admin/external-cas/remove", {"csrf": token, "name": "beta & co"}, cookie)
    assert status == 303 and headers["Location"] == "/admin/external-cas"
    assert await registered(console) == ["acme"] and "beta & co" not in external.outcomes()
    status, _, _ = await console.post("/admin/external-cas/remove", {"csrf": token, "name": "beta & co"}, cookie)
    assert status == 404
    me = f"token:{console.admin_id}:console-admin"
    assert await ca_events(console) == [("pki.ca.add", "acme", me), ("pki.ca.add", "beta & co", me),
                                        ("pki.ca.remove", "beta & co", me)]


async def test_a_certificate_the_api_refuses_is_refused_with_the_form_again(console):
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie, "/admin/external-cas/new")
    assert (await upload(console, cookie, pem(customer_ca()), csrf=token, name="acme"))[0] == 303
    cases = [(pem(customer_ca("Leaf", ca=False)), {}, "basicConstraints"),
             (pem(customer_ca("No CDP", cdp=False)), {}, "CRL Distribution Points"),
             (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", {}, "not an X.509"),
             (b"\x00\x01garbage", {}, "not an X.509"),
             (pem(customer_ca("Other")), {"name": "acme"}, "exists"),  # the name is taken
             (pem(customer_ca("Other")), {"name": "x" * 65}, "1 to 64"),
             (pem(customer_ca("Other")), {"name": ""}, "1 to 64"),
             (pem(customer_ca("Other")), {"name": "a\x00b"}, "1 to 64"),
             (pem(customer_ca("Other")), {"name": "other", "policy": "sometimes"}, "policy"),
             (None, {"name": "other"}, "choose")]
    for data, form, message in cases:
        status, headers, text = await upload(console, cookie, data, csrf=token, **form)
        assert status == 400 and 'id="error"' in text and message in html.unescape(text), (form, message)
        assert headers["Content-Type"].startswith("text/html")
    # the same certificate under another name
    status, _, text = await upload(console, cookie, pem((await console.srv.runtime.binding.external.list())[0].cert),
                                   csrf=token, name="acme-again")
    assert status == 400 and "exists" in text
    # a file beyond the bound on a certificate: 413
    status, _, _ = await upload(console, cookie, b"x" * 40000, csrf=token, name="big")
    assert status == 413
    assert await registered(console) == ["acme"]


@pytest.mark.parametrize("path, expected", [
    ("/admin/external-cas?policy=sometimes", 400), ("/admin/external-cas?state=great", 400),
    ("/admin/external-cas?name=" + "x" * 65, 400), ("/admin/external-cas?name=%00", 400),
    ("/admin/external-cas/remove", 400), ("/admin/external-cas/remove?name=", 400),
    ("/admin/external-cas/remove?name=%3Cscript%3E", 404), ("/admin/external-cas/remove?name=" + "y" * 300, 400)])
async def test_hostile_values_are_a_4xx_page(console, path, expected):
    cookie, _ = await console.sign_in()
    status, headers, text = await console.get(path, cookie)
    assert status == expected and headers["Content-Type"].startswith("text/html") and "<script" not in text, path


async def test_hostile_form_bodies_are_a_4xx_page(console):
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie)
    for form in ({"name": ""}, {"name": "x" * 300}, {}, {"name": "nobody"}):
        status, _, _ = await console.post("/admin/external-cas/remove", {**form, "csrf": token}, cookie)
        assert status in (400, 404), form
    # a urlencoded form to the upload: no file, so the form again
    status, _, text = await console.post("/admin/external-cas/new", {"csrf": token, "name": "acme"}, cookie)
    assert status == 400 and "choose" in text
    hdrs = {"Cookie": f"console_session={cookie}", "Content-Type": "multipart/form-data; boundary=xyz"}
    async with console.http.post(console.url + "/admin/external-cas/new", data=b"--xyz\r\nnot a part",
                                 headers=hdrs, allow_redirects=False) as r:
        assert r.status == 403  # no form: no CSRF token
    assert await registered(console) == []


def _source(*, fresh=True, number=1, success=True, failure=None) -> SourceStatus:
    at = NOW if success else None
    return SourceStatus(ca="x", url="http://crl.example/x.crl", fresh=fresh, crl_number=number, this_update=at,
                        next_update=at, entries=0, last_success_at=at, last_failure=failure,
                        last_failure_detail="boom" if failure else None, last_failure_at=NOW if failure else None)


def test_the_outcome_of_a_ca_is_the_worst_of_its_crl_urls():
    assert _outcome([]).state == "no_crl_url"
    assert _outcome([_source()]).state == "fresh" and _outcome([_source()]).crl_number == 1
    assert _outcome([_source(), _source(fresh=False, number=4)]).state == "stale"
    assert _outcome([_source(), _source(fresh=False, number=None, success=False)]).state == "pending"
    failing = _outcome([_source(), _source(fresh=False, number=None, success=False, failure=FailureKind.TIMEOUT)])
    assert (failing.state, failing.last_failure, failing.last_failure_detail, failing.urls) == \
        ("failing", "timeout", "boom", 2)
