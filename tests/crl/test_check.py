"""The BYO-CA checker against a customer CA run with OpenSSL, its CRLs served by a local aiohttp server."""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import time
from datetime import timedelta

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, ObjectIdentifier

from crl.check import CertificateRefused, CheckStatus, CrlChecker, FailureKind, destination_refused
from crl.config import CheckerSettings, Policy
from crl.parse import pem_from_der
from tests.crl.conftest import RecordingLogger
from tests.crl.pki import NOW, OpenSslCa, make_ca, openssl
from trustkit.clock import SettableClock

REVOKED, HELD, GOOD, NO_CDP = 0x1001, 0x1002, 0x1003, 0x1004
LOOPBACK = ("127.0.0.1/32",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def customer(tmp_path_factory):
    """A customer's CA made with the openssl CLI, its CRL URL on a loopback port, and four leaf certificates."""
    port = free_port()
    ca = OpenSslCa(tmp_path_factory.mktemp("customer-ca"), "Customer Device CA",
                   f"http://127.0.0.1:{port}/customer.crl")
    ca.port = port
    ca.leaves = {s: ca.issue(s) for s in (REVOKED, HELD, GOOD)}
    ca.leaves[NO_CDP] = ca.issue(NO_CDP, cdp=False)
    ca.impostor()
    return ca


class CrlServer:
    """The customer's CDP: serves whatever body the test sets, with an ETag, optionally slowly."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.delay = 0.0
        self.content_type = "application/pkix-crl"
        self.requests: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        etag = f'"{hashlib.sha256(self.body).hexdigest()[:16]}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(status=self.status, body=self.body,
                            headers={"ETag": etag, "Content-Type": self.content_type})


@pytest.fixture
async def cdp(aiohttp_server, customer):
    server = CrlServer()
    app = web.Application()
    app.router.add_get("/customer.crl", server.handle)
    await aiohttp_server(app, port=customer.port)
    return server


@pytest.fixture
async def checker():
    made: list[CrlChecker] = []

    def make(**kw) -> CrlChecker:
        # the customer's CDP is a loopback test peer: allowed explicitly, as loopback is refused by default
        settings = kw.pop("settings", None) or CheckerSettings(**{"allow_networks": LOOPBACK, **kw.pop("opts", {})})
        c = CrlChecker(settings=settings, logger=kw.pop("logger", RecordingLogger()), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.stop()


def crl_with(customer: OpenSslCa, revoked: dict, **kw) -> bytes:
    customer.set_revoked(revoked)
    return customer.gencrl(**kw)


async def test_revoked_held_good_and_released(customer, cdp, checker):
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise", HELD: "certificateHold"}, number=1)
    c = checker()
    name = c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    [outcome] = await c.refresh()
    assert outcome.ok and outcome.changed and outcome.crl_number == 1

    r = c.check(customer.leaves[REVOKED])
    assert (r.status, r.allowed, r.reason, r.revocation_reason, r.ca, r.crl_number) == \
        (CheckStatus.REVOKED, False, "listed", 1, name, 1)
    r = c.check(customer.leaves[HELD])
    assert (r.status, r.allowed, r.revocation_reason) == (CheckStatus.ON_HOLD, False, 6)
    r = c.check(customer.leaves[GOOD])
    assert (r.status, r.allowed, r.reason) == (CheckStatus.GOOD, True, "not_listed")
    assert c.check_serial("customer", GOOD).status is CheckStatus.GOOD
    assert c.check_serial("customer", REVOKED).status is CheckStatus.REVOKED

    # the hold is released: the serial leaves the next CRL
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=2)
    [outcome] = await c.refresh()
    assert outcome.ok and outcome.changed and outcome.crl_number == 2
    assert c.check(customer.leaves[HELD]).status is CheckStatus.GOOD
    assert c.check(customer.leaves[REVOKED]).status is CheckStatus.REVOKED
    [status] = c.status()
    assert status.fresh and status.crl_number == 2 and status.entries == 1 and status.last_failure is None


async def test_answers_agree_with_openssl_verify(customer, cdp, checker, tmp_path):
    der = crl_with(customer, {REVOKED: "keyCompromise", HELD: "certificateHold"}, number=3)
    cdp.body = pem_from_der(der)  # served as PEM: tolerated
    c = checker()
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    assert (await c.refresh())[0].ok
    (tmp_path / "crl.pem").write_bytes(pem_from_der(der))
    (tmp_path / "ca.pem").write_bytes(customer.cert_pem)
    for serial in (REVOKED, HELD, GOOD):
        (tmp_path / "leaf.pem").write_bytes(customer.leaves[serial])
        proc = openssl("verify", "-crl_check", "-CAfile", "ca.pem", "-CRLfile", "crl.pem", "leaf.pem", cwd=tmp_path,
                       check=False)
        openssl_ok = proc.returncode == 0
        assert openssl_ok == c.check(customer.leaves[serial]).allowed, (serial, proc.stdout, proc.stderr)
        if not openssl_ok:
            assert b"certificate revoked" in proc.stdout + proc.stderr


async def test_certificates_without_cdp_are_refused(customer, tmp_path, checker):
    c = checker(opts={"policy": Policy.FAIL_OPEN})
    c.add_ca(customer.cert_pem, name="customer")
    r = c.check(customer.leaves[NO_CDP])
    assert (r.status, r.allowed, r.reason) == (CheckStatus.UNKNOWN, False, "no_cdp")
    assert "CRL Distribution Points" in r.detail
    no_cdp_ca = OpenSslCa(tmp_path / "nocdp", "CA Without CDP", "http://127.0.0.1:9/x.crl", ca_cdp=None)
    with pytest.raises(CertificateRefused) as info:
        c.add_ca(no_cdp_ca.cert_pem)
    assert info.value.reason == "no_cdp" and "CRL Distribution Points" in str(info.value)
    assert c.add_ca(no_cdp_ca.cert_pem, name="root", require_cdp=False) == "root"  # e.g. a self-signed root


async def test_ca_certificates_that_cannot_sign_crls_are_refused(checker):
    c = checker()
    with pytest.raises(CertificateRefused) as info:
        c.add_ca(make_ca("No cRLSign", kind="ec", cdp="http://127.0.0.1/r.crl", crl_sign=False).pem)
    assert info.value.reason == "no_crl_sign"
    leaf = make_ca("Issuer", kind="ec", cdp="http://127.0.0.1/r.crl")
    from tests.crl.pki import issue
    with pytest.raises(CertificateRefused) as info:
        c.add_ca(issue(leaf, 5))
    assert info.value.reason == "not_a_ca"


async def test_unknown_issuer_and_forged_issuer_name(customer, checker):
    c = checker(opts={"policy": Policy.FAIL_OPEN})
    stranger = make_ca("Stranger CA", kind="ec", cdp="http://127.0.0.1/s.crl")
    from tests.crl.pki import issue
    r = c.check(issue(stranger, 77))
    assert (r.status, r.allowed, r.reason) == (CheckStatus.UNKNOWN, False, "unknown_issuer")
    c.add_ca(customer.cert_pem, name="customer")
    # a certificate naming the customer CA as issuer but signed by another key
    forged = x509.load_pem_x509_certificate(customer.leaves[GOOD])
    other = serialization.load_pem_private_key((customer.directory / "other.key").read_bytes(), None)
    rebuilt = (x509.CertificateBuilder().subject_name(forged.subject).issuer_name(forged.issuer)
               .public_key(forged.public_key()).serial_number(forged.serial_number)
               .not_valid_before(forged.not_valid_before_utc).not_valid_after(forged.not_valid_after_utc)
               .add_extension(forged.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value,
                              critical=False).sign(other, hashes.SHA256()))
    r = c.check(rebuilt)
    assert (r.allowed, r.reason) == (False, "not_issued_by_ca")


async def test_wrong_signer_is_refused_and_last_good_kept(customer, cdp, checker):
    log = RecordingLogger()
    c = checker(logger=log)
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=10)
    assert (await c.refresh())[0].ok
    # same issuer name, another key: its AKI gives it away
    cdp.body = crl_with(customer, {}, number=11, key_file="other.key", cert_file="other.pem")
    [outcome] = await c.refresh()
    assert not outcome.ok and outcome.failure is FailureKind.WRONG_SIGNER
    # without an AKI only the signature tells
    cdp.body = crl_with(customer, {}, number=12, key_file="other.key", cert_file="other.pem", aki=False)
    [outcome] = await c.refresh()
    assert not outcome.ok and outcome.failure is FailureKind.BAD_SIGNATURE
    r = c.check(customer.leaves[REVOKED])
    assert r.status is CheckStatus.REVOKED and r.crl_number == 10  # the last good copy still answers
    assert {"crl.check.wrong_signer", "crl.check.bad_signature"} <= set(log.events("warning"))
    [status] = c.status()
    assert status.last_failure is FailureKind.BAD_SIGNATURE and status.crl_number == 10


@pytest.mark.parametrize("policy, allowed", [(Policy.FAIL_CLOSED, False), (Policy.FAIL_OPEN, True)])
async def test_expired_crl_is_not_used(customer, cdp, checker, policy, allowed):
    log = RecordingLogger()
    c = checker(opts={"policy": policy}, logger=log)
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=20, last=NOW - timedelta(days=10),
                        next=NOW - timedelta(days=3))
    [outcome] = await c.refresh()
    assert outcome.failure is FailureKind.EXPIRED and "crl.check.expired" in log.events()
    for serial in (GOOD, REVOKED):
        r = c.check(customer.leaves[serial])
        assert (r.status, r.allowed, r.reason) == (CheckStatus.UNKNOWN, allowed, "no_crl")


@pytest.mark.parametrize("policy", [Policy.FAIL_CLOSED, Policy.FAIL_OPEN])
async def test_last_good_crl_past_next_update(customer, checker, policy):
    # not before the CA certificate (`openssl req -x509` dates it on the real clock, after NOW)
    clock = SettableClock(max(NOW, x509.load_pem_x509_certificate(customer.cert_pem).not_valid_before_utc))
    c = checker(opts={"policy": policy}, clock=clock)
    c.add_ca(customer.cert_pem, name="customer")
    url = f"http://127.0.0.1:{customer.port}/customer.crl"
    outcome = await c.install("customer", url, crl_with(customer, {REVOKED: "keyCompromise", HELD: "certificateHold"},
                                                        number=30, last=NOW, next=NOW + timedelta(days=1)))
    assert outcome.ok
    assert c.check(customer.leaves[GOOD]).status is CheckStatus.GOOD
    clock.advance(timedelta(days=1, seconds=1).total_seconds())
    r = c.check(customer.leaves[GOOD])
    assert (r.status, r.reason, r.allowed) == (CheckStatus.UNKNOWN, "stale_crl", policy is Policy.FAIL_OPEN)
    for serial, status in ((REVOKED, CheckStatus.REVOKED), (HELD, CheckStatus.ON_HOLD)):
        r = c.check(customer.leaves[serial])  # listed on the last good CRL: refused under either policy
        assert (r.status, r.reason, r.allowed) == (status, "listed_on_stale_crl", False)
    assert not c.status()[0].fresh


async def test_rolled_back_crl_is_refused(customer, cdp, checker):
    log = RecordingLogger()
    c = checker(logger=log)
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=41)
    assert (await c.refresh())[0].ok
    cdp.body = crl_with(customer, {}, number=40)  # an older CRL that does not list the serial yet
    [outcome] = await c.refresh()
    assert outcome.failure is FailureKind.ROLLBACK and "goes backwards" in outcome.detail
    cdp.body = crl_with(customer, {}, number=41)  # the same number, other content
    [outcome] = await c.refresh()
    assert outcome.failure is FailureKind.ROLLBACK and "reused" in outcome.detail
    cdp.body = crl_with(customer, {}, number=42, last=NOW - timedelta(days=1))  # higher number, older thisUpdate
    [outcome] = await c.refresh()
    assert outcome.failure is FailureKind.ROLLBACK and "thisUpdate" in outcome.detail
    r = c.check(customer.leaves[REVOKED])
    assert r.status is CheckStatus.REVOKED and r.crl_number == 41
    assert log.events("warning").count("crl.check.rollback") == 3


@pytest.mark.parametrize("policy, allowed", [(Policy.FAIL_CLOSED, False), (Policy.FAIL_OPEN, True)])
async def test_unreachable_server_under_both_policies(customer, checker, policy, allowed):
    log = RecordingLogger()
    c = checker(opts={"policy": policy, "timeout": 2}, logger=log)
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    [outcome] = await c.refresh()  # nothing listens on the customer's port in this test
    assert not outcome.ok and outcome.failure is FailureKind.UNREACHABLE
    assert "crl.check.unreachable" in log.events("warning")
    for serial in (GOOD, REVOKED):
        r = c.check(customer.leaves[serial])
        assert (r.status, r.allowed) == (CheckStatus.UNKNOWN, allowed)


async def test_per_ca_policy_overrides_the_default(customer, checker):
    c = checker(opts={"policy": Policy.FAIL_CLOSED})
    c.add_ca(customer.cert_pem, name="customer", policy=Policy.FAIL_OPEN)
    assert c.check(customer.leaves[GOOD]).allowed


async def test_transport_failures_each_have_their_own_kind(customer, cdp, checker):
    log = RecordingLogger()
    url = f"http://127.0.0.1:{customer.port}/customer.crl"
    c = checker(opts={"timeout": 0.3, "max_bytes": 4096}, logger=log)
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[url])
    good = crl_with(customer, {REVOKED: "keyCompromise"}, number=50)

    cdp.status, cdp.body = 404, b"not here"
    assert (await c.refresh())[0].failure is FailureKind.HTTP_ERROR
    cdp.status, cdp.body = 200, b"\x30\x03\x02\x01\x01"
    assert (await c.refresh())[0].failure is FailureKind.MALFORMED
    cdp.body = good + b"\x00" * 5000
    assert (await c.refresh())[0].failure is FailureKind.TOO_LARGE
    cdp.body, cdp.delay = good, 1.0
    started = time.monotonic()
    assert (await c.refresh())[0].failure is FailureKind.TIMEOUT
    assert time.monotonic() - started < 0.9
    cdp.delay = 0
    assert (await c.refresh())[0].ok
    events = log.events("warning")
    for kind in ("http_error", "malformed", "too_large", "timeout"):
        assert f"crl.check.{kind}" in events


async def test_scope_and_unknown_critical_extensions(customer, cdp, checker):
    url = f"http://127.0.0.1:{customer.port}/customer.crl"
    c = checker()
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[url])
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=60, idp_uri="http://127.0.0.1/other-shard.crl")
    [outcome] = await c.refresh()
    assert outcome.failure is FailureKind.SCOPE_MISMATCH
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=61, idp_uri=url)
    assert (await c.refresh())[0].ok
    assert c.check(customer.leaves[REVOKED]).status is CheckStatus.REVOKED
    assert c.check(customer.leaves[GOOD]).status is CheckStatus.GOOD

    key = serialization.load_pem_private_key((customer.directory / "ca.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate(customer.cert_pem)
    oid = ObjectIdentifier("1.3.6.1.4.1.99999.7")
    odd = (x509.CertificateRevocationListBuilder(
        cert.subject, NOW + timedelta(minutes=1), NOW + timedelta(days=1),
        [x509.Extension(ExtensionOID.CRL_NUMBER, False, x509.CRLNumber(62)),
         x509.Extension(oid, True, x509.UnrecognizedExtension(oid, b"\x05\x00"))], [])
        .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    cdp.body = odd
    [outcome] = await c.refresh()
    assert outcome.failure is FailureKind.UNSUPPORTED and "99999.7" in outcome.detail


async def test_conditional_refetch_and_background_fetch_on_first_sight(customer, cdp, checker):
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=70)
    c = checker(opts={"refresh_interval": 3600})
    c.add_ca(customer.cert_pem, name="customer")
    await c.start()
    r = c.check(customer.leaves[REVOKED])  # first sight of the CDP URL: fetched in the background
    assert (r.status, r.reason) == (CheckStatus.UNKNOWN, "no_crl")
    deadline = time.monotonic() + 5
    while c.check(customer.leaves[REVOKED]).status is CheckStatus.UNKNOWN and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert c.check(customer.leaves[REVOKED]).status is CheckStatus.REVOKED
    assert len(cdp.requests) == 1 and "application/pkix-crl" in cdp.requests[0]["Accept"]
    [outcome] = await c.refresh()
    assert outcome.ok and not outcome.changed
    assert cdp.requests[-1].get("If-None-Match")  # conditional GET, answered 304


async def test_a_changed_crl_is_picked_up_on_the_refresh_schedule(customer, cdp, checker):
    cdp.body = crl_with(customer, {}, number=80)
    c = checker(opts={"refresh_interval": 0.3, "retry_interval": 0.3})
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    await c.start()
    deadline = time.monotonic() + 5
    while c.check(customer.leaves[REVOKED]).status is not CheckStatus.GOOD and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert c.check(customer.leaves[REVOKED]).status is CheckStatus.GOOD
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=81)
    while c.check(customer.leaves[REVOKED]).status is not CheckStatus.REVOKED and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert c.check(customer.leaves[REVOKED]).status is CheckStatus.REVOKED


async def test_on_update_hands_out_the_last_good_copy(customer, cdp, checker):
    saved: list[tuple] = []
    url = f"http://127.0.0.1:{customer.port}/customer.crl"
    c = checker(on_update=lambda ca, u, der: saved.append((ca, u, der)))
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[url])
    cdp.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=90)
    assert (await c.refresh())[0].ok
    assert saved == [("customer", url, cdp.body)]
    # a restarted checker seeds itself from the saved copy, and still refuses a rollback below it
    again = checker()
    again.add_ca(customer.cert_pem, name="customer", crl_urls=[url])
    assert (await again.install("customer", url, saved[0][2])).ok
    assert again.check(customer.leaves[REVOKED]).status is CheckStatus.REVOKED
    cdp.body = crl_with(customer, {}, number=89)
    assert (await again.refresh())[0].failure is FailureKind.ROLLBACK


async def test_an_intermediate_is_checked_against_its_root_crl(checker):
    from datetime import datetime, timezone

    from crl.build import Issuer, build_crl
    from crl.signing import CrlSigner
    from tests.crl.pki import key

    root = make_ca("Customer Root", kind="ec", slot=4)
    url = "http://127.0.0.1/root.crl"

    def intermediate(serial: int) -> x509.Certificate:
        k = key("ec", 5)
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"Issuing CA {serial}")])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(root.cert.subject)
                .public_key(k.public_key()).serial_number(serial).not_valid_before(NOW - timedelta(days=1))
                .not_valid_after(NOW + timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                    [x509.UniformResourceIdentifier(url)], None, None, None)]), critical=False)
                .sign(root.key, hashes.SHA256()))

    c = checker()
    c.add_ca(root.pem, name="root", require_cdp=False)  # a self-signed trust anchor carries no CDP
    der = build_crl(issuer=Issuer.from_certificate(root.cert), signer=CrlSigner.for_private_key(root.key), number=3,
                    this_update=NOW, next_update=NOW + timedelta(days=30),
                    entries=[(0x51, datetime.now(timezone.utc), 2, None)])  # cACompromise
    assert (await c.install("root", url, der)).ok
    r = c.check(intermediate(0x51))
    assert (r.status, r.revocation_reason, r.ca) == (CheckStatus.REVOKED, 2, "root")
    assert c.check(intermediate(0x52)).status is CheckStatus.GOOD


async def test_garbage_is_answered_not_raised(checker):
    r = checker(opts={"policy": Policy.FAIL_OPEN}).check(b"\x30\x03\x02\x01\x00")
    assert (r.status, r.allowed, r.reason) == (CheckStatus.UNKNOWN, False, "bad_certificate")


async def test_remove_from_crl_entries_count_as_not_revoked(checker):
    ca = make_ca("Odd CA", kind="ec", slot=8, cdp="http://127.0.0.1/parent.crl")
    entries = [x509.RevokedCertificateBuilder().serial_number(s).revocation_date(NOW)
               .add_extension(x509.CRLReason(flag), critical=False).build()
               for s, flag in ((0x61, x509.ReasonFlags.remove_from_crl), (0x62, x509.ReasonFlags.superseded))]
    der = (x509.CertificateRevocationListBuilder(ca.cert.subject, NOW, NOW + timedelta(days=1), [], entries)
           .sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    c = checker()
    c.add_ca(ca.pem, name="odd")
    assert (await c.install("odd", "http://127.0.0.1/odd.crl", der)).ok
    r = c.check_serial("odd", 0x61)
    assert (r.status, r.allowed, r.reason) == (CheckStatus.GOOD, True, "removed_from_crl")
    r = c.check_serial("odd", 0x62)
    assert (r.status, r.revocation_reason) == (CheckStatus.REVOKED, 4)
    assert c.check_serial("odd", 0x63).status is CheckStatus.GOOD
    assert c.check_serial("nobody", 0x63).reason == "unknown_issuer"


# ---- outbound fetches cannot be aimed inward


class CountingServer(CrlServer):
    """A CDP that also answers with a redirect when `location` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.location: "str | None" = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.location is not None:
            self.requests.append(dict(request.headers))
            raise web.HTTPFound(self.location)
        return await super().handle(request)


@pytest.fixture
async def cdp_peer(aiohttp_server, customer):
    server = CountingServer()
    app = web.Application()
    app.router.add_get("/customer.crl", server.handle)
    await aiohttp_server(app, host="127.0.0.1", port=customer.port)
    return server


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/customer.crl", "http://localhost:{port}/customer.crl", "http://[::1]:{port}/customer.crl",
    "http://[::ffff:127.0.0.1]:{port}/customer.crl", "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/ca.crl", "http://192.168.0.1/ca.crl", "http://172.16.5.5/ca.crl", "http://100.64.0.1/ca.crl",
    "http://224.0.0.1/ca.crl", "http://0.0.0.0:{port}/customer.crl", "http://[fe80::1]/ca.crl",
    "http://[fd00::1]/ca.crl"])
