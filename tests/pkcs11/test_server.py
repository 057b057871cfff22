"""The full application with its CA and RA keys in a SoftHSM token: real clients enrol, CRLs are signed in the
token, and a server whose token cannot be used refuses to start."""
from __future__ import annotations

import base64
import os
import subprocess
import sys

import aiohttp
import pytest
from click.testing import CliRunner
from cryptography import x509

from scep_server.ca.inventory import Reason, serial_hex
from scep_server.cli import main
from scep_server.runtime import CaKeysUnavailable, initialise, open_runtime
from scep_server.scep import client
from tests.crlwiring.conftest import FAST_CRL, crl_serials, enrol_with_codec, fetch, openssl_verify, wait_for
from tests.factories import settings_for
from tests.helpers import require_tool
from tests.interop.conftest import device_key, load_key, pem_cert, pkcs_req, ra_and_ca
from tests.server import run, serve_processes, start_app

SIGNATURE = {"rsa": x509.SignatureAlgorithmOID.RSA_WITH_SHA256,
             "ec-p256": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256}
SCEP_SUBMIT = "/usr/lib/certmonger/scep-submit"


@pytest.mark.parametrize("ca_key_type", ["rsa", "ec-p256"])
async def test_clients_enrol_and_crls_are_signed_with_keys_in_the_token(aiohttp_server, tmp_path, db_url, softhsm,
                                                                        scepclient, openssl, ca_key_type):
    server = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL,
                             ca=softhsm.ca_settings(key_type=ca_key_type))
    ca = server.runtime.cas["default"]
    ca_dir = server.data_dir / "ca" / "default"
    assert sorted(p.name for p in ca_dir.iterdir() if p.suffix in (".key", ".crt")) == ["ca.crt", "ra.crt"]
    assert not (server.data_dir / "ca" / "passphrase").exists()
    assert type(ca.key).__name__ == type(ca.ra_key).__name__ == "Pkcs11Key"
    assert ca.cert.signature_algorithm_oid == SIGNATURE[ca_key_type]

    # micromdm's scepclient: the RA decrypts its envelope and signs the CertRep in the token
    work = tmp_path / "dev"
    work.mkdir()
    device_key(work / "k.pem")
    url = f"{server.url}/scep/default"
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-challenge",
                             server.challenge(), "-cn", "hsm-dev", *server.scepclient_recipient(), cwd=work)
    assert rc == 0, out + err
    issued = x509.load_pem_x509_certificate((work / "client.pem").read_bytes())
    assert issued.signature_algorithm_oid == SIGNATURE[ca_key_type]
    rc, out, err = await run(openssl, "verify", "-CAfile", str(ca_dir / "ca.crt"), str(work / "client.pem"))
    assert rc == 0 and ": OK" in out, out + err

    # certmonger's scep-submit, over GET
    submit = require_tool(SCEP_SUBMIT)
    async with aiohttp.ClientSession() as session:
        ra_der, ca_der = await ra_and_ca(session, url)
        key = load_key(device_key(tmp_path / "cm.pem"))
        signer_der = client.make_self_signed_signer(key)
        env = {"CERTMONGER_OPERATION": "SUBMIT",
               "CERTMONGER_PKCSREQ": base64.b64encode(pkcs_req(key, ra_der, challenge=server.challenge(),
                                                               cn="cm-hsm", signer_der=signer_der)).decode(),
               "CERTMONGER_SCEP_RA_CERTIFICATE": pem_cert(ra_der).decode(),
               "CERTMONGER_SCEP_CA_CERTIFICATE": pem_cert(ca_der).decode()}
        rc, out, err = await run(submit, "-u", url, env=env)
        assert rc == 0 and "-----BEGIN PKCS7-----" in out, out + err

        # revocation reaches the CRL, signed in the token, and OpenSSL refuses the certificate
        crl_url = f"{server.url}/crl/default.crl"
        publisher = server.runtime.crl.publishers["default"]
        try:  # the first CRL is signed in the token when the server starts: on a loaded machine it may come late
            await publisher.wait_newer(None, timeout=30)
        except TimeoutError:
            raise AssertionError(f"no CRL within 30 s: {publisher.health()}") from None
        der = await fetch(session, crl_url)
        assert x509.load_der_x509_crl(der).signature_algorithm_oid == SIGNATURE[ca_key_type]
        rc, out = await openssl_verify(openssl, ca_dir / "ca.crt", der, issued, tmp_path / "v0")
        assert rc == 0 and ": OK" in out, out
        await server.runtime.revocation.revoke(serial_hex(issued.serial_number), Reason.KEY_COMPROMISE,
                                               actor="test")

        async def listed():
            body = await fetch(session, crl_url)
            return body if issued.serial_number in crl_serials(body) else None

        der, _ = await wait_for(listed, timeout=10)
    assert x509.load_der_x509_crl(der).is_signature_valid(ca.cert.public_key())
    rc, out = await openssl_verify(openssl, ca_dir / "ca.crt", der, issued, tmp_path / "v1")
    assert rc != 0 and "certificate revoked" in out, out


