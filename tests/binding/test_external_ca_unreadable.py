"""A CA certificate offered for registration as a customer's CA whose version, extensions or name cannot be read (an
unknown X.509 version, an extension twice, a general name of a kind the library does not read in its CRL
Distribution Points, a BIT STRING common name) is refused with a 4xx by the API and a one-line error by `ca add-external`, never a 500 or a traceback."""
from __future__ import annotations

import base64
import sys
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from tests.binding.conftest import api, clock, server  # noqa: F401 - fixtures
from tests.crl.customer_ca import Ca, T0
from tests.crl.test_check_bad_cdp import _resign_with_duplicate_extension
from tests.server import run

KINDS = ["an extension twice", "an x400Address CDP", "a BIT STRING common name", "an unknown X.509 version"]


def hostile_ca(kind: str) -> bytes:
    ca = Ca("Hostile Customer CA", slot=31, cdp="http://cdp.example/hostile.crl")
    if kind == "an extension twice":
        return _resign_with_duplicate_extension(ca, ca.cert).public_bytes(serialization.Encoding.DER)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca.key.public_key())
         .serial_number(0x31).not_valid_before(T0 - timedelta(days=1)).not_valid_after(T0 + timedelta(days=365))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True))
    if kind == "an x400Address CDP":
        b = b.add_extension(x509.UnrecognizedExtension(ExtensionOID.CRL_DISTRIBUTION_POINTS,
                                                       bytes.fromhex("30083006a004a002a300")), critical=False)
    else:
        b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier("http://cdp.example/hostile.crl")], relative_name=None,
            reasons=None, crl_issuer=None)]), critical=False)
    der = b.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    if kind == "a BIT STRING common name":  # UTF8String "hostile" -> a BIT STRING of the same length (signature
        der = der.replace(bytes.fromhex("0c07") + b"hostile", bytes.fromhex("030700") + b"ostile")  # moot here)
    if kind == "an unknown X.509 version":  # [0] INTEGER 2 (v3) -> 43
        der = der.replace(bytes.fromhex("a003020102"), bytes.fromhex("a00302012b"), 1)
    return der


@pytest.mark.parametrize("kind", KINDS)
async def test_the_api_refuses_an_unreadable_ca_certificate(server, api, kind):
    pem = "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(hostile_ca(kind)).decode() + "-----END CERTIFICATE-----\n"
    res = await api.post("/api/v1/external-cas", {"name": "hostile", "certificate": pem}, admin=True, expect=None)
    status = res.get("status") if isinstance(res, dict) else None
    assert status is not None and 400 <= status < 500, res
    assert server.runtime.binding.external.checker.status() == []
    assert await server.runtime.binding.external.list() == []


@pytest.mark.parametrize("kind", KINDS)
async def test_add_external_refuses_an_unreadable_ca_certificate_in_one_line(server, tmp_path, kind):
    path = tmp_path / "ca.der"
    path.write_bytes(hostile_ca(kind))
    rc, out, err = await run(sys.executable, "-m", "scep_server.cli", "--data-dir", str(server.data_dir),
                             "ca", "add-external", "hostile", "--cert", str(path))
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (out, err)