async def test_non_public_destinations_are_refused_by_default(customer, cdp_peer, checker, url):
    """Without `allow_networks` a CDP on loopback, link-local (cloud metadata), private, shared or multicast
    addresses is never connected to; the refusal is decided before any connection is made."""
    cdp_peer.body = crl_with(customer, {}, number=1)
    log = RecordingLogger()
    c = checker(settings=CheckerSettings(), logger=log)
    url = url.format(port=customer.port)
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[url])
    [outcome] = await c.refresh()
    assert (outcome.ok, outcome.failure) == (False, FailureKind.FORBIDDEN_DESTINATION), outcome
    assert cdp_peer.requests == []
    assert "crl.check.forbidden_destination" in log.events("warning")
    assert c.check(customer.leaves[GOOD]).status is CheckStatus.UNKNOWN


@pytest.mark.parametrize("address,refused,refused_beside_10_8", [
    ("2002:7f00:1::1", True, True),  # 6to4 of 127.0.0.1
    ("2002:a00:1::", True, False),  # 6to4 of 10.0.0.1
    ("2002:a9fe:a9fe::1", True, True),  # 6to4 of 169.254.169.254, the cloud metadata address
    ("64:ff9b::a00:1", True, False),  # NAT64 of 10.0.0.1
    ("64:ff9b::7f00:1", True, True),  # NAT64 of 127.0.0.1
    ("::ffff:10.0.0.1", True, False),
    ("2002:808:808::1", False, False),  # 6to4 of a public address
    ("64:ff9b::808:808", False, False),  # DNS64's name of a public IPv4-only CRL server
    ("2001:4860:4860::8888", False, False),
])
def test_an_ipv6_address_that_leads_to_an_ipv4_host_is_judged_as_that_host(address, refused, refused_beside_10_8):
    """6to4 and NAT64 addresses are delivered to the IPv4 address they carry: a CDP naming 2002:7f00:1:: reached
    loopback through a 6to4 route, and an IPv6-only network's DNS64 name of a public CRL server was refused. An
    allowed IPv4 network allows the IPv6 addresses that lead to it."""
    assert destination_refused(address) is refused
    assert destination_refused(address, (ipaddress.IPv4Network("10.0.0.0/8"),)) is refused_beside_10_8


