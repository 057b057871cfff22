"""Real SCEP clients nobody here wrote, against the full application: micromdm's scepclient, certmonger's
scep-submit, OpenSSL as verifier and pkilint as RFC 5280 linter."""
from __future__ import annotations

import base64
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from scep_server.ca import inventory
from scep_server.scep import client
from scep_server.store.tables import certificates
from tests.helpers import require_tool
from tests.server import run

from .conftest import device_key, load_key, pem_cert, pkcs_req, ra_and_ca, renew_any_time

SCEP_SUBMIT = "/usr/lib/certmonger/scep-submit"

# every client runs against an RSA CA and an EC CA (the RA, which clients encrypt to, stays RSA)
pytestmark = pytest.mark.parametrize("ca_key_type", ["rsa", "ec-p256", "ec-p384"])
SIGNATURE = {"rsa": x509.SignatureAlgorithmOID.RSA_WITH_SHA256,
             "ec-p256": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256,
             "ec-p384": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384}


async def _inventory(server) -> dict[str, dict]:
    async with server.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(certificates))).all()
    return {r._mapping["serial"]: dict(r._mapping) for r in rows}


async def test_scepclient_enrols_renews_and_is_refused_a_wrong_challenge(server, scepclient, openssl, tmp_path,
                                                                         ca_key_type):
    url = f"{server.url}/scep/default"
    ca_pem = server.data_dir / "ca" / "default" / "ca.crt"
    work = tmp_path / "dev1"
    work.mkdir()
    device_key(work / "k.pem")

    # 1. PKCSReq with the profile's static challenge
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-challenge",
                             server.challenge(), "-cn", "dev1", *server.scepclient_recipient(), cwd=work)
    assert rc == 0, out + err
    issued = x509.load_pem_x509_certificate((work / "client.pem").read_bytes())
    rc, out, err = await run(openssl, "verify", "-CAfile", str(ca_pem), str(work / "client.pem"))
    assert rc == 0 and ": OK" in out, out + err
    assert issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "dev1"
    assert issued.signature_algorithm_oid == SIGNATURE[ca_key_type]
    cdp = issued.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == f"{server.url}/crl/default.crl"
    aia = issued.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS] \
        == [f"{server.url}/ca/default.crt"]
    assert ExtendedKeyUsageOID.CLIENT_AUTH in issued.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    rows = await _inventory(server)
    first = inventory.serial_hex(issued.serial_number)
    assert rows[first]["status"] == "valid" and rows[first]["profile"] == "default"
    assert rows[first]["transaction_id"]

    # 2. RenewalReq signed by the issued certificate (scepclient sends messageType 17), no challenge
    await renew_any_time(server)
    (work / "csr.pem").unlink()
    shutil.move(work / "client.pem", work / "issued.pem")
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-certificate", "issued.pem",
                             "-cn", "dev1", *server.scepclient_recipient(), cwd=work)
    assert rc == 0, out + err
    # scepclient writes the renewed certificate over the one given with -certificate
    renewed = x509.load_pem_x509_certificate((work / "issued.pem").read_bytes())
    assert renewed.serial_number != issued.serial_number
    rows = await _inventory(server)
    assert rows[inventory.serial_hex(renewed.serial_number)]["status"] == "valid"
    assert rows[first]["status"] == "revoked"  # superseded on renewal (profile default)
    assert rows[first]["revocation_reason"] == int(inventory.Reason.SUPERSEDED)

    # 3. a wrong challenge is a CertRep FAILURE badRequest, and nothing is issued
    other = tmp_path / "dev2"
    other.mkdir()
    device_key(other / "k.pem")
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-challenge", "wrong",
                             "-cn", "dev2", *server.scepclient_recipient(), cwd=other)
    assert rc != 0
    assert "badRequest" in out + err
    assert not (other / "client.pem").exists()
    assert len(await _inventory(server)) == 2