async def test_a_runtime_whose_token_is_unusable_refuses_to_open(tmp_path, softhsm, monkeypatch):
    settings = settings_for(tmp_path / "data", ca=softhsm.ca_settings(key_type="ec-p256"))
    await initialise(settings)
    monkeypatch.setenv("SCEP_CA_PKCS11_PIN", "000000")
    with pytest.raises(CaKeysUnavailable, match="PIN of token .* is wrong"):
        async with open_runtime(settings):
            pass
    monkeypatch.setenv("SCEP_CA_PKCS11_PIN", "246810")
    other = settings_for(tmp_path / "data", ca=softhsm.ca_settings(key_type="ec-p256", ca_key_label="renamed"))
    with pytest.raises(CaKeysUnavailable, match="no private key labelled 'renamed'"):
        async with open_runtime(other):
            pass
    async with open_runtime(settings) as rt:  # the right PIN and labels
        assert rt.cas["default"].key.public_key() == rt.cas["default"].cert.public_key()


def test_init_generates_the_keys_in_the_token_and_serve_refuses_a_missing_pin(tmp_path, softhsm, monkeypatch):
    for name, value in softhsm.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    monkeypatch.setenv("SCEP_SERVER_LOG__LEVEL", "warning")
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["--data-dir", str(data), "init", "--ca-key-type", "ec-p384"])
    assert result.exit_code == 0, result.output
    assert f"in PKCS#11 token {softhsm.label!r}" in result.output
    assert not list(data.rglob("*.key")) and not (data / "ca" / "passphrase").exists()
    again = CliRunner().invoke(main, ["--data-dir", str(data), "init"])
    assert again.exit_code == 0 and "already initialised" in again.output

    env = {**os.environ, **softhsm.env(), "SCEP_SERVER_LOG__LEVEL": "warning"}
    env.pop("SCEP_CA_PKCS11_PIN")
    cmd = [sys.executable, "-m", "scep_server.cli", "--data-dir", str(data), "serve", "--listen", "127.0.0.1:0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no PKCS#11 PIN: set $SCEP_CA_PKCS11_PIN or ca.pkcs11_pin_file" in done.stderr
    env.update(SCEP_CA_PKCS11_PIN="246810", SCEP_SERVER_CA__PKCS11_MODULE="/usr/lib/no-such-pkcs11.so")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "PKCS#11 module /usr/lib/no-such-pkcs11.so does not exist" in done.stderr


async def test_forked_workers_each_open_the_token(tmp_path, softhsm, monkeypatch, db_url):
    """`serve --workers 2` opens the token in the parent for `init`, then in each worker after the fork."""
    for name, value in softhsm.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_TYPE", "ec-p256")
    data = tmp_path / "data"
    with serve_processes(data, db_url, workers=2, env=softhsm.env()) as (url,):
        ca = x509.load_pem_x509_certificate((data / "ca" / "default" / "ca.crt").read_bytes())
        challenge = (data / "default-challenge.txt").read_text().strip()
        async with aiohttp.ClientSession() as session:
            for i in range(6):  # connections are closed each time: both workers answer some
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                    _, cert = await enrol_with_codec(fresh, url, challenge, f"worker-{i}")
                cert.verify_directly_issued_by(ca)
            der = await fetch(session, f"{url}/crl/default.crl")
            assert x509.load_der_x509_crl(der).is_signature_valid(ca.public_key())


async def test_split_ra_and_the_ca_key_as_recipient_are_refused_with_keys_in_the_token(aiohttp_server, tmp_path,
                                                                                        db_url, softhsm):
    """The token's CA key only signs: a request addressed to the CA certificate is badMessageCheck (a signed
    CertRep, not a 500), `decrypt_with_ca_key = true` is refused, and so are split RA certificates."""
    from pydantic import ValidationError

    from scep_server.ca import lifecycle
    from scep_server.config import CASettings
    from scep_server.scep import FailInfo, MessageType, PKIStatus

    with pytest.raises(ValidationError, match="decrypt_with_ca_key"):
        CASettings(**softhsm.ca_settings(decrypt_with_ca_key=True))
    assert CASettings(**softhsm.ca_settings()).ca_key_decrypts() is False
    server = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL, ca=softhsm.ca_settings())
    url = f"{server.url}/scep/default"
    async with aiohttp.ClientSession() as session:
        async def published() -> bool:  # the CRL job is idle before the test ends (no signing in the token
            async with session.get(f"{server.url}/crl/default.crl") as resp:  # while the next test starts one)
                return resp.status == 200

        await wait_for(published, timeout=10)
        ra_der, ca_der = await ra_and_ca(session, url)
        key = load_key(device_key(tmp_path / "k.pem"))
        for recipient, expected in ((ca_der, PKIStatus.FAILURE), (ra_der, PKIStatus.SUCCESS)):
            body = client.build_request(
                MessageType.PKCS_REQ, content=client.make_csr(key, "to-ca", server.challenge()),
                signer_cert_der=client.make_self_signed_signer(key), signer_key=key, recipient_cert_der=recipient,
                transaction_id=client.transaction_id_for(key.public_key()), sender_nonce=os.urandom(16),
                cek=os.urandom(16), iv=os.urandom(16))
            async with session.post(f"{url}?operation=PKIOperation", data=body) as resp:
                assert resp.status == 200
                rep = client.parse_cert_rep(await resp.read(), key, ra_cert_der=ra_der)
            assert rep.status == expected, rep.fail_text
            if expected is PKIStatus.FAILURE:
                assert rep.fail_info == FailInfo.BAD_MESSAGE_CHECK
    with pytest.raises(lifecycle.RaInToken, match="split RA certificates"):
        await lifecycle.renew(server.runtime, "default", actor="test", mode="split")
    assert server.runtime.cas["default"].ra_mode == "single"
