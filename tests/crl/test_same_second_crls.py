"""Two CRLs of one scope signed within one second carry one thisUpdate, so one Last-Modified: a relying party
that revalidates with If-Modified-Since only, holding the first, is answered with the second, never a 304 that
would hide its revocations until the next re-sign (in the process that signed it and in one that adopted it)."""
from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from crl.web import add_routes
from tests.crl.test_publish import make_publisher


def serving(pub, clock) -> web.Application:
    app = web.Application()
    add_routes(app, {"default": pub}, clock=lambda: clock.now.timestamp())
    return app


async def test_if_modified_since_never_hides_a_crl_signed_in_the_same_second(
        aiohttp_client, engine, issuer, signer, source, clock):
    signing = make_publisher(engine, issuer, signer, source, clock=clock)
    client = await aiohttp_client(serving(signing, clock))
    await signing.publish_now()
    first = await client.get("/crl/default.crl")
    assert first.status == 200
    held = first.headers["Last-Modified"]

    source.revoke(0x51, clock.now, 1)  # revoked, re-signed within the same second
    second = await signing.publish_now()
    assert second.number == 2 and second.this_update == signing.current.this_update
    assert second.shares_second
    resp = await client.get("/crl/default.crl", headers={"If-Modified-Since": held})
    assert resp.status == 200 and await resp.read() == second.der
    # the ETag still tells the two apart: a client that sends it keeps its 304s
    assert (await client.get("/crl/default.crl", headers={"If-None-Match": second.etag})).status == 304

    # another process adopts the CRL from the database and answers the same
    adopting = make_publisher(engine, issuer, signer, source, clock=clock)
    assert await adopting.refresh_from_store() and adopting.current.number == 2
    other = await aiohttp_client(serving(adopting, clock))
    resp = await other.get("/crl/default.crl", headers={"If-Modified-Since": held})
    assert resp.status == 200 and await resp.read() == second.der

    # the next CRL, a second later, is told apart by its date again
    clock.advance(1)
    third = await signing.publish_now()
    assert not third.shares_second
    resp = await client.get("/crl/default.crl")
    assert resp.status == 200
    assert (await client.get("/crl/default.crl",
                             headers={"If-Modified-Since": resp.headers["Last-Modified"]})).status == 304
    assert (await client.get("/crl/default.crl", headers={"If-Modified-Since": held})).status == 200
    assert await adopting.refresh_from_store() and not adopting.current.shares_second
