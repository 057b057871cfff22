"""A CDP that goes on serving a CRL past its nextUpdate (the CA stopped publishing, or a hostile server replays it,
with a 304 or the same bytes) is fetched again after crl.checker.retry_interval, as after a failure, not every
second: a stale copy costs no more than an unreachable server."""
from __future__ import annotations

import asyncio
from datetime import timedelta

from aiohttp import web

from crl.check import CrlChecker
from crl.config import CheckerSettings
from tests.crl.customer_ca import T0, Ca
from tests.crl.test_check import LOOPBACK, free_port
from trustkit.clock import SettableClock


async def test_a_stale_crl_served_again_is_not_fetched_every_second(aiohttp_server):
    ca = Ca("Stale Replay CA", slot=24)
    body = ca.crl(number=1, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(hours=1))
    hits: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(asyncio.get_running_loop().time())
        return web.Response(body=body, content_type="application/pkix-crl")  # no validators: the same bytes again

    app = web.Application()
    app.router.add_get("/a.crl", handle)
    port = free_port()
    await aiohttp_server(app, port=port)
    url = f"http://127.0.0.1:{port}/a.crl"
    clock = SettableClock(T0)
    c = CrlChecker(settings=CheckerSettings(allow_networks=LOOPBACK, retry_interval=timedelta(minutes=5)),
                   clock=clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False, crl_urls=[url])
    try:
        assert (await c.refresh("cust"))[0].ok
        await c.start()  # the schedule: the next fetch is due half-way to nextUpdate
        await asyncio.sleep(0.3)
        clock.advance(hours=2)  # past nextUpdate; the CDP still serves the same CRL
        assert (await c.refresh("cust"))[0].ok
        hits.clear()
        await asyncio.sleep(3.5)
        assert len(hits) <= 1, f"{len(hits)} fetches of a stale CRL in 3.5 s"
    finally:
        await c.stop()
