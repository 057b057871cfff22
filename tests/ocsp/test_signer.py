"""The delegated OCSP signer: issued on first start, renewed before expiry, adopted by another process."""
from __future__ import annotations

import os
from datetime import timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from crl.config import OcspSettings
from scep_server.ocspwiring.signer import CERT_FILE, KEY_FILE, DelegatedSigner
from tests.factories import NOW, PASSPHRASE, make_ca


def test_issued_renewed_and_adopted(tmp_path):
    directory = tmp_path / "ca"
    ca = make_ca(directory)
    settings = OcspSettings(signer_validity=timedelta(days=7), signer_renew_before=timedelta(days=2))
    first = DelegatedSigner(ca, directory, PASSPHRASE, settings)
    assert first.refresh(NOW) is True  # issued
    assert (directory / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in (directory / KEY_FILE).read_bytes()
    cert = first.cert
    assert cert is not None
    cert.verify_directly_issued_by(ca.cert)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING]
    assert cert.not_valid_after_utc - NOW <= timedelta(days=7)

    other = DelegatedSigner(ca, directory, PASSPHRASE, settings)
    assert other.refresh(NOW) is False  # loaded, not issued again
    assert other.cert == cert
    assert first.refresh(NOW + timedelta(days=4)) is False  # not due yet

    later = NOW + timedelta(days=5, hours=1)  # less than two days left: renewed
    assert first.refresh(later) is True
    assert first.cert != cert and first.cert.not_valid_after_utc > later + timedelta(days=6)
    os.utime(directory / CERT_FILE)  # another process sees the files change and loads the new signer
    assert other.refresh(later) is False
    assert other.cert == first.cert


def test_a_foreign_or_mismatched_signer_file_is_replaced(tmp_path):
    directory = tmp_path / "ca"
    ca = make_ca(directory)
    settings = OcspSettings()
    signer = DelegatedSigner(ca, directory, PASSPHRASE, settings)
    signer.refresh(NOW)
    stranger = make_ca(tmp_path / "other")
    (directory / CERT_FILE).write_bytes((tmp_path / "other" / "ca.crt").read_bytes())  # not the key's certificate
    fresh = DelegatedSigner(ca, directory, PASSPHRASE, settings)
    assert fresh.refresh(NOW) is True
    assert fresh.cert.issuer == ca.cert.subject
    del stranger


async def test_readiness_fails_with_an_expired_signer_until_it_is_renewed(aiohttp_server, tmp_path, db_url):
    import aiohttp
    from cryptography.x509 import ocsp

    from trustkit.clock import SettableClock
    from tests.server import start_app

    from .conftest import post, request_der

    clock = SettableClock()
    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock)
    service = srv.runtime.ocsp
    first = service.delegated["default"].cert
    assert service.readiness() == "ok"
    clock.advance(days=8)  # the signer's certificate has expired and its renewal check has not run yet
    assert "expired" in service.readiness()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{srv.url}/readyz") as resp:
            assert resp.status == 503 and (await resp.json())["checks"]["ocsp"] == "failed"
    assert await service.refresh_signers() == ["default"]
    assert service.readiness() == "ok"
    renewed = service.delegated["default"].cert
    assert renewed.serial_number != first.serial_number and renewed.not_valid_after_utc > clock()
    # answers are signed by the new certificate (the cache was emptied when the signer changed)
    answer = ocsp.load_der_ocsp_response((await post(srv.url, request_der(first, srv.runtime.cas["default"].cert)))[1])
    assert answer.certificates[0].serial_number == renewed.serial_number
