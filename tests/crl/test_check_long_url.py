"""A customer CA's CRL at a long URL (a CDP URL is the certificate's, of any length) is taken and recorded like any
other: its record is keyed by the URL's SHA-256 (crl_checker_state.url_sha256), not by the URL, which PostgreSQL
could not index beyond about 2.7 KB (the CRL was refused as state_unavailable, and the customer's certificates were
judged without it). It is found again after a restart, and forgetting the CA's records deletes it. A URL longer than
crl.check.MAX_URL_LENGTH is refused saying so. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa
from aiohttp import web
from cryptography import x509

from crl import checkstore
from crl.check import CheckStatus, CrlChecker, FailureKind
from crl.checkstore import CheckerStateStore
from crl.config import CheckerSettings, Policy
from crl.tables import crl_checker_state
from tests.crl.customer_ca import T0, Ca
from trustkit.clock import SettableClock
from trustkit.db import writer

REVOKED = 0x77


def long_url(length: int, host: str = "cdp.example", tag: str = "") -> str:
    """An http URL of exactly `length` characters whose path does not compress (PostgreSQL compresses a long
    index entry before it measures it: a URL of one repeated letter would fit)."""
    head = f"http://{host}/crl/{tag}"
    body, n = "", 0
    while len(head) + len(body) < length:
        body += hashlib.sha256(f"{tag}{n}".encode()).hexdigest()
        n += 1
    return (head + body)[:length - 4] + ".crl"


def url_key(url: str) -> str:
    """The key of a URL's record: its SHA-256 (hex), of its UTF-8."""
    return hashlib.sha256(url.encode()).hexdigest()


def checker(engine, clock, **settings) -> CrlChecker:
    """One server process's checker on the shared database (a new one: the process after a restart)."""
    return CrlChecker(settings=CheckerSettings(policy=Policy.FAIL_CLOSED, **settings), clock=clock,
                      state=CheckerStateStore(engine, clock=clock))


def crls(ca: Ca):
    """#1 lists nothing; #2, an hour later, lists the certificate (revoked for key compromise)."""
    old = ca.crl(number=1, this_update=T0 - timedelta(hours=2), next_update=T0 + timedelta(days=7))
    new = ca.crl(number=2, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(days=7),
                 revoked=[(REVOKED, x509.ReasonFlags.key_compromise)])
    return old, new


async def _records(engine) -> list[tuple[str, str]]:
    """(CA, URL) of every record, each keyed by its URL's SHA-256 and holding the URL whole (for display)."""
    c = crl_checker_state.c
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(c.ca, c.url_sha256, c.url))).all()
    assert all(r.url_sha256 == url_key(r.url) for r in rows)
    return sorted((r.ca, r.url) for r in rows)


@pytest.mark.parametrize("length", [4096, 8192])
async def test_a_crl_at_a_long_url_is_taken_and_its_record_found_after_a_restart(engine, length):
    clock = SettableClock(T0)
    ca = Ca("Long URL CA", slot=41)
    url = long_url(length)
    assert len(url) == length
    leaf = ca.leaf(REVOKED, cdps=(url,))
    old, new = crls(ca)
    before = checker(engine, clock)
    before.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await before.install("cust", url, old)).ok
    outcome = await before.install("cust", url, new)
    assert outcome.ok and outcome.failure is None, outcome  # was state_unavailable on PostgreSQL
    assert before.check(leaf).status is CheckStatus.REVOKED
    assert await _records(engine) == [("cust", url)]

    # a restart: a new store object finds the record, and the older CRL served first is refused
    after = checker(engine, clock)
    after.add_ca(ca.cert, name="cust", require_cdp=False)
    recorded = await CheckerStateStore(engine).last_accepted("cust", after._cas["cust"].issuer_key, url)
    assert recorded is not None and recorded.number == 2
    refused = await after.install("cust", url, old)
    assert refused.failure is FailureKind.ROLLBACK and "recorded" in refused.detail, refused
    assert not after.check(leaf).allowed
    assert (await after.install("cust", url, new)).ok
    assert after.check(leaf).status is CheckStatus.REVOKED


