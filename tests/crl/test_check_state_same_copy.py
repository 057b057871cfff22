"""A download that brings the CRL the checker already holds reads and writes nothing of the recorded last good CRL
(docs/crl-and-binding.md: the record is read when a download brings another CRL than the one held): a CDP that
keeps serving the same CRL stays a success while the database is down, and costs no query per refresh."""
from __future__ import annotations

from crl.check import CrlChecker, FailureKind
from crl.config import CheckerSettings
from tests.crl.customer_ca import T0, Ca
from tests.crl.test_check_persisted import A, crls
from trustkit.clock import SettableClock


class Flaky:
    """A CheckerState in memory whose database can be taken down."""

    def __init__(self):
        self.rows = {}
        self.down = False
        self.reads = 0

    async def last_accepted(self, ca, issuer, url):
        self.reads += 1
        if self.down:
            raise ConnectionError("database unreachable")
        return self.rows.get((ca, issuer, url))

    async def record(self, ca, issuer, url, crl, *, replacing):
        if self.down:
            raise ConnectionError("database unreachable")
        held = self.rows.get((ca, issuer, url))
        if (held.sha256 if held is not None else None) != replacing:
            return False
        self.rows[(ca, issuer, url)] = crl
        return True


async def test_the_copy_held_downloaded_again_needs_no_database():
    state = Flaky()
    clock = SettableClock(T0)
    ca = Ca("Same Copy CA", slot=38)
    old, new = crls(ca)
    c = CrlChecker(settings=CheckerSettings(), clock=clock, state=state)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await c.install("cust", A, old)).ok
    reads = state.reads
    state.down = True
    outcome = await c.install("cust", A, old)  # the CDP serves the same CRL again (no ETag: downloaded whole)
    assert outcome.ok and not outcome.changed and outcome.failure is None, outcome
    assert state.reads == reads  # nothing read for it
    # another CRL than the one held is still not taken without its record
    outcome = await c.install("cust", A, new)
    assert not outcome.ok and outcome.failure is FailureKind.STATE_UNAVAILABLE, outcome
    state.down = False
    assert (await c.install("cust", A, new)).ok
