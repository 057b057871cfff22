"""Where the recorded last good CRL and a download meet: a CRL is taken only once its record is written (a write
that fails takes nothing: taken unrecorded, it would be replayable after a restart), and a record another process
wrote between this one's read and its write is the floor the download is validated against again (an older CRL
is then a rollback, not a success over the newer record)."""
from __future__ import annotations

from datetime import timedelta

from crl.check import AcceptedCrl, CheckStatus, CrlChecker, FailureKind
from crl.config import CheckerSettings
from tests.crl.customer_ca import T0, Ca
from tests.crl.test_check_persisted import A, REVOKED, crls
from trustkit.clock import SettableClock


class Racing:
    """A CheckerState in memory; `before_write` runs at each write, as another process writing first would."""

    def __init__(self, before_write=None, fail_writes=False):
        self.rows = {}
        self.before_write = before_write
        self.fail_writes = fail_writes
        self.writes = 0

    async def last_accepted(self, ca, issuer, url):
        return self.rows.get((ca, issuer, url))

    async def record(self, ca, issuer, url, crl, *, replacing):
        self.writes += 1
        if self.fail_writes:
            raise ConnectionError("database unreachable")
        if self.before_write is not None:
            self.before_write(self, (ca, issuer, url))
        held = self.rows.get((ca, issuer, url))
        if (held.sha256 if held is not None else None) != replacing:
            return False
        self.rows[(ca, issuer, url)] = crl
        return True


def _checker(state, name):
    ca = Ca(name, slot=39)
    c = CrlChecker(settings=CheckerSettings(), clock=SettableClock(T0), state=state)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    return c, ca


async def test_a_crl_whose_record_cannot_be_written_is_not_taken():
    state = Racing()
    c, ca = _checker(state, "Unwritten CA")
    leaf = ca.leaf(REVOKED, cdps=(A,))
    old, new = crls(ca)
    assert (await c.install("cust", A, old)).ok
    state.fail_writes = True
    outcome = await c.install("cust", A, new)
    assert not outcome.ok and outcome.failure is FailureKind.STATE_UNAVAILABLE, outcome
    assert c.check(leaf).status is CheckStatus.GOOD  # the copy held (#1) still answers
    assert next(iter(state.rows.values())).number == 1


async def test_a_newer_record_written_meanwhile_makes_the_older_crl_a_rollback():
    def newer_first(state, key):
        if state.writes == 1:  # another process takes #2 between this one's read and its write
            state.rows[key] = AcceptedCrl(2, T0 - timedelta(hours=1), "0" * 64)

    state = Racing(before_write=newer_first)
    c, ca = _checker(state, "Raced CA")
    old, _ = crls(ca)
    outcome = await c.install("cust", A, old)
    assert not outcome.ok and outcome.failure is FailureKind.ROLLBACK, outcome
    assert "recorded" in outcome.detail
    assert next(iter(state.rows.values())).number == 2  # the newer record stands


async def test_a_record_that_keeps_changing_takes_nothing():
    def churn(state, key):  # another process rewrites the record before every write of this one
        state.rows[key] = AcceptedCrl(None, T0 - timedelta(days=1), f"{state.writes:064x}")

    state = Racing(before_write=churn)
    c, ca = _checker(state, "Churned CA")
    old, _ = crls(ca)
    outcome = await c.install("cust", A, old)
    assert not outcome.ok and outcome.failure is FailureKind.STATE_UNAVAILABLE, outcome
    assert state.writes == 3  # bounded
