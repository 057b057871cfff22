"""Delegated challenges against real HTTP peers: Intune (token, Graph discovery, ScepActions) and a webhook."""
from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from scep_server.scep import FailInfo, PKIStatus
from scep_server.store.tables import certificates, scep_transactions
from tests.challenge.conftest import add_profile, build, enrol, pki
from tests.challenge.peers import (CLIENT_ID, CLIENT_SECRET, INTUNE_SCOPE, TENANT, WEBHOOK_SECRET, FakeIntune,
                                   WebhookReceiver)
from tests.factories import rsa_key

# the validators talk HTTP; the database is not what these tests are about
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

REJECTION_CODES = [
    "CertificateRequestDecodingFailed", "ChallengePasswordMissing", "ChallengeDeserializationError",
    "ChallengeDecryptionError", "ChallengeDecodingError", "ChallengeInvalidTimestamp", "ChallengeExpired",
    "SubjectNameMissing", "SubjectNameMismatch", "SubjectAltNameMissing", "SubjectAltNameMismatch",
    "KeyUsageMismatch", "KeyLengthMismatch", "EnhancedKeyUsageMissing", "EnhancedKeyUsageMismatch",
    "AadKeyIdentifierListMissing", "RegisteredKeyMismatch", "SigningCertThumbprintMismatch",
    "ScepProfileNoLongerTargetedToTheClient", "SignatureValidationFailed", "BadCertificateRequestIdInChallenge",
    "BadDeviceIdInChallenge", "BadUserIdInChallenge",
]


def intune_settings(fake: FakeIntune, secret_file, **extra) -> dict:
    return {"provider": "intune", "intune": {
        "tenant": TENANT, "client_id": CLIENT_ID, "client_secret": {"file": str(secret_file)},
        "authority_url": fake.url, "graph_url": fake.url, "timeout_seconds": 2, "retries": 1, **extra}}


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "intune-secret"
    path.write_text(CLIENT_SECRET + "\n")
    return path


async def issued_count(srv, profile: str) -> int:
    async with srv.runtime.engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(certificates).where(
            certificates.c.profile == profile))).scalar_one()


async def test_intune_success_and_caching(server, secret_file):
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file))
        key = rsa_key()
        body = build(server, key, challenge="intune-encrypted-challenge", cn="win-1")
        rep = await pki(s, server, "intune", body, key)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        cert = x509.load_der_x509_certificate(rep.certs[0])
        assert fake.actions() == ["validateRequest", "successNotification"]
        validate = fake.calls[0][1]["request"]
        assert validate["transactionId"] == rep.transaction_id
        csr = x509.load_der_x509_csr(base64.b64decode(validate["certificateRequest"]))
        assert csr.public_key().public_numbers() == key.public_key().public_numbers()
        note = fake.calls[1][1]["notification"]
        assert note["transactionId"] == rep.transaction_id
        assert note["certificateSerialNumber"] == f"{cert.serial_number:x}"
        assert note["certificateThumbprint"] == cert.fingerprint(hashes.SHA1()).hex().upper()
        assert note["certificateExpirationDateUtc"].startswith(cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%S"))
        assert sorted(fake.token_requests) == sorted([fake.graph_scope, INTUNE_SCOPE])
        assert fake.discovery_requests == 1
        # a second device: token and discovered URL come from the cache
        rep = await enrol(s, server, "intune", rsa_key(), "second-challenge", cn="win-2")
        assert rep.status is PKIStatus.SUCCESS
        assert len(fake.token_requests) == 2 and fake.discovery_requests == 1
        # a retry of the first transaction returns the same certificate without asking Intune again
        rep = await pki(s, server, "intune", body, key)
        assert rep.status is PKIStatus.SUCCESS and rep.certs[0] == cert.public_bytes(serialization.Encoding.DER)
        assert fake.actions().count("validateRequest") == 2


async def test_intune_every_rejection_code(server, secret_file):
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file))
        key = rsa_key()
        for code in REJECTION_CODES:
            fake.codes["validateRequest"] = code
            rep = await enrol(s, server, "intune", key, "c", cn="dev", transaction_id=f"tx-{code}")
            assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
            assert code in rep.fail_text and "Intune rejected" in rep.fail_text
        # never issued, never notified (no failure notification for errors returned by Intune's own calls)
        assert await issued_count(server, "intune") == 0
        assert set(fake.actions()) == {"validateRequest"}


