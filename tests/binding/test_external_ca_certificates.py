"""A customer's CA certificate presented for attestation is judged on the CRLs that cover CA certificates: revoked
on the customer's ARL (onlyContainsCACerts), it is not managed, though its CDP also names the users' CRL
(onlyContainsUserCerts), which does not list it."""
from __future__ import annotations

import base64
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crl.build import Issuer, Scope, build_crl
from crl.check import CheckStatus
from crl.config import Policy
from crl.signing import CrlSigner
from scep_server.binding.attestation import signed_bytes
from tests.binding.conftest import api, clock, server  # noqa: F401 - fixtures
from tests.crl.pki import NOW, key, make_ca

USER_URL = "http://127.0.0.1:9/crl/users.crl"
ARL_URL = "http://127.0.0.1:9/crl/cas.crl"


def sub_ca_cert(ca, serial):
    leaf_key = key("ec", 9)
    cdp = x509.CRLDistributionPoints([x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(USER_URL), x509.UniformResourceIdentifier(ARL_URL)],
        relative_name=None, reasons=None, crl_issuer=None)])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sub")]))
            .issuer_name(ca.cert.subject).public_key(leaf_key.public_key()).serial_number(serial)
            .not_valid_before(NOW - timedelta(hours=1)).not_valid_after(NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .add_extension(cdp, critical=False)
            .sign(ca.key, hashes.SHA256()))
    return cert, leaf_key


def crl(ca, entries, number, scope):
    return build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key),
                     number=number, this_update=NOW, next_update=NOW + timedelta(days=7),
                     entries=[(s, NOW - timedelta(hours=1), 1, None) for s in entries], scope=scope)


async def test_a_revoked_customer_ca_certificate_is_not_managed(server, api, clock):
    clock.now = NOW + timedelta(minutes=5)
    ca = make_ca("IsCa Customer CA", kind="ec", slot=5, cdp="http://127.0.0.1:9/crl/root.crl")
    ext = server.runtime.binding.external
    await ext.add("cust", ca.cert, policy=Policy.FAIL_CLOSED, actor="test", now=clock())
    await ext.reload()
    checker = ext.checker
    # the customer's user-certificates CRL lists nothing; its ARL lists the sub-CA (serial 0x5151), revoked
    assert (await checker.install("cust", USER_URL, crl(ca, [], 1, Scope((USER_URL,), only_user_certs=True)))).ok
    assert (await checker.install("cust", ARL_URL, crl(ca, [0x5151], 1, Scope((ARL_URL,), only_ca_certs=True)))).ok
    cert, k = sub_ca_cert(ca, 0x5151)
    assert checker.check(cert).status is CheckStatus.REVOKED  # the checker itself knows it is revoked

    await api.add_device("dev-1")
    nonce = await api.nonce("dev-1")
    sig = base64.b64encode(k.sign(signed_bytes(nonce, "dev-1"), ec.ECDSA(hashes.SHA256()))).decode()
    res = await api.post("/api/v1/attestation/verify", {
        "device_id": "dev-1", "nonce": nonce,
        "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "signature": sig, "algorithm": "ecdsa-sha256"})
    assert res["managed"] is False and res["crl"]["status"] == "revoked", res
