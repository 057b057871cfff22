"""RFC 8894 over HTTP against the full application: every operation, cipher and digest, retries, failures."""
from __future__ import annotations

import base64
import os
import random
from urllib.parse import quote

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from scep_server.ca import inventory
from scep_server.scep import ContentCipher, Digest, FailInfo, MessageType, PKIStatus, client
from tests.factories import rsa_key

from .conftest import pkcs_req, ra_and_ca, renew_any_time

KEY = rsa_key()
KEY2 = rsa_key()


@pytest.fixture
async def scep(server):
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/scep/default"
        ra_der, ca_der = await ra_and_ca(session, url)
        yield Scep(server, session, url, ra_der, ca_der)


class Scep:
    def __init__(self, server, session, url, ra_der, ca_der):
        self.server, self.session, self.url, self.ra_der, self.ca_der = server, session, url, ra_der, ca_der

    async def post(self, body: bytes, key=KEY) -> client.CertRepResult:
        async with self.session.post(f"{self.url}?operation=PKIOperation", data=body) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "application/x-pki-message"
            return client.parse_cert_rep(await resp.read(), key, ra_cert_der=self.ra_der)

    async def raw(self, method: str, query: str, body: bytes | None = None) -> tuple[int, str]:
        async with self.session.request(method, f"{self.url}?{query}", data=body) as resp:
            return resp.status, await resp.text(errors="replace")

    def request(self, key=KEY, **kw) -> bytes:
        kw.setdefault("challenge", self.server.challenge())
        return pkcs_req(key, self.ra_der, **kw)


# every cipher and every digest through the full server (the codec tests cover the whole product)
@pytest.mark.parametrize("cipher,digest", [
    (ContentCipher.AES128_CBC, Digest.SHA256), (ContentCipher.AES192_CBC, Digest.SHA512),
    (ContentCipher.AES256_CBC, Digest.SHA1), (ContentCipher.DES3_CBC, Digest.SHA256),
    (ContentCipher.DES_CBC, Digest.SHA1)], ids=lambda v: v.name)
async def test_every_cipher_and_digest_enrols_and_the_reply_mirrors_them(scep, cipher, digest):
    key = rsa_key()
    rep = await scep.post(scep.request(key, cn=f"{cipher.name}-{digest.name}", cipher=cipher, digest=digest), key)
    assert rep.status == PKIStatus.SUCCESS, rep.fail_text
    assert rep.digest is digest
    assert rep.cipher is (ContentCipher.AES128_CBC if cipher is ContentCipher.DES_CBC else cipher)
    leaf = x509.load_der_x509_certificate(rep.certs[0])
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    assert rep.certs[1] == scep.ca_der


@pytest.mark.parametrize("ra_mode", ["single", "split"])
async def test_get_transport_with_escaped_base64(scep):
    body = scep.request(cn="over-get")
    message = quote(base64.b64encode(body).decode(), safe="")
    async with scep.session.get(f"{scep.url}?operation=PKIOperation&message={message}") as resp:
        assert resp.status == 200
        rep = client.parse_cert_rep(await resp.read(), KEY, ra_cert_der=scep.ra_der)
    assert rep.status == PKIStatus.SUCCESS


async def test_a_retry_returns_the_same_certificate_and_a_reused_transaction_id_with_another_key_fails(scep):
    key = rsa_key()
    txid = client.transaction_id_for(key.public_key())
    body = scep.request(key, cn="retry", transaction_id=txid)
    first = await scep.post(body, key)
    again = await scep.post(scep.request(key, cn="retry", transaction_id=txid), key)
    assert first.status == again.status == PKIStatus.SUCCESS
    assert first.certs[0] == again.certs[0]
    hijack = await scep.post(scep.request(KEY2, cn="retry", transaction_id=txid), KEY2)
    assert hijack.status == PKIStatus.FAILURE and hijack.fail_info == FailInfo.BAD_REQUEST
    assert "different key" in hijack.fail_text


async def test_wrong_or_missing_challenge_is_a_signed_failure(scep):
    rep = await scep.post(scep.request(KEY2, challenge="not-it"), KEY2)
    assert (rep.status, rep.fail_info, rep.fail_text) == (PKIStatus.FAILURE, FailInfo.BAD_REQUEST,
                                                          "invalid challenge password")
    assert rep.signer_cert_der == scep.ra_der
    rep = await scep.post(scep.request(KEY2, challenge=None), KEY2)
    assert rep.fail_info == FailInfo.BAD_REQUEST and "no challengePassword" in rep.fail_text