async def test_allowed_network_is_fetched_and_others_stay_refused(customer, cdp_peer, checker):
    cdp_peer.body = crl_with(customer, {REVOKED: "keyCompromise"}, number=1)
    c = checker(settings=CheckerSettings(allow_networks=("127.0.0.0/30",)))
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl",
                                                           "http://10.0.0.1/ca.crl"])
    outcomes = {o.url: o for o in await c.refresh()}
    assert outcomes[f"http://127.0.0.1:{customer.port}/customer.crl"].ok
    assert outcomes["http://10.0.0.1/ca.crl"].failure is FailureKind.FORBIDDEN_DESTINATION
    with pytest.raises(ValueError):
        CheckerSettings(allow_networks=("not-a-network",))


class FixedResolver:
    """Resolves every name to the given address (as a rebinding name server would answer)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.lookups: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.lookups.append(host)
        return [{"hostname": host, "host": self.address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("allowed,ok", [((), False), (("127.0.0.1/32",), True)])
async def test_a_name_is_judged_by_the_address_it_resolves_to(customer, cdp_peer, checker, allowed, ok):
    """A public-looking name that resolves to loopback is refused at connect time (DNS rebinding)."""
    cdp_peer.body = crl_with(customer, {}, number=1)
    resolver = FixedResolver("127.0.0.1")
    c = checker(settings=CheckerSettings(allow_networks=allowed), resolver=resolver)
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://crl.customer.example:{customer.port}/customer.crl"])
    [outcome] = await c.refresh()
    assert resolver.lookups == ["crl.customer.example"]
    assert outcome.ok is ok, outcome
    if not ok:
        assert outcome.failure is FailureKind.FORBIDDEN_DESTINATION
        assert cdp_peer.requests == []


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/customer.crl", "http://169.254.169.254/latest/",
                                    "http://[::1]:{port}/customer.crl", "http://10.9.8.7/x.crl"])
async def test_a_redirect_to_a_refused_address_is_refused(customer, cdp_peer, checker, target):
    c = checker()  # 127.0.0.1/32 allowed: the first hop is reached, the redirect target is not
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    cdp_peer.location = target.format(port=customer.port)
    [outcome] = await c.refresh()
    assert len(cdp_peer.requests) == 1
    assert (outcome.ok, outcome.failure) == (False, FailureKind.FORBIDDEN_DESTINATION), outcome


async def test_the_default_size_cap_is_sized_to_real_crls(customer, cdp, checker):
    """A CRL of more than 10 MiB is not downloaded by default (and the cap is a setting)."""
    assert CheckerSettings().max_bytes == 10 * 1024 * 1024
    good = crl_with(customer, {}, number=1)
    cdp.body = good + b"\x00" * (10 * 1024 * 1024)
    c = checker(opts={})
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    [outcome] = await c.refresh()
    assert outcome.failure is FailureKind.TOO_LARGE, outcome


@pytest.mark.parametrize("error", [IndexError("index out of range"), RecursionError("deep"), KeyError(3),
                                   TypeError("unexpected")])
async def test_any_parser_fault_is_a_malformed_crl_never_an_exception(customer, cdp, checker, monkeypatch, error):
    import crl.check as check_module

    def broken(data):
        raise error

    cdp.body = crl_with(customer, {}, number=1)
    log = RecordingLogger()
    c = checker(logger=log)
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/customer.crl"])
    monkeypatch.setattr(check_module, "parse_crl", broken)
    [outcome] = await c.refresh()
    assert (outcome.ok, outcome.failure) == (False, FailureKind.MALFORMED), outcome
    assert "crl.check.malformed" in log.events("warning")
    installed = await c.install("customer", f"http://127.0.0.1:{customer.port}/customer.crl", cdp.body)
    assert installed.failure is FailureKind.MALFORMED
    # the background loop's fetches end the same way: no task dies with an exception
    c.add_ca(customer.cert_pem, name="customer", crl_urls=[f"http://127.0.0.1:{customer.port}/other.crl"])
    assert [o.failure for o in await c.refresh("customer", f"http://127.0.0.1:{customer.port}/other.crl")] == \
        [FailureKind.HTTP_ERROR]
    assert [o.failure for o in await c.refresh("customer", "ftp://127.0.0.1/x.crl")] == [FailureKind.UNSUPPORTED]


async def test_at_most_max_urls_per_ca_are_watched(customer, cdp, checker):
    log = RecordingLogger()
    c = checker(logger=log)
    c.add_ca(customer.cert_pem, name="customer")
    urls = [f"http://10.0.0.1/{i}.crl" for i in range(40)]
    r = c.check_serial("customer", GOOD, urls=urls)
    assert r.status is CheckStatus.UNKNOWN
    assert len(c.status()) == CheckerSettings().max_urls_per_ca == 16
    assert [o.failure for o in await c.refresh("customer", "http://10.0.0.2/x.crl")] == [FailureKind.TOO_MANY_URLS]
    assert log.events("warning").count("crl.check.too_many_urls") == 1
    small = checker(opts={"max_urls_per_ca": 2})
    small.add_ca(customer.cert_pem, name="customer", crl_urls=urls[:5])
    assert len(small.status()) == 2


# ---- partitioned CRLs: an IDP-scoped CRL answers only for the certificates whose CDP names it (§5.2.5)

PART0, PART1 = "http://127.0.0.1/crl/cust/0.crl", "http://127.0.0.1/crl/cust/1.crl"


def scoped(ca, entries, number: int, scope=None) -> bytes:
    from crl.build import Issuer, build_crl
    from crl.signing import CrlSigner

    return build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=number,
                     this_update=NOW, next_update=NOW + timedelta(days=7),
                     entries=[(s, NOW - timedelta(hours=1), 1, None) for s in entries], scope=scope)


def partitioned_customer(checker):
    ca = make_ca("Partitioned Customer CA", kind="ec", slot=4, cdp="http://127.0.0.1/crl/cust.crl")
    c = checker(clock=SettableClock(NOW + timedelta(minutes=1)))
    c.add_ca(ca.pem, name="cust")
    return ca, c


async def test_a_partition_crl_is_no_proof_for_another_partition(checker):
    from crl.build import Scope
    from tests.crl.pki import issue

    ca, c = partitioned_customer(checker)
    in0, in1 = issue(ca, 0x70, cdp=PART0), issue(ca, 0x71, cdp=PART1)
    # partition 0's CRL: lists 0x70, and says nothing about partition 1 even though 0x71 is not on it
    assert (await c.install("cust", PART0, scoped(ca, [0x70], 1, Scope((PART0,), only_user_certs=True)))).ok
    assert c.check(in0).status is CheckStatus.REVOKED
    r = c.check(in1)
    assert (r.status, r.allowed, r.reason) == (CheckStatus.UNKNOWN, False, "no_crl")
    # a serial asked without its CDP is never answered from a partition's CRL
    assert c.check_serial("cust", 0x71).status is CheckStatus.UNKNOWN
    assert c.check_serial("cust", 0x70).status is CheckStatus.UNKNOWN
    assert c.check_serial("cust", 0x70, urls=[PART0]).status is CheckStatus.REVOKED
    # partition 1's own CRL answers for it
    assert (await c.install("cust", PART1, scoped(ca, [0x73], 1, Scope((PART1,), only_user_certs=True)))).ok
    assert c.check(in1).status is CheckStatus.GOOD
    assert c.check(issue(ca, 0x73, cdp=PART1)).status is CheckStatus.REVOKED
    # a partition CRL served at another partition's URL is refused, the last good copy kept
    outcome = await c.install("cust", PART1, scoped(ca, [], 2, Scope((PART0,), only_user_certs=True)))
    assert outcome.failure is FailureKind.SCOPE_MISMATCH
    assert c.check(issue(ca, 0x73, cdp=PART1)).status is CheckStatus.REVOKED


async def test_only_contains_user_or_ca_certs_is_respected(checker):
    from crl.build import Scope
    from tests.crl.pki import issue

    ca, c = partitioned_customer(checker)
    user, sub_ca = issue(ca, 0x80, cdp=PART0), issue(ca, 0x81, cdp=PART0, is_ca=True)
    assert (await c.install("cust", PART0, scoped(ca, [0x80, 0x81], 1, Scope((PART0,), only_user_certs=True)))).ok
    assert c.check(user).status is CheckStatus.REVOKED
    assert c.check(sub_ca).reason == "no_crl"  # a user-certificates CRL says nothing about a CA certificate
    _, c = partitioned_customer(checker)  # (a URL's CRL cannot turn into one of fewer kinds: test_check_scope_swap)
    assert (await c.install("cust", PART0, scoped(ca, [0x80, 0x81], 2, Scope((PART0,), only_ca_certs=True)))).ok
    assert c.check(sub_ca).status is CheckStatus.REVOKED
    assert c.check(user).reason == "no_crl"


async def test_an_idp_naming_its_point_without_a_uri_covers_no_certificate_by_url(checker):
    """An IDP whose distribution point is a relative name is a partition we cannot match by URL: the CRL is not
    taken as the answer for a certificate whose CDP names the URL it was fetched from."""
    from tests.crl.pki import issue

    ca, c = partitioned_customer(checker)
    idp = x509.IssuingDistributionPoint(
        full_name=None, relative_name=x509.RelativeDistinguishedName(
            [x509.NameAttribute(x509.NameOID.COMMON_NAME, "partition 1")]),
        only_contains_user_certs=True, only_contains_ca_certs=False, only_some_reasons=None, indirect_crl=False,
        only_contains_attribute_certs=False)
    der = (x509.CertificateRevocationListBuilder(
        ca.cert.subject, NOW, NOW + timedelta(days=1),
        [x509.Extension(ExtensionOID.CRL_NUMBER, False, x509.CRLNumber(1)),
         x509.Extension(ExtensionOID.ISSUING_DISTRIBUTION_POINT, True, idp)], [])
        .sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    outcome = await c.install("cust", PART0, der)
    assert outcome.failure is FailureKind.SCOPE_MISMATCH and "without a URI" in outcome.detail
    assert c.check(issue(ca, 0x90, cdp=PART0)).reason == "no_crl"


async def test_of_two_mirrors_the_newer_crl_answers_whichever_the_cdp_names_first():
    """A certificate names two CDP mirrors. The checker holds CRL #5 from the second, which lists the certificate;
    the first serves CRL #3 of the same CA (validly signed, not yet expired, from before the revocation)."""
    from crl.build import Issuer, build_crl
    from crl.signing import CrlSigner
    from tests.crl.pki import key

    first, second = "http://127.0.0.1:9/mirror-a/ca.crl", "http://127.0.0.1:9/mirror-b/ca.crl"
    ca = make_ca("Mirrored Customer CA", kind="ec", slot=8, cdp="http://127.0.0.1:9/root.crl")

    def crl(entries, number, this_update):
        return build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key),
                         number=number, this_update=this_update, next_update=this_update + timedelta(days=7),
                         entries=[(s, this_update - timedelta(minutes=1), 1, None) for s in entries])

    cdp = x509.CRLDistributionPoints([x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(first), x509.UniformResourceIdentifier(second)],
        relative_name=None, reasons=None, crl_issuer=None)])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "d")]))
            .issuer_name(ca.cert.subject).public_key(key("ec", 9).public_key()).serial_number(0x3131)
            .not_valid_before(NOW - timedelta(hours=1)).not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .add_extension(cdp, critical=False).sign(ca.key, hashes.SHA256()))
    c = CrlChecker(settings=CheckerSettings(allow_networks=("127.0.0.1/32",)),
                   clock=SettableClock(NOW + timedelta(hours=2)))
    c.add_ca(ca.pem, name="cust")
    try:
        assert (await c.install("cust", second, crl([0x3131], 5, NOW + timedelta(hours=1)))).ok
        assert (await c.install("cust", first, crl([], 3, NOW))).ok
        for answer in (c.check(cert), c.check_serial("cust", 0x3131, urls=[first, second])):
            assert (answer.status, answer.crl_number) == (CheckStatus.REVOKED, 5), answer
    finally:
        await c.stop()
