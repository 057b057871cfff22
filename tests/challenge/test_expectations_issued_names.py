"""A one-time challenge's expectations, a validation webhook and an approver judge the subject and SANs the
certificate gets, as the profile's policy computes them: a subject emailAddress becomes an e-mail SAN beside the
CSR's own (RFC 5280 §4.1.2.6), so a CSR that writes only the expected SANs but puts an address in its subject is
refused, and the challenge is not used up by it."""
from __future__ import annotations

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import AttributeOID, NameOID

from scep_server.challenge.enrolments import find_enrolment, page_enrolments
from scep_server.challenge.store import expectations_from
from scep_server.profiles import ProfileSettings
from scep_server.scep import PKIStatus
from tests.challenge.conftest import add_profile, build, dynamic, pki
from tests.challenge.peers import WEBHOOK_SECRET, WebhookReceiver
from tests.factories import rsa_key
from trustkit.paging import PageRequest

HOST = "laptop-1.corp.example"
MAIL = "ceo@corp.example"
TEMPLATE = {"subject_attributes": ["CN", "emailAddress"], "san_types": ["dns", "email"]}


def csr(key, challenge: str | None, *, email: str | None = MAIL, cn: str = "laptop-1", dns: str | None = HOST,
        organization: str | None = None) -> bytes:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


async def send(s, srv, profile: str, content_of) -> object:
    key = rsa_key()
    return await pki(s, srv, profile, build(srv, key, challenge=None, content=content_of(key)), key)


def issued_sans(rep) -> list[str]:
    cert = x509.load_der_x509_certificate(rep.certs[0])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(f"{type(n).__name__}:{n.value}" for n in names)


@pytest.mark.parametrize("expected", [[f"dns:{HOST}"], []])
async def test_a_subject_emailaddress_does_not_pass_a_challenges_san_expectation(server, expected):
    await add_profile(server, "laptops", "dynamic", dynamic(), template=TEMPLATE)
    issued = await server.runtime.challenges.new_challenge(
        "laptops", source="api", expectations=expectations_from({"sans": expected}))
    dns = HOST if expected else None
    async with aiohttp.ClientSession() as s:
        rep = await send(s, server, "laptops", lambda key: csr(key, issued.challenge, dns=dns))
        assert rep.status is PKIStatus.FAILURE, issued_sans(rep)
        assert f"email:{MAIL}" in rep.fail_text and "not the ones this challenge was issued for" in rep.fail_text
        if not expected:
            return
        # the challenge was not used up: the request it was issued for is issued with it
        rep = await send(s, server, "laptops", lambda key: csr(key, issued.challenge, email=None))
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        assert issued_sans(rep) == [f"DNSName:{HOST}"]


async def test_a_challenge_expecting_the_subjects_address_issues_it(server):
    await add_profile(server, "laptops", "dynamic", dynamic(), template=TEMPLATE)
    issued = await server.runtime.challenges.new_challenge("laptops", source="api", expectations=expectations_from(
        {"subject": f"1.2.840.113549.1.9.1={MAIL},CN=laptop-1", "sans": [f"dns:{HOST}", f"email:{MAIL}"]}))
    async with aiohttp.ClientSession() as s:
        rep = await send(s, server, "laptops", lambda key: csr(key, issued.challenge))
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert issued_sans(rep) == [f"DNSName:{HOST}", f"RFC822Name:{MAIL}"]


async def test_a_subject_expectation_is_judged_on_the_subject_the_certificate_gets(server):
    """`cn_only` issues the CN alone: the expectation is met by what is issued, not by what the CSR writes."""
    await add_profile(server, "cn", "dynamic", dynamic(), template={"subject": "cn_only", "san_types": ["dns"]})
    issued = await server.runtime.challenges.new_challenge(
        "cn", source="api", expectations=expectations_from({"subject": "CN=laptop-1"}))
    async with aiohttp.ClientSession() as s:
        rep = await send(s, server, "cn", lambda key: csr(key, issued.challenge, email=None, organization="Other"))
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert x509.load_der_x509_certificate(rep.certs[0]).subject == x509.Name.from_rfc4514_string("CN=laptop-1")


async def test_a_profile_without_email_sans_judges_the_subjects_address_by_the_expectation(server):
    """A profile whose san_types leave out email still issues a subject emailAddress with its e-mail SAN (profiles
    that issued such certificates keep issuing and renewing them); a challenge expecting only a DNS name refuses
    it all the same, since that SAN is one of the certificate's."""
    await add_profile(server, "laptops", "dynamic", dynamic(),
                      template={"subject_attributes": ["CN", "emailAddress"], "san_types": ["dns"]})
    issued = await server.runtime.challenges.new_challenge(
        "laptops", source="api", expectations=expectations_from({"sans": [f"dns:{HOST}"]}))
    async with aiohttp.ClientSession() as s:
        rep = await send(s, server, "laptops", lambda key: csr(key, issued.challenge))
        assert rep.status is PKIStatus.FAILURE
        assert f"email:{MAIL}" in rep.fail_text and "not the ones this challenge was issued for" in rep.fail_text
        rep = await send(s, server, "laptops", lambda key: csr(key, issued.challenge, email=None))
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        both = await server.runtime.challenges.new_challenge(
            "laptops", source="api", expectations=expectations_from({"sans": [f"dns:{HOST}", f"email:{MAIL}"]}))
        rep = await send(s, server, "laptops", lambda key: csr(key, both.challenge))
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert issued_sans(rep) == [f"DNSName:{HOST}", f"RFC822Name:{MAIL}"]


async def test_the_webhook_is_shown_the_sans_the_certificate_gets(server, tmp_path):
    secret = tmp_path / "hook-secret"
    secret.write_text(WEBHOOK_SECRET)
    async with WebhookReceiver(allowed={"letmein"}) as hook, aiohttp.ClientSession() as s:
        await add_profile(server, "hooked", "delegated", {
            "provider": "webhook", "webhook": {"url": f"{hook.url}/hook", "secret": {"file": str(secret)},
                                               "timeout_seconds": 1, "retries": 0, "allow_http_loopback": True}},
            template=TEMPLATE)
        rep = await send(s, server, "hooked", lambda key: csr(key, "letmein"))
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert [r["type"] for r in hook.received] == ["scep.challenge", "scep.success"]
    for received in hook.received:
        assert received["x509CertificateRequest"]["sans"] == [f"dns:{HOST}", f"email:{MAIL}"]


async def test_a_pending_enrolment_is_listed_with_the_sans_its_certificate_gets(server):
    rt = server.runtime
    await rt.profiles.create("manual", ca=next(iter(rt.cas)), challenge_kind="static", static_secret="approve-me",
                             now=rt.clock(), settings=ProfileSettings(require_approval=True, template=TEMPLATE))
    async with aiohttp.ClientSession() as s:
        rep = await send(s, server, "manual", lambda key: csr(key, "approve-me"))
    assert rep.status is PKIStatus.PENDING, rep.fail_text
    page = await page_enrolments(rt.engine, PageRequest(limit=10, after=None), profile="manual")
    [row] = page.items
    assert row["sans"] == [f"dns:{HOST}", f"email:{MAIL}"]
    one = await find_enrolment(rt.engine, "manual", row["transaction_id"])
    assert one["sans"] == [f"dns:{HOST}", f"email:{MAIL}"]
    assert one["subject"] == f"1.2.840.113549.1.9.1={MAIL},CN=laptop-1"
