"""Pending enrolments nobody decides expire (profile setting ``pending_expiry_days``, 30 days by default): the
device's next CertPoll gets FAILURE with the reason, an approval is refused, the audit trail says so once, and a
sweep rejects the ones nobody reads. Rules on the in-memory repository (tests/challenge/test_pending_expiry.py runs
them against the server and SQLite and PostgreSQL)."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from scep_server.enrolment import ApprovalRefused
from scep_server.profiles import ProfileSettings
from scep_server.scep import FailInfo, PKIStatus, client
from tests.enrolment.test_rules import ca, h, keys  # noqa: F401 - fixtures

DAY = timedelta(days=1)


def txid(key) -> str:
    return client.transaction_id_for(key.public_key())


def expired(rep) -> bool:
    return (rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
            and "the enrolment expired: no administrator approved it within 30 days" in (rep.fail_text or ""))


def test_the_default_is_thirty_days():
    assert ProfileSettings().pending_expiry_days == 30
    assert ProfileSettings.model_validate_json('{"require_approval": true}').pending_expiry_days == 30


async def test_an_undecided_enrolment_expires_and_its_poll_says_so(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    h.clock.advance(30 * DAY - timedelta(seconds=1))
    assert (await h.poll("manual", keys[0])).status is PKIStatus.PENDING  # not yet
    h.clock.advance(timedelta(seconds=1))
    assert expired(await h.poll("manual", keys[0]))
    row = h.repo.transactions[("manual", txid(keys[0]))]
    assert (row["state"], row["decided_by"]) == ("rejected", "system:expiry")
    assert expired(await h.poll("manual", keys[0]))  # again: the same answer, from the row
    assert expired(await h.enrol("manual", keys[0]))  # the request sent again too
    events = [e for e in h.repo.events if e["kind"] == "scep.enrolment.expire"]
    assert len(events) == 1 and events[0]["actor"] == "system:expiry"
    assert events[0]["data"]["profile"] == "manual" and events[0]["data"]["expiry_days"] == 30
    assert h.repo.certificates == {}


async def test_an_expired_enrolment_cannot_be_approved(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    h.clock.advance(31 * DAY)
    with pytest.raises(ApprovalRefused, match="the enrolment expired"):
        await h.service.decide("manual", txid(keys[0]), approve=True, actor="admin")
    assert h.repo.certificates == {}
    assert expired(await h.poll("manual", keys[0]))
    with pytest.raises(LookupError, match="no pending enrolment"):  # decided: as any rejected enrolment
        await h.service.decide("manual", txid(keys[0]), approve=True, actor="admin")


async def test_a_rejection_of_an_expired_enrolment_finds_it_rejected(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    h.clock.advance(31 * DAY)
    assert await h.service.decide("manual", txid(keys[0]), approve=False, actor="admin", reason="x") == "rejected"
    assert expired(await h.poll("manual", keys[0]))
    assert [e["kind"] for e in h.repo.events] == ["scep.enrolment.expire"]


async def test_an_enrolment_decided_in_time_is_issued(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    h.clock.advance(29 * DAY)
    await h.service.decide("manual", txid(keys[0]), approve=True, actor="admin")
    h.clock.advance(400 * DAY)  # an issued enrolment never expires
    assert (await h.poll("manual", keys[0])).status is PKIStatus.SUCCESS


async def test_zero_keeps_an_enrolment_pending_until_decided(h, keys):
    h.profiles.add("manual", require_approval=True, pending_expiry_days=0)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    h.clock.advance(1000 * DAY)
    assert await h.service.expire_pending() == {}
    assert (await h.poll("manual", keys[0])).status is PKIStatus.PENDING
    assert isinstance(await h.service.decide("manual", txid(keys[0]), approve=True, actor="admin"), str)


async def test_the_profile_setting_decides_and_the_sweep_rejects_only_expired_ones(h, keys):
    h.profiles.add("short", require_approval=True, pending_expiry_days=2)
    h.profiles.add("long", require_approval=True)
    assert (await h.enrol("short", keys[0])).status is PKIStatus.PENDING
    assert (await h.enrol("long", keys[1])).status is PKIStatus.PENDING
    h.clock.advance(DAY)
    assert (await h.enrol("short", keys[2])).status is PKIStatus.PENDING
    h.clock.advance(DAY)
    assert await h.service.expire_pending() == {"short": 1}
    assert await h.service.expire_pending() == {}  # once
    states = {key: row["state"] for key, row in h.repo.transactions.items()}
    assert states == {("short", txid(keys[0])): "rejected", ("long", txid(keys[1])): "pending",
                      ("short", txid(keys[2])): "pending"}
    assert "within 2 days" in h.repo.transactions[("short", txid(keys[0]))]["fail_text"]
    assert (await h.poll("short", keys[2], cn="device")).status is PKIStatus.PENDING


async def test_an_expiry_and_a_decision_at_once_decide_once(h, keys):
    h.profiles.add("manual", require_approval=True)
    assert (await h.enrol("manual", keys[0])).status is PKIStatus.PENDING
    h.clock.advance(31 * DAY)
    results = await asyncio.gather(h.service.expire_pending(), h.service.expire_pending(),
                                   h.poll("manual", keys[0]), return_exceptions=True)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert expired(results[2])
    assert [e["kind"] for e in h.repo.events] == ["scep.enrolment.expire"]
