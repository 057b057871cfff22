"""The last good CRL of each customer CA URL is recorded in the database (crl.checkstore): after a restart, and in
another process, an older CRL the CA signed (replayed by the CDP's host, or by anyone on the path of plain http,
before its nextUpdate) is refused as a rollback exactly as by the process that took the newer one, so a
certificate revoked since is not trusted again; a CRL covering fewer kinds of certificate stays refused
(scope_mismatch) too. Forgetting a CA's records (crl.checkstore.forget) lets the next valid CRL in whatever its
age or scope. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import timedelta

from cryptography import x509

from crl import checkstore
from crl.check import CheckStatus, CrlChecker, FailureKind
from crl.checkstore import CheckerStateStore
from crl.config import CheckerSettings, Policy
from tests.crl.conftest import RecordingLogger
from tests.crl.customer_ca import T0, Ca, idp
from trustkit.clock import SettableClock
from trustkit.db import writer

A = "http://cdp.example/a.crl"
REVOKED = 0x63


def checker(engine, clock, log=None) -> CrlChecker:
    """One server process's checker on the shared database (a new one: the process after a restart)."""
    return CrlChecker(settings=CheckerSettings(policy=Policy.FAIL_CLOSED), clock=clock, logger=log,
                      state=CheckerStateStore(engine, clock=clock),
                      forget_hint=lambda ca: f"scep-server ca forget-external-crls {ca}")


def crls(ca: Ca):
    """#1 lists nothing; #2, an hour later, lists the device's certificate (revoked for key compromise)."""
    old = ca.crl(number=1, this_update=T0 - timedelta(hours=2), next_update=T0 + timedelta(days=7))
    new = ca.crl(number=2, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(days=7),
                 revoked=[(REVOKED, x509.ReasonFlags.key_compromise)])
    return old, new


async def test_an_older_crl_replayed_after_a_restart_is_refused(engine):
    clock = SettableClock(T0)
    ca = Ca("Replay CA", slot=31)
    leaf = ca.leaf(REVOKED, cdps=(A,))
    old, new = crls(ca)
    before = checker(engine, clock)
    before.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await before.install("cust", A, old)).ok
    assert (await before.install("cust", A, new)).ok
    assert before.check(leaf).status is CheckStatus.REVOKED
    # within the process the older CRL is refused
    assert (await before.install("cust", A, old)).failure is FailureKind.ROLLBACK

    log = RecordingLogger()
    after = checker(engine, clock, log)  # the server restarted: nothing in memory
    after.add_ca(ca.cert, name="cust", require_cdp=False)
    outcome = await after.install("cust", A, old)  # the CDP (or a MITM) serves the older CRL first
    assert not outcome.ok and outcome.failure is FailureKind.ROLLBACK, outcome
    assert "recorded" in outcome.detail
    r = after.check(leaf)
    assert not r.allowed and r.status is not CheckStatus.GOOD, r  # never trusted again
    (_, event, fields), = [rec for rec in log.records if rec[1] == "crl.check.rollback"]
    assert fields["remedy"] == "scep-server ca forget-external-crls cust"
    # the CRL recorded is no replay: the restarted process takes it, and answers from it
    assert (await after.install("cust", A, new)).ok
    assert after.check(leaf).status is CheckStatus.REVOKED


async def test_another_process_refuses_what_one_process_has_seen_superseded(engine):
    clock = SettableClock(T0)
    ca = Ca("Two Processes CA", slot=32)
    leaf = ca.leaf(REVOKED, cdps=(A,))
    first = ca.crl(number=1, this_update=T0 - timedelta(hours=3), next_update=T0 + timedelta(days=7))
    middle = ca.crl(number=2, this_update=T0 - timedelta(hours=2), next_update=T0 + timedelta(days=7))
    newest = ca.crl(number=3, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(days=7),
                    revoked=[(REVOKED, x509.ReasonFlags.key_compromise)])
    a, b = checker(engine, clock), checker(engine, clock)
    for c in (a, b):
        c.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await b.install("cust", A, first)).ok
    assert (await a.install("cust", A, first)).ok  # the same CRL: no replay, nothing written
    assert (await a.install("cust", A, newest)).ok
    outcome = await b.install("cust", A, middle)  # newer than b's own copy, older than what a has taken
    assert outcome.failure is FailureKind.ROLLBACK, outcome
    assert (await b.install("cust", A, newest)).ok
    assert b.check(leaf).status is CheckStatus.REVOKED


