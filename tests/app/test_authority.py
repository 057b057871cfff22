import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from scep_server.ca.authority import load_ca, random_serial
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy, PolicyViolation
from tests.factories import NOW, PASSPHRASE, csr, make_ca, pem, rsa_key
from tests.helpers import require_tool


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def device_key():
    return rsa_key()


def test_serials_are_positive_and_wide():
    serials = {random_serial() for _ in range(1000)}
    assert len(serials) == 1000
    assert all(0 < s < 2**127 for s in serials)
    assert max(serials).bit_length() > 120  # 127 random bits


def test_ca_and_ra_keys_are_encrypted_and_reload(tmp_path):
    made = make_ca(tmp_path)
    assert b"ENCRYPTED" in (tmp_path / "ca.key").read_bytes()
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0
    loaded = load_ca(tmp_path, name="default", passphrase=PASSPHRASE, base_url="http://x")
    assert loaded.cert == made.cert and loaded.ra_cert == made.ra_cert
    with pytest.raises(ValueError):
        load_ca(tmp_path, name="default", passphrase=b"wrong", base_url="http://x")


@pytest.mark.parametrize("swapped", ["ca.key", "ra.key", "ra-1.key"])
def test_a_key_file_that_is_not_its_certificates_key_is_refused_at_load(tmp_path, swapped):
    """A key file restored from another CA (same passphrase) would sign what its certificate does not verify."""
    import shutil

    from scep_server.ca.ra import renew_ra

    made = make_ca(tmp_path / "ca")
    renew_ra(tmp_path / "ca", made, validity_days=30, passphrase=PASSPHRASE, now=NOW)
    make_ca(tmp_path / "other")
    shutil.copy(tmp_path / "other" / swapped.replace("-1", ""), tmp_path / "ca" / swapped)
    with pytest.raises(ValueError, match=rf"{swapped} is not the key of .*{swapped[:-4]}\.crt"):
        load_ca(tmp_path / "ca", name="default", passphrase=PASSPHRASE, base_url="http://x")


def test_a_rollover_whose_next_key_is_not_its_certificates_is_not_activated(tmp_path):
    import shutil

    from scep_server.ca.rollover import ACTIVE_FILE, NotPrepared, activate, prepare

    made = make_ca(tmp_path / "default")
    prepare(tmp_path / "default", made, key_size=2048, validity_days=365, ra_validity_days=30,
            passphrase=PASSPHRASE, now=NOW)
    make_ca(tmp_path / "other")
    for fname in ("next-ca.key", "next-ra.key"):
        kept = (tmp_path / "default" / fname).read_bytes()
        shutil.copy(tmp_path / "other" / fname.removeprefix("next-"), tmp_path / "default" / fname)
        with pytest.raises(NotPrepared, match=f"{fname} is not the key of its certificate"):
            activate(tmp_path, "default", PASSPHRASE)
        (tmp_path / "default" / fname).write_bytes(kept)
    with pytest.raises(NotPrepared, match="cannot be read with the CA passphrase"):
        activate(tmp_path, "default", b"wrong")
    assert not (tmp_path / ACTIVE_FILE).exists() and not (tmp_path / "default-g2").exists()
    assert activate(tmp_path, "default", PASSPHRASE) == "default-g2"
    load_ca(tmp_path / "default-g2", name="default-g2", passphrase=PASSPHRASE, base_url="http://x")


def test_ra_certificate_key_usage(ca):
    ku = ca.ra_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    ca_ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_ku.key_cert_sign and ca_ku.crl_sign


