"""A CDP URL whose last good CRL covers a device's certificate cannot be made to answer for it no longer by serving
another CRL the CA signed that covers fewer kinds of certificate (its ARL, onlyContainsCACerts, or a CRL of user
certificates only in place of one of every kind): such a CRL is refused (scope_mismatch) and the last good one
stands, so a serial it lists stays refused under fail-open too, also once it is past its nextUpdate."""
from datetime import timedelta

import pytest
from cryptography import x509

from crl.check import CheckStatus, CrlChecker, FailureKind
from crl.config import CheckerSettings, Policy
from trustkit.clock import SettableClock

from tests.crl.customer_ca import T0, Ca, idp

A = "http://cdp.example/a.crl"


@pytest.mark.parametrize("is_ca,narrower", [(False, idp(ca=True)), (True, idp(user=True))],
                         ids=["an ARL in place of the CRL", "a users' CRL in place of the CRL"])
async def test_a_crl_covering_fewer_kinds_of_certificate_does_not_replace_the_last_good_one(is_ca, narrower):
    clock = SettableClock(T0)
    ca = Ca("Scope Swap CA", slot=23)
    c = CrlChecker(settings=CheckerSettings(policy=Policy.FAIL_OPEN), clock=clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    leaf = ca.leaf(0x63, cdps=(A,), is_ca=is_ca)
    first = ca.crl(number=1, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(hours=1),
                   revoked=[(0x63, x509.ReasonFlags.key_compromise)])
    assert (await c.install("cust", A, first)).ok
    assert c.check(leaf).status is CheckStatus.REVOKED
    # the CDP's host (or anyone on the path of plain http) serves another CRL the CA signed, newer
    swapped = ca.crl(number=2, this_update=T0 - timedelta(minutes=5), next_update=T0 + timedelta(days=7),
                     idp=narrower)
    outcome = await c.install("cust", A, swapped)
    assert not outcome.ok and outcome.failure is FailureKind.SCOPE_MISMATCH, outcome
    r = c.check(leaf)
    assert r.status is CheckStatus.REVOKED and not r.allowed, r
    clock.advance(hours=2)  # the last good CRL is past its nextUpdate: it still lists the certificate
    r = c.check(leaf)
    assert r.status is CheckStatus.REVOKED and not r.allowed, r
