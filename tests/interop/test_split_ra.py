"""Split RA certificates (a signing-only and an encryption-only one, as Microsoft NDES publishes them) beside the
single RA certificate, against the full application: GetCACert's order, requests addressed each way a client
picks its recipient (by key usage with the CA certificate as fallback, the first certificate, the CA
certificate, the RA by issuer and serial or by subject key identifier), micromdm's scepclient and certmonger's
scep-submit, pkilint and OpenSSL on the new RA certificates, renewal of both, a restart, the switch back, and
the transport quirks in split mode."""
from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from scep_server.ca import lifecycle
from scep_server.runtime import load_cas
from scep_server.scep import ContentCipher, FailInfo, MessageType, PKIStatus, client
from scep_server.scep.cms import parse_degenerate, subject_key_identifier_rid
from tests.factories import rsa_key
from tests.helpers import require_tool
from tests.server import run, start_app

from .conftest import device_key, load_key, pem_cert, split_ras

SCEP_SUBMIT = "/usr/lib/certmonger/scep-submit"
MODES = pytest.mark.parametrize("ra_mode", ["single", "split"])


async def get_ca_cert(url: str, query: str = "operation=GetCACert", path: str = "") -> list[x509.Certificate]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}{path}?{query}") as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "application/x-x509-ca-ra-cert"
            certs, _ = parse_degenerate(await resp.read())
    return [x509.load_der_x509_certificate(c) for c in certs]


def usage(cert: x509.Certificate) -> x509.KeyUsage:
    return cert.extensions.get_extension_for_class(x509.KeyUsage).value


def is_ca(cert: x509.Certificate) -> bool:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


# ---- how clients pick the certificate they encrypt to, from GetCACert's certificates

def by_key_usage(certs: list[x509.Certificate]) -> x509.Certificate:
    """An end-entity certificate with keyEncipherment and without digitalSignature (an NDES encryption RA),
    else the CA certificate (clients that find no such certificate fall back to it)."""
    for c in certs:
        u = usage(c)
        if not is_ca(c) and u.key_encipherment and not u.digital_signature:
            return c
    return next(c for c in certs if is_ca(c))


def first(certs: list[x509.Certificate]) -> x509.Certificate:
    return certs[0]


def ca_certificate(certs: list[x509.Certificate]) -> x509.Certificate:
    return next(c for c in certs if is_ca(c))


def ra_for_encryption(certs: list[x509.Certificate]) -> x509.Certificate:
    """The RA certificate meant for encryption: the one with keyEncipherment (split: the encryption RA)."""
    return next(c for c in certs if not is_ca(c) and usage(c).key_encipherment)


PICKS = {"key-usage": (by_key_usage, "serial"), "first": (first, "serial"), "ca": (ca_certificate, "serial"),
         "ra-serial": (ra_for_encryption, "serial"), "ra-ski": (ra_for_encryption, "ski")}


def request(key, recipient: x509.Certificate, *, challenge: str, cn: str, rid: str = "serial") -> bytes:
    recipient_der = der(recipient)
    return client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(key, cn, challenge),
        signer_cert_der=client.make_self_signed_signer(key), signer_key=key, recipient_cert_der=recipient_der,
        recipient_id_der=subject_key_identifier_rid(recipient_der) if rid == "ski" else None,
        transaction_id=client.transaction_id_for(key.public_key()), sender_nonce=os.urandom(16),
        cek=os.urandom(16), iv=os.urandom(16), cipher=ContentCipher.AES128_CBC)


async def post(url: str, body: bytes, key, ra_der: bytes) -> client.CertRepResult:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}?operation=PKIOperation", data=body) as resp:
            assert resp.status == 200, await resp.text()
            return client.parse_cert_rep(await resp.read(), key, ra_cert_der=ra_der)


@MODES
async def test_get_ca_cert_serves_the_ra_certificates_in_ndes_order(server, ra_mode):
    certs = await get_ca_cert(f"{server.url}/scep/default")
    ca = server.runtime.cas["default"]
    assert ca.ra_mode == ra_mode
    if ra_mode == "single":
        assert [der(c) for c in certs] == [ca.ra_cert_der, ca.cert_der]
        assert usage(certs[0]).digital_signature and usage(certs[0]).key_encipherment
        return
    assert_split_get_ca_cert(certs, ca)


