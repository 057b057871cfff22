"""Customer CAs in attestation. A customer's CA certificate never attests (it is not a device certificate), and the
checker judges it on the CRLs that cover CA certificates: revoked on the customer's ARL (onlyContainsCACerts), though
its CDP also names the users' CRL (onlyContainsUserCerts), which does not list it. A CA registered again under its
name with a new key keeps nothing of the old key's: neither its CRLs nor the certificates whose issuer was
established as it."""
from __future__ import annotations

import base64
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crl.build import Issuer, Scope, build_crl
from crl.check import CheckStatus, FailureKind
from crl.config import Policy
from crl.signing import CrlSigner
from scep_server.binding.attestation import signed_bytes
from tests.binding.conftest import api, clock, server  # noqa: F401 - fixtures
from tests.crl.pki import NOW, issue, key, make_ca

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
    assert res["managed"] is False and res["reason"] == "certificate_not_eligible", res


ACME_URL = "http://127.0.0.1:9/acme.crl"


def acme_crl(ca, entries, number):
    return build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key),
                     number=number, this_update=NOW, next_update=NOW + timedelta(days=7),
                     entries=[(s, NOW - timedelta(hours=1), 1, None) for s in entries])


async def acme_registered(server, clock, *, first_crl_number: int):
    """Customer CA "acme" registered with its old key and that key's CRL installed; the new key's CA, not yet."""
    clock.now = NOW + timedelta(minutes=5)
    old = make_ca("Acme Device CA", kind="ec", slot=6, cdp="http://127.0.0.1:9/root.crl")
    new = make_ca("Acme Device CA", kind="ec", slot=7, cdp="http://127.0.0.1:9/root.crl")
    ext = server.runtime.binding.external
    await ext.add("acme", old.cert, policy=Policy.FAIL_CLOSED, actor="test", now=clock())
    await ext.reload()
    assert (await ext.checker.install("acme", ACME_URL, acme_crl(old, [], first_crl_number))).ok
    return ext, old, new


async def test_a_ca_registered_again_with_a_new_key_keeps_none_of_the_old_keys_crls(server, clock):
    """A customer CA removed and registered again under its name with a new key (after a compromise): the old
    key's CRL no longer answers for it, and the new CA's first CRL is taken (not refused as a rollback)."""
    ext, old, new = await acme_registered(server, clock, first_crl_number=50)

    # another process (the command line) replaces the registration: this process sees both at its next reload
    await ext.remove("acme", actor="cli", now=clock())
    await ext.add("acme", new.cert, policy=Policy.FAIL_CLOSED, actor="cli", now=clock())
    await ext.reload()

    revoked_by_new_ca = issue(new, 0x7777, cdp=ACME_URL)
    outcome = await ext.checker.install("acme", ACME_URL, acme_crl(new, [0x7777], 1))  # the new CA's first CRL
    res = ext.check_serial("acme", revoked_by_new_ca.serial_number, [ACME_URL])
    assert outcome.ok and outcome.failure is not FailureKind.ROLLBACK, outcome  # its number starts again
    assert res.status is CheckStatus.REVOKED, res  # from the new CA's CRL, not the old key's


async def attest(api, device, cert):
    nonce = await api.nonce(device)
    sig = base64.b64encode(key("ec", 9).sign(signed_bytes(nonce, device), ec.ECDSA(hashes.SHA256()))).decode()
    return await api.post("/api/v1/attestation/verify", {
        "device_id": device, "nonce": nonce, "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "signature": sig, "algorithm": "ecdsa-sha256"})


async def test_a_certificate_of_a_replaced_ca_key_no_longer_attests(server, api, clock):
    """A device certificate that attested under a customer CA is judged again once that CA is removed and its name
    given to a new key: signed by the retired key, it is issued by no registered CA."""
    ext, old, new = await acme_registered(server, clock, first_crl_number=1)
    old_cert = issue(old, 0x4242, cdp=ACME_URL)
    await api.add_device("dev-1")
    assert (await attest(api, "dev-1", old_cert))["managed"] is True

    # the old key is retired (compromised): the CA is removed and the new CA certificate registered under its name,
    # each step seen by this process (as the API's handlers reload after add and remove)
    await ext.remove("acme", actor="admin", now=clock())
    await ext.reload()
    assert (await attest(api, "dev-1", old_cert))["managed"] is False
    await ext.add("acme", new.cert, policy=Policy.FAIL_CLOSED, actor="admin", now=clock())
    await ext.reload()
    assert (await ext.checker.install("acme", ACME_URL, acme_crl(new, [], 1))).ok

    # a certificate signed by the retired key is not issued by any registered CA
    assert ext.check(old_cert).reason == "not_issued_by_ca"
    res = await attest(api, "dev-1", old_cert)
    assert res["managed"] is False, res
