"""Serving CRLs over HTTP: DER and PEM, HEAD, validators and 304, cache lifetimes bounded by nextUpdate."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime

import pytest
from aiohttp import web
from cryptography import x509

from crl.build import Issuer, build_crl
from crl.config import CrlSettings
from crl.publish import PublishedCrl
from crl.signing import CrlSigner
from crl.web import add_routes, last_modified_of
from tests.crl.pki import make_ca
from trustkit.clock import SettableClock

UTC = timezone.utc
T0 = datetime(2026, 11, 23, 10, tzinfo=UTC)


class Holder:
    """Serves whatever CRL it is given (a Publisher's `current`)."""

    def __init__(self, crl=None) -> None:
        self.current = crl


def make_crl(number: int, this_update: datetime = T0, validity: timedelta = timedelta(days=7), entries=()):
    ca = make_ca(kind="ec")
    der = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=number,
                    this_update=this_update, next_update=this_update + validity, entries=list(entries))
    return PublishedCrl.from_der("default", der)


@pytest.fixture
def served():
    holder = Holder(make_crl(5, entries=[(9, T0 - timedelta(days=1), 1, None)]))
    clock = SettableClock(T0 + timedelta(hours=1))
    app = web.Application()
    add_routes(app, {"default": holder, "unpublished": Holder()}, settings=CrlSettings(http_max_age=600),
               clock=lambda: clock().timestamp())
    return app, holder, clock


async def test_der_with_validators_and_bounded_cache_lifetime(aiohttp_client, served):
    app, holder, clock = served
    client = await aiohttp_client(app)
    resp = await client.get("/crl/default.crl")
    assert resp.status == 200
    body = await resp.read()
    assert body == holder.current.der
    assert resp.headers["Content-Type"] == "application/pkix-crl"
    assert resp.headers["ETag"] == holder.current.etag
    assert parsedate_to_datetime(resp.headers["Last-Modified"]) == T0
    assert resp.headers["Cache-Control"] == "public, max-age=600, no-transform"
    assert parsedate_to_datetime(resp.headers["Expires"]) == T0 + timedelta(hours=1, seconds=600)
    assert int(resp.headers["Content-Length"]) == len(holder.current.der)
    assert x509.load_der_x509_crl(body).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 5


async def test_head_has_the_headers_and_no_body(aiohttp_client, served):
    app, holder, _ = served
    client = await aiohttp_client(app)
    resp = await client.head("/crl/default.crl")
    assert resp.status == 200
    assert await resp.read() == b""
    assert int(resp.headers["Content-Length"]) == len(holder.current.der)
    assert resp.headers["ETag"] == holder.current.etag


async def test_conditional_requests(aiohttp_client, served):
    app, holder, _ = served
    client = await aiohttp_client(app)
    etag = holder.current.etag
    for inm in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        resp = await client.get("/crl/default.crl", headers={"If-None-Match": inm})
        assert resp.status == 304, inm
        assert await resp.read() == b""
        assert resp.headers["ETag"] == etag and "Cache-Control" in resp.headers and "Expires" in resp.headers
    resp = await client.get("/crl/default.crl", headers={"If-None-Match": '"stale"'})
    assert resp.status == 200
    # If-None-Match decides over If-Modified-Since (RFC 9110 §13.2.2)
    resp = await client.get("/crl/default.crl", headers={"If-None-Match": '"stale"',
                                                         "If-Modified-Since": format_datetime(T0, usegmt=True)})
    assert resp.status == 200
    for since, status in ((T0, 304), (T0 + timedelta(days=1), 304), (T0 - timedelta(seconds=1), 200)):
        resp = await client.get("/crl/default.crl", headers={"If-Modified-Since": format_datetime(since, usegmt=True)})
        assert resp.status == status, since
    for unreadable in ("yesterday-ish", "Thu, 01 Jan 99999999999999999999 00:00:00 GMT"):
        resp = await client.get("/crl/default.crl", headers={"If-Modified-Since": unreadable})
        assert resp.status == 200, unreadable
    resp = await client.head("/crl/default.crl", headers={"If-None-Match": etag})
    assert resp.status == 304


async def test_pem_is_its_own_representation(aiohttp_client, served):
    app, holder, _ = served
    client = await aiohttp_client(app)
    assert (await client.get("/crl/default.crl")).status == 200
    assert "pem" not in vars(holder.current)  # the PEM text is made when first asked for, not held for every CRL
    resp = await client.get("/crl/default.pem")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-pem-file"
    body = await resp.read()
    assert x509.load_pem_x509_crl(body).tbs_certlist_bytes == x509.load_der_x509_crl(holder.current.der).tbs_certlist_bytes
    pem_etag = resp.headers["ETag"]
    assert pem_etag != holder.current.etag
    assert (await client.get("/crl/default.pem", headers={"If-None-Match": pem_etag})).status == 304
    assert (await client.get("/crl/default.pem", headers={"If-None-Match": holder.current.etag})).status == 200


async def test_unknown_and_unpublished(aiohttp_client, served):
    app, _, _ = served
    client = await aiohttp_client(app)
    resp = await client.get("/crl/nope.crl")
    assert resp.status == 404 and "nope" in await resp.text()
    resp = await client.get("/crl/default.der")
    assert resp.status == 404 and ".crl" in await resp.text()
    resp = await client.get("/crl/unpublished.crl")
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert "not published yet" in await resp.text()
    resp = await client.post("/crl/default.crl")
    assert resp.status == 405


async def test_cache_lifetime_counts_down_to_next_update(aiohttp_client, served):
    app, holder, clock = served
    client = await aiohttp_client(app)
    next_update = holder.current.next_update
    clock.set(next_update - timedelta(seconds=90))
    resp = await client.get("/crl/default.crl")
    assert resp.headers["Cache-Control"] == "public, max-age=90, no-transform"
    assert parsedate_to_datetime(resp.headers["Expires"]) == next_update
    clock.set(next_update + timedelta(seconds=1))
    resp = await client.get("/crl/default.crl")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-cache"
    assert parsedate_to_datetime(resp.headers["Expires"]) <= next_update + timedelta(seconds=1)


async def test_a_new_crl_is_served_at_once(aiohttp_client, served):
    app, holder, _ = served
    client = await aiohttp_client(app)
    old_etag = holder.current.etag
    assert (await client.get("/crl/default.crl")).status == 200
    holder.current = make_crl(6, this_update=T0 + timedelta(minutes=30))
    resp = await client.get("/crl/default.crl", headers={"If-None-Match": old_etag})
    assert resp.status == 200 and resp.headers["ETag"] == holder.current.etag != old_etag
    assert await resp.read() == holder.current.der
    assert resp.headers["Last-Modified"] == last_modified_of(T0 + timedelta(minutes=30))


async def test_a_ca_added_after_mounting_is_served_too(aiohttp_client):
    publishers = {"default": Holder(make_crl(1))}
    app = web.Application()
    add_routes(app, publishers)
    client = await aiohttp_client(app)
    assert (await client.get("/crl/later.crl")).status == 404
    publishers["later"] = Holder(make_crl(2))
    resp = await client.get("/crl/later.crl")
    assert resp.status == 200 and await resp.read() == publishers["later"].current.der
    resp = await client.head("/crl/later.pem")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-pem-file"
