"""EC issuing CAs (P-256, P-384) with an RSA RA: creation, reloading, issuance, relying parties."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scep_server.ca.authority import load_ca, random_serial
from scep_server.ca.keys import FileKey
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from scep_server.cli import main
from tests.factories import NOW, PASSPHRASE, csr, make_ca, pem, rsa_key
from tests.app.test_tbs_issuance import BytesOnly
from tests.helpers import require_tool

SIGNATURE = {"rsa": x509.SignatureAlgorithmOID.RSA_WITH_SHA256,
             "ec-p256": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256,
             "ec-p384": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384}
CURVE = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}


@pytest.fixture(scope="module", params=["ec-p256", "ec-p384"])
def ec_ca(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return request.param, directory, make_ca(directory, key_type=request.param)


def test_the_ca_key_is_ec_and_the_ra_key_stays_rsa(ec_ca):
    key_type, directory, ca = ec_ca
    assert isinstance(ca.cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.cert.public_key().curve.name == CURVE[key_type]
    assert isinstance(ca.ra_cert.public_key(), rsa.RSAPublicKey)
    # the self-signed CA certificate and the RA certificate are signed with the hash that matches the curve
    assert ca.cert.signature_algorithm_oid == ca.ra_cert.signature_algorithm_oid == SIGNATURE[key_type]
    ca.cert.verify_directly_issued_by(ca.cert)
    ca.ra_cert.verify_directly_issued_by(ca.cert)
    assert b"ENCRYPTED" in (directory / "ca.key").read_bytes()


def test_an_ec_ca_reloads_from_its_files_and_keeps_issuing(ec_ca):
    key_type, directory, ca = ec_ca
    loaded = load_ca(directory, name="default", passphrase=PASSPHRASE, base_url="http://127.0.0.1:8080")
    assert loaded.cert == ca.cert
    assert loaded.key.public_key().public_numbers() == ca.cert.public_key().public_numbers()
    cert = loaded.issue(csr(rsa_key(), "reloaded"), IssuancePolicy(CertificateTemplate()), serial=11, now=NOW)
    assert cert.signature_algorithm_oid == SIGNATURE[key_type]
    assert ca.issued_by_us(cert)


def test_an_ec_tbs_is_the_one_the_builder_makes(ec_ca):
    """ECDSA signatures are randomised: the TBS bytes and algorithm are compared, and both signatures verify."""
    _, _, ca = ec_ca
    request = csr(rsa_key(), "same", sans=[x509.DNSName("same.example.com")])
    policy = IssuancePolicy(CertificateTemplate(san_types=["dns"]))
    signer = BytesOnly(ca.key)
    ours = dataclasses.replace(ca, key=signer).issue(request, policy, serial=42, now=NOW)  # the TBS path
    assert len(signer.calls) == 1
    old = ca.issue(request, policy, serial=42, now=NOW)  # the key file's: the builder signs
    assert ours.tbs_certificate_bytes == old.tbs_certificate_bytes
    assert ours.signature_algorithm_oid == old.signature_algorithm_oid
    for cert in (ours, old):
        cert.verify_directly_issued_by(ca.cert)


def test_an_ec_ca_key_signs_and_never_decrypts():
    key = FileKey.generate(0, "ec-p256")
    signature = key.sign(b"data", hashes.SHA256())
    key.public_key().verify(signature, b"data", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(ValueError, match="does not decrypt"):
        key.decrypt(b"\0" * 32, "pkcs1v15")
    with pytest.raises(ValueError, match="unknown key type"):
        FileKey.generate(2048, "ec-p521")


def test_a_p521_or_other_key_file_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "ca.key"
    path.write_bytes(ec.generate_private_key(ec.SECP521R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"p")))
    with pytest.raises(ValueError, match="P-256/P-384"):
        FileKey.load(path, b"p")


@pytest.mark.parametrize("key_type", ["rsa", "ec-p256", "ec-p384"])
def test_openssl_verifies_and_pkilint_accepts_every_ca_key_type(key_type, tmp_path):
    openssl = require_tool("openssl")
    lint = require_tool(str(Path(sys.executable).parent / "lint_pkix_cert"))
    ca = make_ca(tmp_path / "ca", key_type=key_type)
    cert = ca.issue(csr(rsa_key(), "dev"), IssuancePolicy(CertificateTemplate()), serial=random_serial(), now=NOW)
    ec_device = ca.issue(csr(ec.generate_private_key(ec.SECP256R1()), "ec-dev"),
                         IssuancePolicy(CertificateTemplate(allow_ec=True)), serial=random_serial(), now=NOW)
    (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
    (tmp_path / "ra.pem").write_bytes(pem(ca.ra_cert))
    (tmp_path / "dev.pem").write_bytes(pem(cert))
    (tmp_path / "ec-dev.pem").write_bytes(pem(ec_device))
    for leaf in ("ra.pem", "dev.pem", "ec-dev.pem"):
        out = subprocess.run([openssl, "verify", "-CAfile", tmp_path / "ca.pem", tmp_path / leaf],
                             capture_output=True, text=True)
        assert out.returncode == 0 and ": OK" in out.stdout, out.stdout + out.stderr
    for f in ("ca.pem", "ra.pem", "dev.pem", "ec-dev.pem"):
        out = subprocess.run([lint, "lint", "-s", "WARNING", tmp_path / f], capture_output=True, text=True)
        assert out.returncode == 0, f"{key_type} {f}: {out.stdout}{out.stderr}"


@pytest.mark.parametrize("flag,env,expected", [
    (["--ca-key-type", "ec-p384"], None, "secp384r1"),
    ([], "ec-p256", "secp256r1"),
    ([], None, None),
])
def test_init_makes_the_ca_key_the_option_or_setting_names(tmp_path, monkeypatch, flag, env, expected):
    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    monkeypatch.setenv("SCEP_SERVER_LOG__LEVEL", "warning")
    if env:
        monkeypatch.setenv("SCEP_SERVER_CA__KEY_TYPE", env)
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["--data-dir", str(data), "init", *flag])
    assert result.exit_code == 0, result.output
    cert = x509.load_pem_x509_certificate((data / "ca" / "default" / "ca.crt").read_bytes())
    ra = x509.load_pem_x509_certificate((data / "ca" / "default" / "ra.crt").read_bytes())
    assert isinstance(ra.public_key(), rsa.RSAPublicKey)
    if expected is None:
        assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048
        assert "RSA 2048 key" in result.output
    else:
        assert cert.public_key().curve.name == expected
        assert f"EC P-{expected[4:7]} key" in result.output


def test_init_refuses_an_unknown_key_type(tmp_path):
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "data"), "init", "--ca-key-type", "dsa"])
    assert result.exit_code == 2 and "dsa" in result.output
