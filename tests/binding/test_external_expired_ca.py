"""End to end: a device whose certificate was issued by a registered customer CA after that CA's certificate
expired is not managed (POST /api/v1/attestation/verify)."""
from datetime import datetime, timedelta, timezone

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from tests.binding.conftest import api, clock, server, sign  # noqa: F401 - fixtures
from tests.crl.customer_ca import Ca
from tests.server import free_port


async def test_certificate_of_expired_customer_ca_is_not_managed(server, api, aiohttp_server):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    cdp = f"http://127.0.0.1:{free_port()}/c.crl"
    ca = Ca("Expired Customer CA", slot=11, cdp=cdp, not_after=now - timedelta(days=30))
    leaf = ca.leaf(0x5150, cdps=(cdp,))
    crl = ca.crl(this_update=now - timedelta(hours=1), next_update=now + timedelta(days=1))
    await serve_crl(aiohttp_server, cdp, crl)

    await api.post("/api/v1/external-cas", {"name": "expired", "certificate": ca.cert.public_bytes(
        serialization.Encoding.PEM).decode(), "policy": "fail-closed"}, admin=True, expect=201)
    await api.add_device("dev-1")
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    await api.attest("dev-1", pem, ca.leaf_key, algorithm="ecdsa-sha256")  # first sight: its CDP is watched
    await server.runtime.binding.external.checker.refresh("expired")
    res = await api.attest("dev-1", pem, ca.leaf_key, algorithm="ecdsa-sha256")
    assert not res["managed"], (f"managed via a CA certificate expired at {ca.cert.not_valid_after_utc}: "
                                f"{res['reason']} crl={res.get('crl')}")
    assert res["reason"] == "issuer_not_trusted"


async def serve_crl(aiohttp_server, url: str, crl: bytes) -> None:
    """Serve `crl` at `url` (http://127.0.0.1:<port>/<name>)."""
    host_port, path = url.removeprefix("http://").split("/", 1)

    async def handle(request):
        return web.Response(body=crl, content_type="application/pkix-crl")

    app = web.Application()
    app.router.add_get("/" + path, handle)
    await aiohttp_server(app, host="127.0.0.1", port=int(host_port.split(":")[1]))


async def _registered(api, aiohttp_server, now, name: str, serial: int, cn: str, **validity):
    """A customer CA registered fail-closed with a fresh CRL served at its CDP, device dev-1, and the PEM of a
    certificate of the CA for it."""
    cdp = f"http://127.0.0.1:{free_port()}/c.crl"
    ca = Ca(cn, cdp=cdp, **validity)
    await serve_crl(aiohttp_server, cdp, ca.crl(this_update=now - timedelta(hours=1),
                                                next_update=now + timedelta(days=7)))
    await api.post("/api/v1/external-cas", {"name": name, "certificate": ca.cert.public_bytes(
        serialization.Encoding.PEM).decode(), "policy": "fail-closed"}, admin=True, expect=201)
    await api.add_device("dev-1")
    return ca, ca.leaf(serial, cdps=(cdp,)).public_bytes(serialization.Encoding.PEM)


async def test_a_bound_device_is_no_longer_managed_once_its_customer_ca_certificate_expires(server, api, clock,
                                                                                          aiohttp_server):
    """The CA's validity is judged at every attestation, not only at the certificate's first sight: a device whose
    certificate is cached (and bound) stops being managed when the CA certificate expires, its CRL still fresh."""
    now = clock.now = datetime.now(timezone.utc).replace(microsecond=0)
    ca, pem = await _registered(api, aiohttp_server, now, "expiring", 0x5152, "Expiring Customer CA", slot=13,
                                not_after=now + timedelta(days=1))
    assert (await api.attest("dev-1", pem, ca.leaf_key, algorithm="ecdsa-sha256"))["reason"] == "managed"

    clock.advance(timedelta(days=2))
    res = await api.attest("dev-1", pem, ca.leaf_key, algorithm="ecdsa-sha256")
    assert not res["managed"] and res["reason"] == "issuer_not_trusted", (
        f"cached certificate of a CA expired at {ca.cert.not_valid_after_utc}: {res['reason']} crl={res.get('crl')}")
    server.runtime.binding.attestation._cache.clear()  # first sight again
    res = await api.attest("dev-1", pem, ca.leaf_key, algorithm="ecdsa-sha256")
    assert not res["managed"] and res["reason"] == "issuer_not_trusted", res


async def test_certificate_of_a_customer_ca_not_yet_valid_is_not_managed(server, api, clock, aiohttp_server):
    now = clock.now = datetime.now(timezone.utc).replace(microsecond=0)
    ca, pem = await _registered(api, aiohttp_server, now, "future", 0x5153, "Future Customer CA", slot=14,
                                not_before=now + timedelta(days=30))
    res = await api.attest("dev-1", pem, ca.leaf_key, algorithm="ecdsa-sha256")
    assert not res["managed"] and res["reason"] == "issuer_not_trusted", (
        f"managed via a CA certificate valid only from {ca.cert.not_valid_before_utc}: {res['reason']}")
