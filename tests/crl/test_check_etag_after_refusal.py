"""A CRL body refused once (here: thisUpdate a little beyond the clock-skew tolerance) is looked at again at the
next fetch: its ETag and Last-Modified are kept only once a copy is accepted, so the next fetch is not a 304 that
leaves the checker on the older CRL, which does not list a newly revoked certificate."""
from datetime import timedelta
import hashlib

from aiohttp import web
from cryptography import x509

from crl.check import CheckStatus, CrlChecker, FailureKind
from crl.config import CheckerSettings
from trustkit.clock import SettableClock

from tests.crl.customer_ca import T0, Ca


async def test_refused_body_is_fetched_again(aiohttp_server):
    state = {"body": b""}

    async def handle(request):
        body = state["body"]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers={"ETag": etag, "Content-Type": "application/pkix-crl"})

    app = web.Application()
    app.router.add_get("/c.crl", handle)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}/c.crl"

    clock = SettableClock(T0)
    ca = Ca("ETag CA")
    c = CrlChecker(settings=CheckerSettings(allow_networks=("127.0.0.1/32",)), clock=clock)
    try:
        c.add_ca(ca.cert, name="cust", crl_urls=[url], require_cdp=False)
        leaf = ca.leaf(0x77, cdps=(url,))
        state["body"] = ca.crl(number=1, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(days=1))
        [o] = await c.refresh()
        assert o.ok and o.changed
        # the CA (its clock 10 minutes ahead) revokes the leaf and publishes CRL 2
        state["body"] = ca.crl(number=2, this_update=T0 + timedelta(minutes=10), next_update=T0 + timedelta(days=1),
                               revoked=[(0x77, x509.ReasonFlags.key_compromise)])
        [o] = await c.refresh()
        assert not o.ok and o.failure is FailureKind.NOT_YET_VALID
        # 15 minutes later CRL 2 is valid by our clock too, and is still what the CDP serves
        clock.advance(timedelta(minutes=15))
        [o] = await c.refresh()
        r = c.check(leaf)
        assert r.status is CheckStatus.REVOKED, (
            f"CRL 2 (valid now, lists the leaf) never taken; outcome={o}, answer={r.status} {r.reason} "
            f"crl_number={r.crl_number}")
    finally:
        await c.stop()