def assert_split_get_ca_cert(certs: list[x509.Certificate], ca) -> None:
    """GetCACert of split RA certificates, in NDES order: the signing RA certificate, the encryption one, the CA."""
    signing, encryption, authority = certs
    assert [der(c) for c in certs] == [ca.ra_cert_der, ca.ra_enc_cert_der, ca.cert_der]
    assert (usage(signing).digital_signature, usage(signing).key_encipherment, usage(signing).data_encipherment) \
        == (True, False, False)
    assert (usage(encryption).digital_signature, usage(encryption).key_encipherment,
            usage(encryption).data_encipherment) == (False, True, True)
    assert not is_ca(signing) and not is_ca(encryption) and is_ca(authority)
    assert signing.public_key() != encryption.public_key()
    for c in (signing, encryption):
        c.verify_directly_issued_by(authority)
        assert c.subject == ca.ra_cert.subject


async def test_a_ca_created_split_serves_what_a_switched_one_serves(aiohttp_server, tmp_path, db_url):
    """A CA created with split RA certificates (ca.ra_mode = "split", `init --ra-mode split`): GetCACert as after
    `renew-ra --mode split`, without an earlier single RA certificate; a device that picks the encryption RA
    certificate by key usage enrols; a restart loads split mode; a renewal renews both."""
    server = await start_app(aiohttp_server, tmp_path, db_url, ca={"ra_mode": "split"})
    ca = server.runtime.cas["default"]
    assert ca.ra_mode == "split" and ca.previous_ras == [] and ca.previous_enc_ras == []
    url = f"{server.url}/scep/default"
    certs = await get_ca_cert(url)
    assert_split_get_ca_cert(certs, ca)
    key = rsa_key()
    rep = await post(url, request(key, by_key_usage(certs), challenge=server.challenge(), cn="created-split"), key,
                     der(certs[0]))
    assert rep.status == PKIStatus.SUCCESS, rep.fail_text
    assert load_cas(server.settings)["default"].ca_cert_ders == ca.ca_cert_ders  # what a restarted server loads
    directory = server.data_dir / "ca" / "default"
    assert sorted(p.name for p in directory.glob("ra*.crt")) == ["ra-enc.crt", "ra.crt"]
    renewed = await lifecycle.renew(server.runtime, "default", actor="test")
    assert renewed["ra_mode"] == "split"
    assert sorted(p.name for p in directory.glob("ra*.crt")) == ["ra-1.crt", "ra-enc-1.crt", "ra-enc.crt", "ra.crt"]
    assert_split_get_ca_cert(await get_ca_cert(url), server.runtime.cas["default"])


@MODES
@pytest.mark.parametrize("pick", sorted(PICKS))
async def test_every_recipient_a_client_picks_is_answered_signed_by_the_signing_ra(server, ra_mode, pick):
    url = f"{server.url}/scep/default"
    certs = await get_ca_cert(url)
    choose, rid = PICKS[pick]
    recipient = choose(certs)
    expected = {("split", "key-usage"): 1, ("single", "key-usage"): -1, ("split", "first"): 0,
                ("single", "first"): 0, ("split", "ca"): -1, ("single", "ca"): -1, ("split", "ra-serial"): 1,
                ("single", "ra-serial"): 0, ("split", "ra-ski"): 1, ("single", "ra-ski"): 0}[ra_mode, pick]
    assert recipient == certs[expected]  # the builders pick what they are meant to
    key = rsa_key()
    rep = await post(url, request(key, recipient, challenge=server.challenge(), cn=f"{ra_mode}-{pick}", rid=rid),
                     key, der(certs[0]))  # the reply's signer is checked against the first (signing) RA
    assert rep.status == PKIStatus.SUCCESS, rep.fail_text
    leaf = x509.load_der_x509_certificate(rep.certs[0])
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    leaf.verify_directly_issued_by(certs[-1])


@MODES
async def test_a_request_to_the_ca_certificate_is_bad_message_check_when_the_ca_key_may_not_decrypt(
        aiohttp_server, tmp_path, db_url, ra_mode):
    server = await start_app(aiohttp_server, tmp_path, db_url, ca={"decrypt_with_ca_key": False})
    if ra_mode == "split":
        await split_ras(server)
    url = f"{server.url}/scep/default"
    certs = await get_ca_cert(url)
    key = rsa_key()
    rep = await post(url, request(key, ca_certificate(certs), challenge=server.challenge(), cn="to-ca"), key,
                     der(certs[0]))
    assert rep.status == PKIStatus.FAILURE and rep.fail_info == FailInfo.BAD_MESSAGE_CHECK
    # the same device addressing the RA meant for encryption enrols
    rep = await post(url, request(key, ra_for_encryption(certs), challenge=server.challenge(), cn="to-ra"), key,
                     der(certs[0]))
    assert rep.status == PKIStatus.SUCCESS, rep.fail_text