async def test_intune_missing_challenge_is_not_sent(server, secret_file):
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file))
        rep = await enrol(s, server, "intune", rsa_key(), None)
        assert rep.status is PKIStatus.FAILURE and "ChallengePasswordMissing" in rep.fail_text
        assert fake.calls == []


async def test_intune_timeout_is_bounded(server, secret_file):
    async with FakeIntune(delays={"validateRequest": 1}) as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated",
                          intune_settings(fake, secret_file, timeout_seconds=0.3, retries=1))
        loop = asyncio.get_running_loop()
        started = loop.time()
        rep = await enrol(s, server, "intune", rsa_key(), "c")
        assert loop.time() - started < 3
        assert rep.status is PKIStatus.FAILURE and "timed out" in rep.fail_text
        assert fake.actions() == ["validateRequest", "validateRequest"]
        assert await issued_count(server, "intune") == 0


async def test_intune_unavailable_then_recovers(server, secret_file):
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file, retries=2))
        fake.codes["validateRequest"] = "HTTP503"
        rep = await enrol(s, server, "intune", rsa_key(), "c")
        assert rep.status is PKIStatus.FAILURE and "HTTP 503" in rep.fail_text
        assert fake.actions() == ["validateRequest"] * 3
        fake.codes["validateRequest"] = "Success"
        rep = await enrol(s, server, "intune", rsa_key(), "c")
        assert rep.status is PKIStatus.SUCCESS


@pytest.mark.parametrize("failure", ["InternalError", "HTTP500"])
async def test_intune_failing_success_notification_withdraws(server, secret_file, failure):
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file, retries=0))
        fake.codes["successNotification"] = failure
        key = rsa_key()
        body = build(server, key, challenge="c", cn="win-9")
        rep = await pki(s, server, "intune", body, key)
        assert rep.status is PKIStatus.FAILURE and rep.certs == []
        assert "success notification" in rep.fail_text
        async with server.runtime.engine.connect() as conn:
            rows = (await conn.execute(sa.select(certificates).where(certificates.c.profile == "intune"))).all()
            tx = (await conn.execute(sa.select(scep_transactions))).all()
        assert len(rows) == 1 and rows[0].status == "revoked"
        assert [t.state for t in tx if t.profile == "intune"] == ["rejected"]
        # the device retrying the transaction does not get the withdrawn certificate
        rep = await pki(s, server, "intune", body, key)
        assert rep.status is PKIStatus.FAILURE and rep.certs == []
        assert "failureNotification" not in fake.actions()


async def test_intune_is_not_asked_about_a_csr_that_fails_policy(server, secret_file):
    # the profile's own checks run first: a CSR it refuses never reaches Intune (no validation, no notification)
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file),
                          template={"san_types": ["dns"]})
        rep = await enrol(s, server, "intune", rsa_key(), "c", sans=[x509.RFC822Name("user@example.com")])
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "not allowed" in rep.fail_text
        assert fake.actions() == []
        assert await issued_count(server, "intune") == 0


async def test_intune_token_expiry_and_refresh(server, secret_file):
    async with FakeIntune(token_lifetime=1) as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file))
        assert (await enrol(s, server, "intune", rsa_key(), "c")).status is PKIStatus.SUCCESS
        assert len(fake.token_requests) == 2
        await asyncio.sleep(1.2)  # both tokens expired: the client asks for a new Intune token before calling
        assert (await enrol(s, server, "intune", rsa_key(), "c")).status is PKIStatus.SUCCESS
        assert fake.token_requests.count(INTUNE_SCOPE) == 2
        assert fake.discovery_requests == 1
    # a token the service stops accepting early (401) is dropped and fetched again
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune2", "delegated", intune_settings(fake, secret_file))
        assert (await enrol(s, server, "intune2", rsa_key(), "c")).status is PKIStatus.SUCCESS
        fake.revoke_tokens()
        assert (await enrol(s, server, "intune2", rsa_key(), "c")).status is PKIStatus.SUCCESS
        assert fake.token_requests.count(INTUNE_SCOPE) == 2


