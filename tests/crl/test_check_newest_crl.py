"""Of several fresh CRLs covering a certificate, the newest answers, by thisUpdate then CRL number: CRLs without a
CRL Number (v1, or `openssl ca -gencrl` without a crlnumber file) and numbers of different scopes (a partition's
own sequence, the full CRL's) do not make an older copy answer over a newer one."""
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from crl.check import CheckStatus, CrlChecker
from crl.config import CheckerSettings, Policy
from trustkit.clock import SettableClock

from tests.crl.customer_ca import T0, Ca, idp

A, B = "http://cdp.example/a.crl", "http://mirror.example/a.crl"


def crl_without_number(ca, this_update, revoked=()):
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.name).last_update(this_update)
         .next_update(T0 + timedelta(hours=6)))
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(this_update).build())
    return b.sign(ca.key, hashes.SHA256()).public_bytes(Encoding.DER)


async def test_mirror_with_older_unnumbered_crl_does_not_answer_over_newer():
    clock = SettableClock(T0)
    ca = Ca("Unnumbered CA", slot=21)
    c = CrlChecker(settings=CheckerSettings(), clock=clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    leaf = ca.leaf(0x61, cdps=(A, B))
    assert (await c.install("cust", A, crl_without_number(ca, T0 - timedelta(hours=2)))).ok  # lagging mirror
    assert (await c.install("cust", B, crl_without_number(ca, T0 - timedelta(minutes=5), revoked=[0x61]))).ok
    r = c.check(leaf)
    assert r.status is CheckStatus.REVOKED, f"answered from the older copy at {r.crl_url}: {r.status} {r.reason}"


async def test_partition_number_is_not_compared_with_full_crl_number():
    clock = SettableClock(T0)
    ca = Ca("Scopes CA", slot=22)
    c = CrlChecker(settings=CheckerSettings(), clock=clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    P, F = "http://cdp.example/part/3.crl", "http://cdp.example/full.crl"
    leaf = ca.leaf(0x62, cdps=(P, F))
    # the full CRL (its own sequence, at 500) signed 3 hours ago; the partition CRL (its own sequence, at 7)
    # signed 5 minutes ago lists the leaf
    assert (await c.install("cust", F, ca.crl(number=500, this_update=T0 - timedelta(hours=3),
                                               next_update=T0 + timedelta(days=1)))).ok
    assert (await c.install("cust", P, ca.crl(number=7, this_update=T0 - timedelta(minutes=5),
                                               next_update=T0 + timedelta(days=1), idp=idp([P], user=True),
                                               revoked=[(0x62, x509.ReasonFlags.key_compromise)]))).ok
    r = c.check(leaf)
    assert r.status is CheckStatus.REVOKED, (f"answered from the older full CRL #{r.crl_number} at {r.crl_url}: "
                                             f"{r.status} {r.reason}")


async def test_check_serial_answers_from_the_higher_numbered_full_crl_of_the_same_second():
    """Two full CRLs with one thisUpdate (signed within one second), from two URLs: the serial check answers
    from the higher CRL number, the newer one, whichever URL was installed first."""
    for first, second in ((5, 6), (6, 5)):
        c = CrlChecker(settings=CheckerSettings(), clock=SettableClock(T0))
        ca = Ca("Same Second CA", slot=33)
        c.add_ca(ca.cert, name="cust", require_cdp=False)
        tu = T0 - timedelta(minutes=5)
        crls = {5: ca.crl(number=5, this_update=tu),
                6: ca.crl(number=6, this_update=tu, revoked=[(0x71, x509.ReasonFlags.key_compromise)])}
        assert (await c.install("cust", A, crls[first])).ok
        assert (await c.install("cust", B, crls[second])).ok
        assert c.check_serial("cust", 0x71).status is CheckStatus.REVOKED, (first, second)
        assert c.check(ca.leaf(0x71, cdps=(A, B))).status is CheckStatus.REVOKED, (first, second)


@pytest.mark.parametrize("policy", [Policy.FAIL_OPEN, Policy.FAIL_CLOSED])
async def test_an_older_fresh_crl_does_not_answer_good_over_a_newer_stale_one_that_lists_it(policy):
    """A lagging mirror's CRL, still fresh, and the issuer's newer CRL, which lists the certificate but has passed its
    nextUpdate (its successor could not be fetched): the newer one's word stands, under either policy."""
    clock = SettableClock(T0)
    ca = Ca("Stale Newer CA", slot=22)
    c = CrlChecker(settings=CheckerSettings(policy=policy), clock=clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    leaf = ca.leaf(0x71, cdps=(A, B))
    old = ca.crl(number=1, this_update=T0 - timedelta(hours=2), next_update=T0 + timedelta(days=7))
    new = ca.crl(number=2, this_update=T0 - timedelta(minutes=30), next_update=T0 + timedelta(hours=1),
                 revoked=[(0x71, x509.ReasonFlags.key_compromise)])
    assert (await c.install("cust", A, old)).ok and (await c.install("cust", B, new)).ok
    assert c.check(leaf).status is CheckStatus.REVOKED
    clock.advance(timedelta(hours=2))
    for r in (c.check(leaf), c.check_serial("cust", 0x71, urls=[A, B])):
        assert r.status is CheckStatus.REVOKED and not r.allowed, (
            f"answered from the older CRL at {r.crl_url}: {r.status} {r.reason}")