@MODES
@pytest.mark.parametrize("ca_key_type", ["rsa", "ec-p256"])
async def test_scepclient_enrols_against_both_ra_modes(server, scepclient, openssl, tmp_path, ra_mode, ca_key_type):
    """With an RSA CA scepclient encrypts to every certificate of GetCACert; with an EC CA it is pointed at the
    first RA certificate (-ca-fingerprint, as for an NDES server), with which it also checks the reply."""
    url = f"{server.url}/scep/default"
    device_key(tmp_path / "k.pem")
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-challenge",
                             server.challenge(), "-cn", f"sc-{ra_mode}", *server.scepclient_recipient(), cwd=tmp_path)
    assert rc == 0, out + err
    rc, out, err = await run(openssl, "verify", "-CAfile", str(server.data_dir / "ca" / "default" / "ca.crt"),
                             str(tmp_path / "client.pem"))
    assert rc == 0 and ": OK" in out, out + err


@MODES
async def test_certmonger_enrols_against_both_ra_modes(server, openssl, tmp_path, ra_mode):
    """scep-submit -C prints the RA certificate certmonger encrypts to, then the CA certificate, then the other
    certificates; its SUBMIT, encrypted to that RA certificate, is answered in both modes."""
    submit = require_tool(SCEP_SUBMIT)
    url = f"{server.url}/scep/default"
    rc, out, err = await run(submit, "-u", url, "-C")
    assert rc == 0, err
    pems = [p.strip() + "\n-----END CERTIFICATE-----\n" for p in out.split("-----END CERTIFICATE-----")
            if "BEGIN CERTIFICATE" in p]
    printed = [x509.load_pem_x509_certificate(p[p.index("-----BEGIN"):].encode()) for p in pems]
    ca = server.runtime.cas["default"]
    assert {der(c) for c in printed} == set(ca.ca_cert_ders)
    ra, authority = printed[0], printed[1]
    # certmonger takes the RA certificate with keyEncipherment (split: the encryption one), the signing RA
    # certificate comes last among the others
    expected = [ca.ra_cert_der, ca.cert_der] if ra_mode == "single" else [ca.ra_enc_cert_der, ca.cert_der,
                                                                          ca.ra_cert_der]
    assert [der(c) for c in printed] == expected
    key_path = device_key(tmp_path / "k.pem")
    key = load_key(key_path)
    signer_der = client.make_self_signed_signer(key)
    (tmp_path / "signer.pem").write_bytes(pem_cert(signer_der))
    # certmonger encrypts to the RA certificate it printed first; the reply is decrypted with the signer's key
    pkcs_req = client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(key, f"cm-{ra_mode}", server.challenge()),
        signer_cert_der=signer_der, signer_key=key, recipient_cert_der=der(ra),
        transaction_id=client.transaction_id_for(key.public_key()), sender_nonce=os.urandom(16),
        cek=os.urandom(16), iv=os.urandom(16))
    env = {"CERTMONGER_OPERATION": "SUBMIT", "CERTMONGER_PKCSREQ": base64.b64encode(pkcs_req).decode(),
           "CERTMONGER_SCEP_RA_CERTIFICATE": pem_cert(der(ra)).decode(),
           "CERTMONGER_SCEP_CA_CERTIFICATE": pem_cert(der(authority)).decode()}
    rc, out, err = await run(submit, "-u", url, env=env)
    assert rc == 0, out + err
    assert "-----BEGIN PKCS7-----" in out
    (tmp_path / "reply.p7").write_text(out[out.index("-----BEGIN PKCS7-----"):])
    rc, _, err = await run(openssl, "cms", "-decrypt", "-inform", "PEM", "-in", str(tmp_path / "reply.p7"),
                           "-inkey", str(key_path), "-recip", str(tmp_path / "signer.pem"), "-binary",
                           "-out", str(tmp_path / "certs.p7b"))
    assert rc == 0, err
    rc, out, err = await run(openssl, "pkcs7", "-inform", "DER", "-in", str(tmp_path / "certs.p7b"), "-print_certs")
    assert rc == 0, err
    leaf = x509.load_pem_x509_certificate(out[out.index("-----BEGIN CERTIFICATE-----"):].encode())
    assert leaf.subject.rfc4514_string() == f"CN=cm-{ra_mode}"


