"""End to end: a device certificate of a registered customer CA whose CDP URI is not a parsable URL is refused by
POST /api/v1/attestation/verify, not a 500."""
from cryptography.hazmat.primitives import serialization

from tests.binding.conftest import api, clock, server, sign  # noqa: F401 - fixtures

from tests.crl.customer_ca import Ca


async def test_attestation_with_unparsable_cdp_is_not_a_500(server, api):
    ca = Ca("Broken CDP HTTP CA", slot=3, cdp="http://cdp.example/root.crl")
    pem = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
    await api.post("/api/v1/external-cas", {"name": "broken", "certificate": pem, "policy": "fail-closed"},
                   admin=True, expect=201)
    leaf = ca.leaf(0x4242, cdps=("http://[bad-host/x.crl",))
    await api.add_device("dev-1")
    nonce = await api.nonce("dev-1")
    async with api.session.post(api.url + "/api/v1/attestation/verify", json={
            "device_id": "dev-1", "nonce": nonce, "certificate": leaf.public_bytes(serialization.Encoding.PEM).decode(),
            "signature": sign(ca.leaf_key, nonce, "dev-1", "ecdsa-sha256"), "algorithm": "ecdsa-sha256"},
            headers=api.signin) as resp:
        body = await resp.text()
        assert resp.status < 500, (resp.status, body[:300])