async def test_certmonger_reads_caps_and_ca_certs_and_enrols_over_get(server, openssl, tmp_path, ca_key_type):
    submit = require_tool(SCEP_SUBMIT)
    url = f"{server.url}/scep/default"
    rc, out, err = await run(submit, "-u", url, "-c")
    assert rc == 0, err
    assert set(out.split()) == {"AES", "DES3", "SHA-1", "SHA-256", "SHA-512", "POSTPKIOperation", "SCEPStandard",
                                "Renewal"}
    rc, out, err = await run(submit, "-u", url, "-C")
    assert rc == 0, err
    pems = [p for p in out.split("-----END CERTIFICATE-----") if "BEGIN CERTIFICATE" in p]
    subjects = {x509.load_pem_x509_certificate((p.strip() + "\n-----END CERTIFICATE-----\n").encode())
                .subject.rfc4514_string() for p in pems}
    ca = server.runtime.cas["default"]
    assert subjects == {ca.cert.subject.rfc4514_string(), ca.ra_cert.subject.rfc4514_string()}
    assert ca.cert.signature_algorithm_oid == SIGNATURE[ca_key_type]

    async with aiohttp.ClientSession() as session:
        ra_der, ca_der = await ra_and_ca(session, url)
    key_path = device_key(tmp_path / "k.pem")
    key = load_key(key_path)
    signer_der = client.make_self_signed_signer(key)
    (tmp_path / "signer.pem").write_bytes(pem_cert(signer_der))
    env = {"CERTMONGER_OPERATION": "SUBMIT",
           "CERTMONGER_PKCSREQ": base64.b64encode(pkcs_req(key, ra_der, challenge=server.challenge(), cn="cm-dev",
                                                           signer_der=signer_der)).decode(),
           "CERTMONGER_SCEP_RA_CERTIFICATE": pem_cert(ra_der).decode(),
           "CERTMONGER_SCEP_CA_CERTIFICATE": pem_cert(ca_der).decode()}
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
    assert leaf.subject.rfc4514_string() == "CN=cm-dev"
    assert leaf.signature_algorithm_oid == SIGNATURE[ca_key_type]
    (tmp_path / "leaf.pem").write_bytes(pem_cert(leaf.public_bytes(serialization.Encoding.DER)))
    (tmp_path / "ca.pem").write_bytes(pem_cert(ca_der))
    rc, out, err = await run(openssl, "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem"))
    assert rc == 0 and ": OK" in out, out + err

    # a wrong challenge: certmonger reports the server's failure
    other = load_key(device_key(tmp_path / "k2.pem"))
    env["CERTMONGER_PKCSREQ"] = base64.b64encode(pkcs_req(other, ra_der, challenge="nope", cn="cm-bad")).decode()
    rc, out, err = await run(submit, "-u", url, env=env)
    assert rc != 0
    # certmonger's wording of failInfo badRequest (2)
    assert "Transaction either is not permitted or is not supported by server." in out + err


async def test_pkilint_finds_no_error_in_ca_ra_and_issued_certificates(server, scepclient, tmp_path):
    lint = require_tool(str(Path(sys.executable).parent / "lint_pkix_cert"))
    device_key(tmp_path / "k.pem")
    rc, out, err = await run(scepclient, "-server-url", f"{server.url}/scep/default", "-private-key", "k.pem",
                             "-challenge", server.challenge(), "-cn", "lint-me", *server.scepclient_recipient(),
                             cwd=tmp_path)
    assert rc == 0, out + err
    ca = server.runtime.cas["default"]
    (tmp_path / "ca.pem").write_bytes(pem_cert(ca.cert_der))
    (tmp_path / "ra.pem").write_bytes(pem_cert(ca.ra_cert_der))
    for name in ("ca.pem", "ra.pem", "client.pem"):
        rc, out, err = await run(lint, "lint", "-s", "WARNING", str(tmp_path / name))
        assert rc == 0, f"{name}: {out}{err}"
