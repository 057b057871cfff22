"""First sight of a customer CA certificate's CDP during an attestation: the checker's background schedule, woken
by the new URL, may start its fetch first; the attestation's own first fetch waits for that one's outcome and
judges the certificate on the CRL, not on its absence (fail-open: a listed certificate is not managed;
fail-closed: a good one is)."""
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.binding.conftest import api, clock, server  # noqa: F401 - fixtures
from tests.server import free_port

UTC = timezone.utc


@pytest.mark.parametrize("policy,revoked", [("fail-open", True), ("fail-closed", False)])
async def test_first_attestation_is_judged_on_the_crl(server, api, aiohttp_server, policy, revoked):
    now = datetime.now(UTC).replace(microsecond=0)
    port = free_port()
    cdp = f"http://127.0.0.1:{port}/c.crl"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Race CA {policy}")])
    dp = x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(cdp)], None, None, None)])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(days=10)).not_valid_after(now + timedelta(days=300))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .add_extension(dp, critical=False).sign(ca_key, hashes.SHA256()))
    dev_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
            .issuer_name(name).public_key(dev_key.public_key()).serial_number(0x5151)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(dp, critical=False).sign(ca_key, hashes.SHA256()))
    b = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now - timedelta(hours=1))
         .next_update(now + timedelta(days=1)).add_extension(x509.CRLNumber(1), critical=False))
    if revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(0x5151)
                                      .revocation_date(now - timedelta(hours=1))
                                      .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), False).build())
    crl = b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    async def handle(request):
        return web.Response(body=crl, content_type="application/pkix-crl")

    app = web.Application()
    app.router.add_get("/c.crl", handle)
    await aiohttp_server(app, host="127.0.0.1", port=port)
    await api.post("/api/v1/external-cas", {"name": "race", "certificate": ca.public_bytes(
        serialization.Encoding.PEM).decode(), "policy": policy}, admin=True, expect=201)
    await api.add_device("dev-1")
    res = await api.attest("dev-1", leaf.public_bytes(serialization.Encoding.PEM), dev_key, algorithm="ecdsa-sha256")
    expected = ("certificate_revoked" if revoked else "managed")
    assert res["reason"] == expected, (f"first attestation not judged on the CDP's CRL: {res['reason']} "
                                       f"managed={res['managed']} crl={res.get('crl')}")