async def test_intune_bad_client_secret(server, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret")
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, wrong))
        rep = await enrol(s, server, "intune", rsa_key(), "c")
        assert rep.status is PKIStatus.FAILURE and "invalid_client" in rep.fail_text
        assert fake.calls == []


def webhook_settings(hook: WebhookReceiver, secret_file, **extra) -> dict:
    return {"provider": "webhook", "webhook": {"url": f"{hook.url}/hook", "secret": {"file": str(secret_file)},
                                               "timeout_seconds": 1, "retries": 0,
                                               "allow_http_loopback": True, **extra}}  # a loopback test receiver


@pytest.fixture
def hook_secret(tmp_path):
    path = tmp_path / "hook-secret"
    path.write_text(WEBHOOK_SECRET)
    return path


async def test_webhook_allow_deny_and_notifications(server, hook_secret):
    async with WebhookReceiver(allowed={"letmein"}) as hook, aiohttp.ClientSession() as s:
        await add_profile(server, "hooked", "delegated", webhook_settings(hook, hook_secret),
                          template={"san_types": ["dns"]})
        rep = await enrol(s, server, "hooked", rsa_key(), "letmein", cn="sensor-1", sans=["sensor-1.example"])
        assert rep.status is PKIStatus.SUCCESS
        assert hook.types() == ["scep.challenge", "scep.success"]
        req = hook.received[0]
        assert req["profile"] == "hooked" and req["transactionId"] == rep.transaction_id
        assert req["challenge"] == "letmein"
        assert req["x509CertificateRequest"]["commonName"] == "sensor-1"
        assert req["x509CertificateRequest"]["sans"] == ["dns:sensor-1.example"]
        assert req["x509CertificateRequest"]["publicKeyAlgorithm"] == "RSA"
        cert = x509.load_der_x509_certificate(rep.certs[0])
        assert hook.received[1]["certificate"]["serialNumber"] == f"{cert.serial_number:x}"

        rep = await enrol(s, server, "hooked", rsa_key(), "guess", cn="intruder")
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "denied" in rep.fail_text and "device intruder is unknown" in rep.fail_text
        assert hook.bad_signatures == 0


async def test_webhook_bad_secret_timeout_and_required_ack(server, hook_secret, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("other")
    async with WebhookReceiver(allowed={"ok"}) as hook, aiohttp.ClientSession() as s:
        await add_profile(server, "wrongsig", "delegated", webhook_settings(hook, wrong))
        rep = await enrol(s, server, "wrongsig", rsa_key(), "ok")
        assert rep.status is PKIStatus.FAILURE and "HTTP 401" in rep.fail_text and hook.bad_signatures == 1

        hook.delay = 1
        await add_profile(server, "slow", "delegated", webhook_settings(hook, hook_secret, timeout_seconds=0.3))
        rep = await enrol(s, server, "slow", rsa_key(), "ok")
        assert rep.status is PKIStatus.FAILURE and "timed out" in rep.fail_text

        hook.delay, hook.notify_status = 0, 500
        await add_profile(server, "acked", "delegated", webhook_settings(hook, hook_secret, require_success_ack=True))
        rep = await enrol(s, server, "acked", rsa_key(), "ok")
        assert rep.status is PKIStatus.FAILURE and rep.certs == []
        async with server.runtime.engine.connect() as conn:
            rows = (await conn.execute(sa.select(certificates).where(certificates.c.profile == "acked"))).all()
        assert [r.status for r in rows] == ["revoked"]

        await add_profile(server, "besteffort", "delegated", webhook_settings(hook, hook_secret))
        rep = await enrol(s, server, "besteffort", rsa_key(), "ok")
        assert rep.status is PKIStatus.SUCCESS


async def test_misconfigured_delegated_profile(server):
    async with aiohttp.ClientSession() as s:
        await add_profile(server, "empty", "delegated", {})
        rep = await enrol(s, server, "empty", rsa_key(), "x")
        assert rep.status is PKIStatus.FAILURE and "not configured" in rep.fail_text
