"""First sight of a customer CA certificate's CDP during an attestation: the checker's background schedule, woken
by the new URL, may start its fetch first; the attestation's own first fetch waits for that one's outcome and
judges the certificate on the CRL, not on its absence (fail-open: a listed certificate is not managed;
fail-closed: a good one is)."""
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.binding.conftest import api, clock, server  # noqa: F401 - fixtures
from tests.binding.test_external_expired_ca import serve_crl
from tests.crl.customer_ca import Ca
from tests.server import free_port


@pytest.mark.parametrize("policy,revoked", [("fail-open", True), ("fail-closed", False)])
async def test_first_attestation_is_judged_on_the_crl(server, api, aiohttp_server, policy, revoked):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    cdp = f"http://127.0.0.1:{free_port()}/c.crl"
    ca = Ca(f"Race CA {policy}", slot=12, cdp=cdp)
    leaf = ca.leaf(0x5151, cdps=(cdp,))
    crl = ca.crl(this_update=now - timedelta(hours=1), next_update=now + timedelta(days=1),
                 revoked=[(0x5151, x509.ReasonFlags.key_compromise)] if revoked else ())
    await serve_crl(aiohttp_server, cdp, crl)
    await api.post("/api/v1/external-cas", {"name": "race", "certificate": ca.cert.public_bytes(
        serialization.Encoding.PEM).decode(), "policy": policy}, admin=True, expect=201)
    await api.add_device("dev-1")
    res = await api.attest("dev-1", leaf.public_bytes(serialization.Encoding.PEM), ca.leaf_key,
                           algorithm="ecdsa-sha256")
    expected = ("certificate_revoked" if revoked else "managed")
    assert res["reason"] == expected, (f"first attestation not judged on the CDP's CRL: {res['reason']} "
                                       f"managed={res['managed']} crl={res.get('crl')}")
