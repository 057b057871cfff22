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
