"""What a relying party sees on our CRL (`openssl verify -crl_check`) as the device lifecycle changes."""
from __future__ import annotations

import asyncio
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.server import run

from .conftest import enrol

pytestmark = pytest.mark.interop


async def _crl_listing(api, serial: int, present: bool, timeout: float = 10) -> bytes:
    """Fetch /crl/default.crl until `serial` is (or is not) on it."""
    deadline = time.monotonic() + timeout
    while True:
        async with api.session.get(api.url + "/crl/default.crl") as resp:
            assert resp.status == 200 and resp.content_type == "application/pkix-crl"
            der = await resp.read()
        listed = x509.load_der_x509_crl(der).get_revoked_certificate_by_serial_number(serial) is not None
        if listed == present:
            return der
        assert time.monotonic() < deadline, f"serial {serial:x} {'not ' if present else ''}on the CRL in {timeout}s"
        await asyncio.sleep(0.05)


async def _openssl_verify(openssl, server, crl_der: bytes, cert_pem: bytes, tmp) -> tuple[int, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "crl.pem").write_bytes(x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM))
    (tmp / "leaf.pem").write_bytes(cert_pem)
    rc, out, err = await run(openssl, "verify", "-crl_check", "-CAfile", str(server.data_dir / "ca/default/ca.crt"),
                             "-CRLfile", str(tmp / "crl.pem"), str(tmp / "leaf.pem"))
    return rc, out + err


async def test_deactivate_reactivate_delete_seen_by_openssl(server, api, scepclient, openssl, tmp_path):
    dev = await enrol(scepclient, server.url, server.challenge(), tmp_path / "dev", "laptop-rp")
    await api.add_device("laptop-rp")
    assert (await api.attest("laptop-rp", dev.cert_pem, dev.key))["managed"]
    serial = dev.cert.serial_number

    crl = await _crl_listing(api, serial, present=False)
    rc, out = await _openssl_verify(openssl, server, crl, dev.cert_pem, tmp_path / "v0")
    assert rc == 0 and "OK" in out, out

    await api.action("laptop-rp", "deactivate")
    crl = await _crl_listing(api, serial, present=True)
    entry = x509.load_der_x509_crl(crl).get_revoked_certificate_by_serial_number(serial)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.certificate_hold
    rc, out = await _openssl_verify(openssl, server, crl, dev.cert_pem, tmp_path / "v1")
    assert rc != 0 and "certificate revoked" in out, out

    await api.action("laptop-rp", "reactivate")
    crl = await _crl_listing(api, serial, present=False)
    rc, out = await _openssl_verify(openssl, server, crl, dev.cert_pem, tmp_path / "v2")
    assert rc == 0 and "OK" in out, out
    assert (await api.attest("laptop-rp", dev.cert_pem, dev.key))["managed"]

    await api.action("laptop-rp", "delete")
    crl = await _crl_listing(api, serial, present=True)
    entry = x509.load_der_x509_crl(crl).get_revoked_certificate_by_serial_number(serial)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is \
        x509.ReasonFlags.cessation_of_operation
    rc, out = await _openssl_verify(openssl, server, crl, dev.cert_pem, tmp_path / "v3")
    assert rc != 0 and "certificate revoked" in out, out
