"""End to end: a device whose certificate was issued by a registered customer CA after that CA's certificate
expired is not managed (POST /api/v1/attestation/verify)."""
from datetime import datetime, timedelta, timezone

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.binding.conftest import api, clock, server, sign  # noqa: F401 - fixtures
from tests.server import free_port

UTC = timezone.utc


async def test_certificate_of_expired_customer_ca_is_not_managed(server, api, aiohttp_server):
    now = datetime.now(UTC).replace(microsecond=0)
    port = free_port()
    cdp = f"http://127.0.0.1:{port}/c.crl"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Expired Customer CA")])
    dp = x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(cdp)], None, None, None)])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(days=400)).not_valid_after(now - timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .add_extension(dp, critical=False).sign(ca_key, hashes.SHA256()))
    dev_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
            .issuer_name(name).public_key(dev_key.public_key()).serial_number(0x5150)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(dp, critical=False).sign(ca_key, hashes.SHA256()))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now - timedelta(hours=1))
           .next_update(now + timedelta(days=1)).add_extension(x509.CRLNumber(1), critical=False)
           .sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))

    async def handle(request):
        return web.Response(body=crl, content_type="application/pkix-crl")

    app = web.Application()
    app.router.add_get("/c.crl", handle)
    await aiohttp_server(app, host="127.0.0.1", port=port)

    await api.post("/api/v1/external-cas", {"name": "expired", "certificate": ca.public_bytes(
        serialization.Encoding.PEM).decode(), "policy": "fail-closed"}, admin=True, expect=201)
    await api.add_device("dev-1")
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    await api.attest("dev-1", pem, dev_key, algorithm="ecdsa-sha256")  # first sight: its CDP is watched
    await server.runtime.binding.external.checker.refresh("expired")
    res = await api.attest("dev-1", pem, dev_key, algorithm="ecdsa-sha256")
    assert not res["managed"], (f"managed via a CA certificate expired at {ca.not_valid_after_utc}: "
                                f"{res['reason']} crl={res.get('crl')}")