@pytest.mark.parametrize("ra_mode", ["split"])
async def test_pkilint_and_openssl_accept_the_split_ra_certificates(server, openssl, tmp_path, ra_mode):
    lint = require_tool(str(Path(sys.executable).parent / "lint_pkix_cert"))
    ca = server.runtime.cas["default"]
    (tmp_path / "ca.pem").write_bytes(pem_cert(ca.cert_der))
    for name, cert_der, purpose in (("ra-sign.pem", ca.ra_cert_der, "digitalSignature"),
                                    ("ra-enc.pem", ca.ra_enc_cert_der, "keyEncipherment")):
        (tmp_path / name).write_bytes(pem_cert(cert_der))
        rc, out, err = await run(lint, "lint", "-s", "WARNING", str(tmp_path / name))
        assert rc == 0, f"{name}: {out}{err}"
        rc, out, err = await run(openssl, "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / name))
        assert rc == 0 and ": OK" in out, out + err
        rc, out, err = await run(openssl, "x509", "-in", str(tmp_path / name), "-noout", "-ext", "keyUsage")
        assert rc == 0 and purpose.replace("digitalSignature", "Digital Signature").replace(
            "keyEncipherment", "Key Encipherment") in out, out + err


async def test_split_mode_survives_a_restart_renews_both_and_switches_back(server, db_url, tmp_path):
    """`renew-ra --mode split` writes both RA certificates; a process loading the directory is in split mode; a
    renewal renews both; `--mode single` issues one RA certificate again, and the encryption RA certificate
    keeps decrypting until it expires."""
    from tests.interop.test_ra_renewal import cli, json_of

    url = f"{server.url}/scep/default"
    renewed = json_of(await asyncio.to_thread(cli, server, db_url, "ca", "renew-ra", "--mode", "split",
                                              "--format", "json"))
    assert renewed["ra_mode"] == "split"
    loaded = load_cas(server.settings)["default"]  # what a restarted server loads
    assert loaded.ra_mode == "split"
    assert format(loaded.ra_cert.serial_number, "x") == renewed["ra_certificate"]["serial"]
    assert format(loaded.ra_enc_cert.serial_number, "x") == renewed["ra_encryption_certificate"]["serial"]
    directory = server.data_dir / "ca" / "default"
    assert sorted(p.name for p in directory.glob("ra*.crt")) == ["ra-1.crt", "ra-enc.crt", "ra.crt"]

    await lifecycle.reload_ras(server.runtime, "default")
    first_enc = server.runtime.cas["default"].ra_enc_cert
    again = await lifecycle.renew(server.runtime, "default", actor="test")  # the renewal path: both renewed
    ca = server.runtime.cas["default"]
    assert again["ra_mode"] == "split" and ca.ra_enc_cert != first_enc
    assert format(ca.ra_enc_cert.serial_number, "x") == again["ra_encryption_certificate"]["serial"]
    assert not usage(ca.ra_cert).key_encipherment and not usage(ca.ra_enc_cert).digital_signature
    assert sorted(p.name for p in directory.glob("ra*.crt")) == ["ra-1.crt", "ra-2.crt", "ra-enc-1.crt",
                                                                 "ra-enc.crt", "ra.crt"]
    certs = await get_ca_cert(url)
    assert [der(c) for c in certs] == ca.ca_cert_ders

    old_enc = ca.ra_enc_cert
    back = await lifecycle.renew(server.runtime, "default", actor="test", mode="single")
    ca = server.runtime.cas["default"]
    assert back["ra_mode"] == "single" and back["ra_encryption_certificate"] is None
    assert ca.ra_enc_cert is None and usage(ca.ra_cert).key_encipherment and usage(ca.ra_cert).digital_signature
    assert [der(c) for c in await get_ca_cert(url)] == [ca.ra_cert_der, ca.cert_der]
    assert load_cas(server.settings)["default"].ra_mode == "single"
    # a device that read the split GetCACert just before the switch still enrols
    key = rsa_key()
    rep = await post(url, request(key, old_enc, challenge=server.challenge(), cn="late"), key, ca.ra_cert_der)
    assert rep.status == PKIStatus.SUCCESS, rep.fail_text
    assert format(old_enc.serial_number, "x") in {c["serial"] for c in back["previous_ra_certificates"]}


@pytest.mark.parametrize("ra_mode", ["split"])
async def test_transport_quirks_in_split_mode(server, ra_mode):
    """Unescaped base64 with '+' in a GET, the pkiclient.exe paths, a message= on GetCACert."""
    url = f"{server.url}/scep/default"
    ca = server.runtime.cas["default"]
    for path in ("", "/pkiclient.exe", "/cgi-bin/pkiclient.exe"):
        for query in ("operation=GetCACert", "operation=GetCACert&message=default", "operation=GetCACert&message="):
            assert [der(c) for c in await get_ca_cert(url, query, path)] == ca.ca_cert_ders
    certs = await get_ca_cert(url)
    for i in range(20):
        key = rsa_key()
        body = request(key, by_key_usage(certs), challenge=server.challenge(), cn=f"get-{i}")
        text = base64.b64encode(body).decode()
        if "+" in text:
            break
    else:
        raise AssertionError("no base64 with '+' in 20 requests")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/pkiclient.exe?operation=PKIOperation&message={text}") as resp:
            assert resp.status == 200, await resp.text()
            rep = client.parse_cert_rep(await resp.read(), key, ra_cert_der=ca.ra_cert_der)
    assert rep.status == PKIStatus.SUCCESS, rep.fail_text



async def test_the_server_renews_both_split_ra_certificates_when_due(aiohttp_server, tmp_path, db_url):
    """The automatic renewal before expiry renews the signing and the encryption RA certificate."""
    from datetime import datetime, timedelta, timezone

    from scep_server.ca import ra
    from scep_server.ca.authority import load_ca
    from scep_server.ca.keys import load_or_create_passphrase
    from tests.factories import settings_for
    from tests.interop.test_ra_renewal import FAST, initialise_in_the_past, renew_events

    await initialise_in_the_past(tmp_path, db_url, 700)
    settings = settings_for(tmp_path / "data", db_url)
    directory = settings.ca_dir()
    passphrase = load_or_create_passphrase(settings.ca.passphrase_env, settings.passphrase_path(),
                                           keys_in=settings.ca_dir().parent)
    authority = load_ca(directory, name="default", passphrase=passphrase, base_url=settings.server.public_base_url())
    # switched to split RA certificates 700 days ago: both have 30 days left, renewal is due (60 days before)
    ra.renew_ra(directory, authority, validity_days=730, passphrase=passphrase, mode="split",
                now=datetime.now(timezone.utc) - timedelta(days=700))
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=FAST)
    deadline = asyncio.get_running_loop().time() + 15
    while not await renew_events(server.runtime.engine):
        assert asyncio.get_running_loop().time() < deadline, "the RA was not renewed"
        await asyncio.sleep(0.1)
    (event,) = await renew_events(server.runtime.engine)
    assert event["actor"] == "system:ra-renewal" and event["data"]["ra_mode"] == "split"
    ca = server.runtime.cas["default"]
    assert ca.ra_mode == "split"
    assert format(ca.ra_enc_cert.serial_number, "x") == event["data"]["encryption_serial"]
    for c in (ca.ra_cert, ca.ra_enc_cert):
        assert c.not_valid_after_utc - datetime.now(timezone.utc) > timedelta(days=700)
    assert sorted(p.name for p in directory.glob("ra*.crt")) == ["ra-1.crt", "ra-2.crt", "ra-enc-1.crt",
                                                                 "ra-enc.crt", "ra.crt"]
    url = f"{server.url}/scep/default"
    assert [der(c) for c in await get_ca_cert(url)] == [ca.ra_cert_der, ca.ra_enc_cert_der, ca.cert_der]
    key = rsa_key()
    certs = await get_ca_cert(url)
    rep = await post(url, request(key, by_key_usage(certs), challenge=server.challenge(), cn="renewed-split"), key,
                     ca.ra_cert_der)
    assert rep.status == PKIStatus.SUCCESS, rep.fail_text


async def test_after_a_rollover_requests_to_the_new_ca_certificate_are_answered(aiohttp_server, tmp_path, db_url):
    """The CA a rollover activates at run time decrypts what is addressed to its certificate, as the CA loaded
    at start did (ca.decrypt_with_ca_key, on by default with key files), without a restart."""
    from scep_server.ca.lifecycle import activate_rollover, prepare_rollover

    server = await start_app(aiohttp_server, tmp_path, db_url)
    await prepare_rollover(server.runtime, "default", actor="test")
    await activate_rollover(server.runtime, "default", actor="test")
    assert server.runtime.cas["default-g2"].ca_decrypts
    url = f"{server.url}/scep/default"
    certs = await get_ca_cert(url)
    assert ca_certificate(certs) == server.runtime.cas["default-g2"].cert
    key = rsa_key()
    rep = await post(url, request(key, ca_certificate(certs), challenge=server.challenge(), cn="to-new-ca"), key,
                     der(certs[0]))
    assert rep.status == PKIStatus.SUCCESS, rep.fail_text