async def test_policy_violations_are_bad_request_with_the_reason(scep):
    weak = rsa_key(1024)
    rep = await scep.post(scep.request(weak, cn="weak"), weak)
    assert rep.status == PKIStatus.FAILURE and rep.fail_info == FailInfo.BAD_REQUEST
    assert "2048" in rep.fail_text


async def test_windows_signer_with_critical_aki_enrols(scep):
    key = rsa_key()
    signer = client.make_self_signed_signer(key, critical_aki=True)
    rep = await scep.post(scep.request(key, cn="windows", signer_der=signer), key)
    assert rep.status == PKIStatus.SUCCESS, rep.fail_text


async def test_get_cert_and_renewal_rules(scep):
    key = rsa_key()
    rep = await scep.post(scep.request(key, cn="laptop"), key)
    leaf = x509.load_der_x509_certificate(rep.certs[0])
    ca = scep.server.runtime.cas["default"]

    got = await scep.post(scep.request(key, message_type=MessageType.GET_CERT, signer_der=rep.certs[0],
                                       content=client.issuer_and_serial(ca.cert.subject, leaf.serial_number),
                                       transaction_id="getcert-1"), key)
    assert got.status == PKIStatus.SUCCESS and got.certs == [rep.certs[0]]
    missing = await scep.post(scep.request(key, message_type=MessageType.GET_CERT,
                                           content=client.issuer_and_serial(ca.cert.subject, 12345),
                                           transaction_id="getcert-2"), key)
    assert missing.fail_info == FailInfo.BAD_CERT_ID

    # RenewalReq signed by the issued certificate, new key, no challenge
    await renew_any_time(scep.server)
    new_key = rsa_key()
    renewal = client.build_request(MessageType.RENEWAL_REQ, content=client.make_csr(new_key, "laptop"),
                                   signer_cert_der=rep.certs[0], signer_key=key, recipient_cert_der=scep.ra_der,
                                   transaction_id="renew-1", sender_nonce=os.urandom(16), cek=os.urandom(16),
                                   iv=os.urandom(16))
    renewed = await scep.post(renewal, key)
    assert renewed.status == PKIStatus.SUCCESS, renewed.fail_text
    assert x509.load_der_x509_certificate(renewed.certs[0]).serial_number != leaf.serial_number

    # the superseded certificate can no longer renew
    again = client.build_request(MessageType.RENEWAL_REQ, content=client.make_csr(rsa_key(), "laptop"),
                                 signer_cert_der=rep.certs[0], signer_key=key, recipient_cert_der=scep.ra_der,
                                 transaction_id="renew-2", sender_nonce=os.urandom(16), cek=os.urandom(16),
                                 iv=os.urandom(16))
    refused = await scep.post(again, key)
    assert refused.status == PKIStatus.FAILURE and "revoked" in refused.fail_text

    # a RenewalReq signed by a stranger's self-signed certificate without a challenge is refused
    stranger = rsa_key()
    odd = scep.request(stranger, challenge=None, message_type=MessageType.RENEWAL_REQ, transaction_id="renew-3")
    rep = await scep.post(odd, stranger)
    assert rep.status == PKIStatus.FAILURE and rep.fail_info == FailInfo.BAD_REQUEST


async def test_unparseable_input_is_http_400_with_a_reason(scep):
    status, text = await scep.raw("POST", "operation=PKIOperation", b"\x30\x03\x02\x01")
    assert status == 400 and "not a signed SCEP message" in text
    status, text = await scep.raw("POST", "operation=PKIOperation", b"")
    assert status == 400 and "empty" in text
    status, text = await scep.raw("GET", "operation=PKIOperation&message=%%%")
    assert status == 400
    status, text = await scep.raw("GET", "operation=PKIOperation")
    assert status == 400 and "message parameter" in text
    status, text = await scep.raw("GET", "operation=Bogus")
    assert status == 400 and "unknown operation" in text
    status, text = await scep.raw("GET", "")
    assert status == 400 and "missing operation" in text


async def test_a_bad_signature_gets_a_signed_bad_message_check(scep):
    body = bytearray(scep.request(KEY2, cn="tampered"))
    body[-5] ^= 0x01  # inside the SignerInfo signature
    rep = await scep.post(bytes(body), KEY2)
    assert rep.status == PKIStatus.FAILURE and rep.fail_info == FailInfo.BAD_MESSAGE_CHECK