async def test_forgetting_a_ca_deletes_the_records_of_its_long_urls(engine):
    clock = SettableClock(T0)
    ca = Ca("Forget Long CA", slot=42)
    urls = [long_url(4096, tag="a"), long_url(8192, tag="b")]
    other = Ca("Other Long CA", slot=43)
    old, new = crls(ca)
    first = checker(engine, clock)
    first.add_ca(ca.cert, name="cust", require_cdp=False)
    first.add_ca(other.cert, name="other", require_cdp=False)
    for url in urls:
        assert (await first.install("cust", url, new)).ok
    assert (await first.install("other", urls[0], crls(other)[1])).ok
    assert await _records(engine) == sorted([("cust", urls[0]), ("cust", urls[1]), ("other", urls[0])])

    async with writer(engine).begin() as conn:
        assert await checkstore.forget(conn, "cust", now=T0, actor="ops") == 2
    assert await CheckerStateStore(engine).generations() == {"cust": 1}
    assert await _records(engine) == [("other", urls[0])]  # the other CA's record stands
    # the next valid CRL of each URL is taken whatever its age, by a process started afresh
    second = checker(engine, clock)
    second.add_ca(ca.cert, name="cust", require_cdp=False)
    for url in urls:
        assert (await second.install("cust", url, old)).ok
    async with writer(engine).begin() as conn:
        await checkstore.drop(conn, "other")
    assert await _records(engine) == sorted(("cust", u) for u in urls)


@pytest.fixture
async def long_cdp(aiohttp_server):
    """A CDP on loopback that serves `body` at any path (the URL is as long as the test makes it)."""
    served: dict = {"body": b"", "paths": []}

    async def handle(request: web.Request) -> web.Response:
        served["paths"].append(request.path)
        return web.Response(body=served["body"], content_type="application/pkix-crl")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    served["base"] = f"http://127.0.0.1:{server.port}"
    return served


async def test_a_crl_fetched_from_a_long_url_is_recorded(engine, long_cdp):
    clock = SettableClock(T0)
    ca = Ca("Fetched Long CA", slot=44)
    url = long_url(4096, host=long_cdp["base"].removeprefix("http://"))
    leaf = ca.leaf(REVOKED, cdps=(url,))
    long_cdp["body"] = crls(ca)[1]
    c = checker(engine, clock, allow_networks=("127.0.0.1/32",))
    try:
        c.add_ca(ca.cert, name="cust", require_cdp=False)
        outcome, = await c.refresh("cust", url)
        assert outcome.ok, outcome
        assert long_cdp["paths"] and len(long_cdp["paths"][0]) > 4000
        assert c.check(leaf).status is CheckStatus.REVOKED
    finally:
        await c.stop()
    assert await _records(engine) == [("cust", url)]


async def test_a_url_beyond_the_cap_is_refused_saying_so(engine):
    from crl.check import MAX_URL_LENGTH

    clock = SettableClock(T0)
    ca = Ca("Overlong URL CA", slot=45)
    too_long = long_url(MAX_URL_LENGTH + 1)
    c = CrlChecker(settings=CheckerSettings(policy=Policy.FAIL_OPEN), clock=clock,
                   state=CheckerStateStore(engine, clock=clock))
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    new = crls(ca)[1]
    for outcome in (await c.install("cust", too_long, new), *(await c.refresh("cust", too_long))):
        assert not outcome.ok and outcome.failure is FailureKind.UNSUPPORTED, outcome
        assert f"{MAX_URL_LENGTH + 1} characters long" in outcome.detail
        assert len(outcome.detail) < 300  # the URL is not repeated whole
    with pytest.raises(ValueError, match="characters long"):
        c.add_ca(ca.cert, name="again", crl_urls=[too_long], require_cdp=False)
    assert c.status() == [] and await _records(engine) == []
    # a certificate naming its CRL only there names no CRL the checker fetches: refused under fail-open too
    r = c.check(ca.leaf(REVOKED, cdps=(too_long,)))
    assert r.reason == "no_http_cdp" and not r.allowed, r
    assert str(MAX_URL_LENGTH) in r.detail
    # beside a URL within the cap, that one answers
    fine = long_url(MAX_URL_LENGTH)
    assert (await c.install("cust", fine, new)).ok
    assert c.check(ca.leaf(REVOKED, cdps=(too_long, fine))).status is CheckStatus.REVOKED
    assert [s.url for s in c.status()] == [fine]
