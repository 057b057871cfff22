"""Key rollover: two registered CAs share a subject. A certificate of the older key without an AKI is judged
against the CA whose key signed it, not refused as "not_issued_by_ca" against the newer one."""
from crl.check import CheckStatus, CrlChecker
from crl.config import CheckerSettings

from trustkit.clock import SettableClock

from tests.crl.customer_ca import T0, Ca


async def test_old_key_certificate_without_aki_is_found():
    old = Ca("Rollover CA", slot=11)
    new = Ca("Rollover CA", slot=12)
    c = CrlChecker(settings=CheckerSettings(), clock=SettableClock(T0))
    c.add_ca(old.cert, name="old", require_cdp=False)
    c.add_ca(new.cert, name="new", require_cdp=False)
    url = "http://cdp.example/a.crl"
    leaf = old.leaf(0x1234, cdps=(url,), aki=False)
    assert (await c.install("old", url, old.crl(number=1))).ok
    r = c.check(leaf)
    assert r.reason != "not_issued_by_ca", f"a certificate signed by registered CA 'old' is refused: {r}"
    assert r.status is CheckStatus.GOOD and r.ca == "old"