async def test_an_envelope_for_another_ra_gets_bad_message_check(scep):
    other_ra = client.make_self_signed_signer(KEY2, cn="Other RA")
    rep = await scep.post(pkcs_req(KEY, other_ra, challenge="x"), KEY)
    assert rep.status == PKIStatus.FAILURE and rep.fail_info == FailInfo.BAD_MESSAGE_CHECK


async def test_oversized_body_is_413(scep):
    limit = scep.server.settings.server.max_body_bytes
    status, _ = await scep.raw("POST", "operation=PKIOperation", b"\x30" * (limit + 1))
    assert status == 413


async def test_random_corruption_never_gives_a_500(scep):
    body = scep.request(KEY2, cn="fuzz")
    rng = random.Random(8894)
    for _ in range(60):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        status, _ = await scep.raw("POST", "operation=PKIOperation", bytes(mutated[:rng.randint(10, len(mutated))]
                                                                           if rng.random() < 0.3 else mutated))
        assert status in (200, 400)


@pytest.mark.parametrize("ra_mode", ["single", "split"])
async def test_ca_operations_and_unknown_profiles(scep):
    status, caps = await scep.raw("GET", "operation=GetCACaps")
    assert status == 200 and "GetNextCACert" not in caps.split()
    status, text = await scep.raw("GET", "operation=GetNextCACert")
    assert status == 404 and "no CA rollover" in text
    async with scep.session.get(f"{scep.server.url}/scep/nope?operation=GetCACaps") as resp:
        assert resp.status == 404 and "nope" in await resp.text()
    for alias in ("/pkiclient.exe", "/cgi-bin/pkiclient.exe", "/"):
        async with scep.session.get(f"{scep.url}{alias}?operation=GetCACaps") as resp:
            assert resp.status == 200 and "SCEPStandard" in await resp.text()
    async with scep.session.get(f"{scep.server.url}/ca/default.crt") as resp:
        assert resp.status == 200 and await resp.read() in (scep.ca_der, x509.load_der_x509_certificate(
            scep.ca_der).public_bytes(serialization.Encoding.PEM))


async def test_one_log_event_per_transaction(scep):
    key = rsa_key()
    with capture_logs() as logs:
        await scep.post(scep.request(key, cn="logged"), key)
        await scep.post(scep.request(KEY2, challenge="wrong"), KEY2)
    events = [e for e in logs if e["event"] == "scep.transaction"]
    assert len(events) == 2
    ok, bad = events
    assert ok["outcome"] == "SUCCESS" and ok["message_type"] == "PKCS_REQ" and ok["profile"] == "default"
    assert ok["serial"] and ok["transaction_id"] == client.transaction_id_for(key.public_key())
    assert isinstance(ok["duration_ms"], float)
    assert bad["outcome"] == "FAILURE" and bad["fail_info"] == "BAD_REQUEST" and bad["serial"] is None
    async with scep.server.runtime.engine.connect() as conn:
        record = await inventory.get(conn, ok["serial"])
    assert record is not None and record.status == "valid"


async def test_get_next_ca_cert_serves_a_configured_rollover(scep, tmp_path):
    from scep_server.ca.authority import load_ca
    from scep_server.ca.keys import load_or_create_passphrase
    from tests.factories import make_ca, pem

    settings = scep.server.settings
    directory = settings.ca_dir()
    successor = make_ca(tmp_path / "next", name="default")
    (directory / "next-ca.crt").write_bytes(pem(successor.cert))
    passphrase = load_or_create_passphrase(settings.ca.passphrase_env, settings.passphrase_path(),
                                           keys_in=settings.ca_dir().parent)
    # what a restart after the operator dropped next-ca.crt into the CA directory loads
    scep.server.runtime.cas["default"] = load_ca(directory, name="default", passphrase=passphrase,
                                                 base_url=settings.server.public_base_url())
    status, caps = await scep.raw("GET", "operation=GetCACaps")
    assert "GetNextCACert" in caps.split()
    async with scep.session.get(f"{scep.url}?operation=GetNextCACert") as resp:
        assert resp.status == 200 and resp.content_type == "application/x-x509-next-ca-cert"
        certs = client.parse_next_ca_cert(await resp.read(), ra_cert_der=scep.ra_der)
    assert certs == [successor.cert_der]