def test_issued_certificate_follows_the_template(ca, device_key):
    sans = [x509.DNSName("dev1.example.com"), x509.UniformResourceIdentifier("tag:microsoft.com,2022-09-14:sid:S-1-5-21")]
    policy = IssuancePolicy(CertificateTemplate(validity_days=30, san_types=["dns", "uri"]))
    cert = ca.issue(csr(device_key, "dev1", sans=sans), policy, serial=12345, now=NOW)
    assert cert.serial_number == 12345 and cert.issuer == ca.cert.subject
    assert (cert.not_valid_after_utc - NOW).days == 30
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    assert ext.get_extension_for_class(x509.KeyUsage).critical
    assert list(ext.get_extension_for_class(x509.SubjectAlternativeName).value) == sans
    cdp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == "http://127.0.0.1:8080/crl/default.crl"
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert aia[0].access_location.value == "http://127.0.0.1:8080/ca/default.crt"
    assert ca.issued_by_us(cert)


def test_the_vetted_names_are_what_the_certificate_and_its_row_carry(ca, device_key):
    """issue() and certificate_row() given the policy's verdict (as the SCEP service passes it) make what they
    make when they judge and read the names themselves, for every SAN kind and a multi-attribute subject."""
    from cryptography.hazmat.primitives import serialization
    from ipaddress import ip_address
    from scep_server.ca.inventory import certificate_row

    sans = [x509.DNSName("dev1.example.com"), x509.RFC822Name("dev1@example.com"),
            x509.UniformResourceIdentifier("tag:microsoft.com,2022-09-14:sid:S-1-5-21"),
            x509.IPAddress(ip_address("192.0.2.7"))]
    policy = IssuancePolicy(CertificateTemplate(san_types=["dns", "email", "uri", "ip"], subject="csr",
                                                subject_attributes=["CN", "O", "OU"]))
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name.from_rfc4514_string(
        "CN=dev1+OU=Fleet,O=Example\\, Inc.")).add_extension(x509.SubjectAlternativeName(sans), False).sign(
        device_key, csr(device_key).signature_hash_algorithm)
    vetted = policy.check(request, reserved_names=ca.reserved_names)
    given = ca.issue(request, policy, serial=7, now=NOW, vetted=vetted)
    judged = ca.issue(request, policy, serial=7, now=NOW)
    assert given.tbs_certificate_bytes == judged.tbs_certificate_bytes
    der = given.public_bytes(serialization.Encoding.DER)
    row = certificate_row(given, der, ca.name, "p", "tx", "pub", NOW, names=vetted)
    assert row == certificate_row(given, der, ca.name, "p", "tx", "pub", NOW)
    assert row["subject"] == "CN=dev1+OU=Fleet,O=Example\\, Inc."


def test_policy_refuses_weak_or_unexpected_requests(ca):
    policy = IssuancePolicy(CertificateTemplate(san_types=["dns"]))
    with pytest.raises(PolicyViolation, match="below the minimum"):
        policy.check(csr(rsa_key(1024)))
    with pytest.raises(PolicyViolation, match="not allowed"):
        policy.check(csr(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(PolicyViolation, match="not allowed by the profile"):
        policy.check(csr(rsa_key(), sans=[x509.RFC822Name("a@example.com")]))


def test_openssl_verifies_and_pkilint_accepts(ca, device_key, tmp_path):
    openssl = require_tool("openssl")
    lint = require_tool(str(Path(sys.executable).parent / "lint_pkix_cert"))
    cert = ca.issue(csr(device_key, "dev2"), IssuancePolicy(CertificateTemplate()), serial=random_serial(), now=NOW)
    (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
    (tmp_path / "ra.pem").write_bytes(pem(ca.ra_cert))
    (tmp_path / "dev.pem").write_bytes(pem(cert))
    for leaf in ("ra.pem", "dev.pem"):
        out = subprocess.run([openssl, "verify", "-CAfile", tmp_path / "ca.pem", tmp_path / leaf],
                             capture_output=True, text=True)
        assert out.returncode == 0 and ": OK" in out.stdout, out.stdout + out.stderr
    for f in ("ca.pem", "ra.pem", "dev.pem"):
        out = subprocess.run([lint, "lint", "-s", "WARNING", tmp_path / f], capture_output=True, text=True)
        assert out.returncode == 0, f"{f}: {out.stdout}{out.stderr}"