async def test_a_narrower_scope_stays_refused_after_a_restart_until_forgotten(engine):
    clock = SettableClock(T0)
    ca = Ca("Narrowing CA", slot=33)
    leaf = ca.leaf(REVOKED, cdps=(A,))
    full = ca.crl(number=1, this_update=T0 - timedelta(hours=2), next_update=T0 + timedelta(days=7),
                  revoked=[(REVOKED, x509.ReasonFlags.key_compromise)])
    users_only = ca.crl(number=2, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(days=7),
                        revoked=[(REVOKED, x509.ReasonFlags.key_compromise)], idp=idp(user=True))
    before = checker(engine, clock)
    before.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await before.install("cust", A, full)).ok
    log = RecordingLogger()
    after = checker(engine, clock, log)
    after.add_ca(ca.cert, name="cust", require_cdp=False)
    outcome = await after.install("cust", A, users_only)
    assert outcome.failure is FailureKind.SCOPE_MISMATCH, outcome
    (_, _, fields), = [rec for rec in log.records if rec[1] == "crl.check.scope_mismatch"]
    assert "forget-external-crls cust" in fields["remedy"]

    # the CA narrowed the URL on purpose: the administrator forgets its records, every process its floor
    async with writer(engine).begin() as conn:
        assert await checkstore.forget(conn, "cust", now=T0, actor="ops") == 1
    assert await CheckerStateStore(engine).generations() == {"cust": 1}
    assert after.forget("cust")
    assert (await after.install("cust", A, users_only)).ok
    assert after.check(leaf).status is CheckStatus.REVOKED
    # recorded again: a third process refuses the broader, older CRL now
    third = checker(engine, clock)
    third.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await third.install("cust", A, full)).failure is FailureKind.ROLLBACK


async def test_a_ca_restored_from_a_backup_is_taken_again_once_forgotten(engine):
    clock = SettableClock(T0)
    ca = Ca("Restored CA", slot=34)
    ahead = ca.crl(number=50, this_update=T0 - timedelta(hours=3), next_update=T0 + timedelta(days=7))
    restored = ca.crl(number=40, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(days=7))
    running = checker(engine, clock)
    running.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await running.install("cust", A, ahead)).ok
    fresh = checker(engine, clock)
    fresh.add_ca(ca.cert, name="cust", require_cdp=False)
    for c in (running, fresh):  # every CRL the CA now signs goes "backwards"
        assert (await c.install("cust", A, restored)).failure is FailureKind.ROLLBACK
    async with writer(engine).begin() as conn:
        await checkstore.forget(conn, "cust", now=T0, actor="ops")
    assert await CheckerStateStore(engine).generations() == {"cust": 1}
    # a process that has not yet heard of it still refuses it against the CRL it holds; once told, takes it
    assert (await running.install("cust", A, restored)).failure is FailureKind.ROLLBACK
    assert running.forget("cust") and not running.forget("nobody")
    assert (await running.install("cust", A, restored)).ok
    assert (await fresh.install("cust", A, restored)).ok  # nothing in its memory: the record is gone
    # the floor is back: the CRL that was ahead is now the older one
    assert (await running.install("cust", A, ahead)).failure is FailureKind.ROLLBACK


async def test_the_copy_held_is_recorded_once_forgotten(engine):
    """A process holding the CRL the CDP serves records it again after a forget (the same bytes: no new CRL), so
    that a restart still refuses an older one."""
    clock = SettableClock(T0)
    ca = Ca("Held CA", slot=35)
    old, new = crls(ca)
    c = checker(engine, clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await c.install("cust", A, new)).ok
    async with writer(engine).begin() as conn:
        await checkstore.forget(conn, "cust", now=T0, actor="ops")
    c.forget("cust")
    outcome = await c.install("cust", A, new)
    assert outcome.ok and not outcome.changed
    again = checker(engine, clock)
    again.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await again.install("cust", A, old)).failure is FailureKind.ROLLBACK


async def test_an_unreadable_record_takes_no_crl():
    """The database does not answer: no CRL is taken (the copy held stands) rather than one unchecked."""

    class Down:
        async def last_accepted(self, ca, issuer, url):
            raise ConnectionError("database unreachable")

        async def record(self, ca, issuer, url, crl, *, replacing):
            raise AssertionError("not reached")

    clock = SettableClock(T0)
    ca = Ca("Down CA", slot=36)
    old, _ = crls(ca)
    c = CrlChecker(settings=CheckerSettings(), clock=clock, state=Down())
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    outcome = await c.install("cust", A, old)
    assert not outcome.ok and outcome.failure is FailureKind.STATE_UNAVAILABLE, outcome


async def test_crl_numbers_beyond_a_bigint_are_recorded_exactly(engine):
    clock = SettableClock(T0)
    ca = Ca("Big Number CA", slot=37)
    big = 2 ** 150 + 7
    older = ca.crl(number=big, this_update=T0 - timedelta(hours=2), next_update=T0 + timedelta(days=7))
    newer = ca.crl(number=big + 1, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(days=7))
    c = checker(engine, clock)
    c.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await c.install("cust", A, newer)).ok
    recorded = await CheckerStateStore(engine).last_accepted("cust", c._cas["cust"].issuer_key, A)
    assert recorded is not None and recorded.number == big + 1
    again = checker(engine, clock)
    again.add_ca(ca.cert, name="cust", require_cdp=False)
    assert (await again.install("cust", A, older)).failure is FailureKind.ROLLBACK
