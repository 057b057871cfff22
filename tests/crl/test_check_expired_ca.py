"""A registered customer CA whose own certificate has expired vouches for nothing (RFC 5280 §6.1.3 (a)(2)): a
certificate it issued is refused as `ca_expired`, whatever its CRL says."""
from datetime import timedelta

from cryptography.hazmat.primitives import serialization

from crl.check import CrlChecker
from crl.config import CheckerSettings
from trustkit.clock import SettableClock

from tests.crl.customer_ca import T0, Ca


async def test_certificate_of_expired_customer_ca_is_not_good():
    clock = SettableClock(T0)
    ca = Ca("Expired CA", slot=31, not_after=T0 - timedelta(days=1))
    c = CrlChecker(settings=CheckerSettings(), clock=clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    url = "http://cdp.example/a.crl"
    leaf = ca.leaf(0x71, cdps=(url,))  # issued by the CA key; valid T0-1d .. T0+365d
    assert (await c.install("cust", url, ca.crl(number=1))).ok
    r = c.check(leaf)
    assert ca.cert.not_valid_after_utc < clock()
    assert not r.allowed, f"certificate of a CA expired at {ca.cert.not_valid_after_utc} answered {r.status} {r.reason}"


async def test_check_serial_refuses_once_the_ca_certificate_expires_and_before_it_is_valid():
    """`check_serial` (asked at every attestation of a known certificate) judges the CA's validity period too."""
    clock = SettableClock(T0)
    url = "http://cdp.example/a.crl"
    ca = Ca("Expiring CA", slot=32, not_after=T0 + timedelta(days=1))
    c = CrlChecker(settings=CheckerSettings(), clock=clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await c.install("cust", url, ca.crl(number=1, next_update=T0 + timedelta(days=7)))).ok
    assert c.check_serial("cust", 0x71, urls=[url]).allowed
    clock.advance(timedelta(days=2))
    for urls in ([url], None):
        r = c.check_serial("cust", 0x71, urls=urls)
        assert not r.allowed and r.reason == "ca_expired", r

    future = Ca("Future CA", slot=33, not_before=T0 + timedelta(days=30))
    c = CrlChecker(settings=CheckerSettings(), clock=SettableClock(T0))
    c.add_ca(future.cert, name="future", require_cdp=False)
    assert (await c.install("future", url, future.crl(number=1))).ok
    leaf = future.leaf(0x72, cdps=(url,))
    for r in (c.check(leaf), c.check_serial("future", 0x72, urls=[url])):
        assert not r.allowed and r.reason == "ca_not_yet_valid", r

    # a CA certificate issued moments ago, our clock a little behind: within crl.checker.clock_skew it is valid
    fresh = Ca("Just Issued CA", slot=34, not_before=T0 + timedelta(minutes=2))
    c = CrlChecker(settings=CheckerSettings(), clock=SettableClock(T0))
    c.add_ca(fresh.cert, name="fresh", require_cdp=False)
    assert (await c.install("fresh", url, fresh.crl(number=1, this_update=T0 + timedelta(minutes=2)))).ok
    assert c.check(fresh.leaf(0x73, cdps=(url,))).allowed and c.check_serial("fresh", 0x73, urls=[url]).allowed
