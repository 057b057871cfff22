"""The console's detail pages over HTTP: a certificate (subject, SANs, validity, key, device binding, events) and
an enrolment (the request's subject, SANs, key type and size, the requester's transaction id; approve or reject
with a reason that the audit log keeps). Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import html
import json
import re
from urllib.parse import urlencode

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scep_server.ca.authority import random_serial
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from scep_server.store.tables import certificates, events, scep_transactions
from tests.factories import csr, record_issued
from trustkit.db import writer

from .conftest import CSRF


def actor(console) -> str:
    return f"token:{console.admin_id}:console-admin"


def td(text: str, ident: str) -> str:
    """The text of the element with that id (tags removed, entities decoded)."""
    found = re.search(rf'id="{ident}"[^>]*>(.*?)</td>', text, re.S)
    assert found, ident
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()


async def test_certificate_page_shows_subject_sans_validity_key_binding_and_events(console):
    from scep_server.binding.service import services
    from scep_server.binding.tables import device_certs

    rt = console.srv.runtime
    ca = rt.cas["default"]
    now = rt.clock()
    request = csr(console.key, "laptop-7", sans=[x509.DNSName("laptop-7.example.com")])
    cert = ca.issue(request, IssuancePolicy(CertificateTemplate(san_types=["dns"])), serial=random_serial(), now=now)
    serial = await record_issued(rt.engine, ca, cert, issued_at=now, txid="tx-<laptop-7>")
    await services(rt).devices.create("laptop-7", name="Ann's laptop", actor="test")
    der = cert.public_bytes(serialization.Encoding.DER)
    async with writer(rt.engine).begin() as conn:
        await conn.execute(certificates.update().where(certificates.c.serial == serial)
                           .values(enrolled_device_id="laptop-7"))
        await conn.execute(device_certs.insert().values(
            fingerprint_sha256=hashlib.sha256(der).hexdigest(), device_id="laptop-7", ca="default", external=False,
            serial=serial, not_after=cert.not_valid_after_utc, current=True, state="active", bound_at=now))
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie)
    assert (await console.post(f"/admin/certificates/{serial}/hold", {"csrf": token}, cookie))[0] == 303
    status, _, text = await console.get(f"/admin/certificates/{serial}", cookie)
    assert status == 200
    assert "CN=laptop-7" in text and "laptop-7.example.com" in text
    assert td(text, "validity") == (f"{cert.not_valid_before_utc.isoformat()} to "
                                    f"{cert.not_valid_after_utc.isoformat()}")
    assert td(text, "key") == "RSA 2048 bits"
    assert 'href="/admin/devices/laptop-7"' in text and 'id="bound-device"' in text
    assert "(device active); active, the device's current certificate" in td(text, "binding")
    assert "tx-&lt;laptop-7&gt;" in text and "<laptop-7>" not in text
    events_table = re.search(r'<table class="list" id="events">(.*?)</table>', text, re.S).group(1)
    assert "pki.cert.lifecycle.hold" in events_table and actor(console) in events_table


async def test_certificate_page_without_a_binding_or_device(console):
    serial = await console.issue(cn="plain")
    cookie, _ = await console.sign_in()
    status, _, text = await console.get(f"/admin/certificates/{serial}", cookie)
    assert status == 200 and td(text, "binding") == "not bound" and td(text, "enrolled-device") == ""


async def pending(console, txid: str, cn: str, key, sans: list | None = None) -> None:
    request = csr(key, cn, sans=sans)
    der = request.public_bytes(serialization.Encoding.DER)
    now = console.srv.runtime.clock()
    async with writer(console.srv.runtime.engine).begin() as conn:
        await conn.execute(scep_transactions.insert().values(
            profile="default", transaction_id=txid, state="pending", message_type=19, csr_der=der,
            public_key_sha256="0" * 64, created_at=now, updated_at=now))


def one(txid: str, **extra) -> str:
    return "/admin/enrolments/one?" + urlencode({"profile": "default", "transaction_id": txid, **extra})


async def event_data(console, kind: str, subject: str) -> dict:
    async with console.srv.runtime.engine.connect() as conn:
        row = (await conn.execute(sa.select(events.c.actor, events.c.data)
                                  .where(events.c.kind == kind, events.c.subject == subject))).one()
    return {"actor": row.actor, **json.loads(row.data)}


async def test_enrolment_page_shows_the_request_then_approve_and_reject_with_a_reason(console):
    await pending(console, "tx-rsa", "printer-1", console.key)  # the default profile copies no SAN
    await pending(console, "tx <ec>&1", "sensor-2", ec.generate_private_key(ec.SECP256R1()),
                  [x509.RFC822Name("ops@example.com"), x509.DNSName("sensor-2.example.com")])
    cookie, _ = await console.sign_in()
    _, _, text = await console.get("/admin/enrolments", cookie)
    assert f'href="{html.escape(one("tx-rsa"))}"' in text  # the list links each enrolment's page
    status, _, text = await console.get(one("tx-rsa"), cookie)
    assert status == 200
    assert (td(text, "profile"), td(text, "transaction-id"), td(text, "state")) == ("default", "tx-rsa", "pending")
    assert td(text, "subject") == "CN=printer-1" and td(text, "sans") == "none"
    assert td(text, "key") == "RSA 2048 bits"
    assert 'id="action-approve"' in text and 'id="action-reject"' in text
    status, _, text = await console.get(one("tx <ec>&1"), cookie)
    assert status == 200 and td(text, "key") == "EC 256 bits (secp256r1)" and "ops@example.com" in td(text, "sans")
    assert "sensor-2.example.com" in td(text, "sans")
    assert td(text, "transaction-id") == "tx <ec>&1" and "<ec>" not in text
    # approve with a reason: the confirmation page shows the request again; the reason goes into the audit log
    status, _, text = await console.get(one("tx-rsa").replace("/one?", "/confirm?") + "&decision=approve", cookie)
    assert status == 200 and td(text, "subject") == "CN=printer-1" and 'name="reason"' in text
    token = CSRF.search(text).group(1)
    form = {"csrf": token, "profile": "default", "transaction_id": "tx-rsa", "decision": "approve",
            "reason": "checked by phone"}
    assert (await console.post("/admin/enrolments/decide", form, cookie))[0] == 303
    status, _, text = await console.get(one("tx-rsa"), cookie)
    assert td(text, "state") == "issued" and actor(console) in text and 'id="action-approve"' not in text
    serial = re.search(r'id="serial">([0-9a-f]+)<', text).group(1)
    assert await event_data(console, "pki.cert.issue", serial) == {
        "actor": actor(console), "transaction_id": "tx-rsa", "approved": True, "renewal_of": None,
        "reason": "checked by phone"}
    form = {**form, "transaction_id": "tx <ec>&1", "decision": "reject", "reason": "unknown <sensor>"}
    assert (await console.post("/admin/enrolments/decide", form, cookie))[0] == 303
    status, _, text = await console.get(one("tx <ec>&1"), cookie)
    assert td(text, "state") == "rejected" and td(text, "fail-text") == "unknown <sensor>"
    assert await event_data(console, "scep.enrolment.reject", "tx <ec>&1") == {
        "actor": actor(console), "profile": "default", "reason": "unknown <sensor>"}
    # a decided enrolment has no confirmation page; an unknown one, or a bad key, is a 4xx page
    for path, expected in ((one("tx-rsa").replace("/one?", "/confirm?") + "&decision=reject", 409),
                           (one("nothing"), 404), (one("nothing").replace("/one?", "/confirm?") + "&decision=approve", 404),
                           ("/admin/enrolments/one", 400), (one("x" * 300), 400), (one("a\x00b"), 400),
                           ("/admin/enrolments/one?profile=default&transaction_id=t&profile=x", 404)):
        status, headers, _ = await console.get(path, cookie)
        assert status == expected and headers["Content-Type"].startswith("text/html"), path
    assert (await console.get(one("tx-rsa")))[0] == 303  # anonymous
