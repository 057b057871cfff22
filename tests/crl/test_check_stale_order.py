"""Fail-open: a serial listed on the newest last-good CRL stays refused when every CRL of its CDP is stale; an
older mirror copy that does not list it does not answer "stale_crl" (allowed under fail-open)."""
from datetime import timedelta

from cryptography import x509

from crl.check import CheckStatus, CrlChecker
from crl.config import CheckerSettings, Policy
from trustkit.clock import SettableClock

from tests.crl.customer_ca import T0, Ca

A, B = "http://cdp.example/a.crl", "http://mirror.example/a.crl"


async def test_newest_stale_crl_listing_serial_refuses_under_fail_open():
    clock = SettableClock(T0)
    ca = Ca("Stale Order CA")
    c = CrlChecker(settings=CheckerSettings(policy=Policy.FAIL_OPEN), clock=clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    leaf = ca.leaf(0x51, cdps=(A, B))
    # mirror A still serves yesterday's CRL 1; B has CRL 2 which lists the leaf (keyCompromise)
    old = ca.crl(number=1, this_update=T0 - timedelta(hours=2))
    new = ca.crl(number=2, this_update=T0 - timedelta(minutes=30), revoked=[(0x51, x509.ReasonFlags.key_compromise)])
    assert (await c.install("cust", A, old)).ok
    assert (await c.install("cust", B, new)).ok
    fresh = c.check(leaf)
    assert fresh.status is CheckStatus.REVOKED and not fresh.allowed  # fresh: the newest (CRL 2) answers
    # both CDPs become unreachable; both last-good copies go stale
    clock.advance(timedelta(hours=3))
    r = c.check(leaf)
    assert not r.allowed, f"revoked serial allowed on stale CRLs under fail-open: {r}"
    assert r.status is CheckStatus.REVOKED and r.reason == "listed_on_stale_crl"
