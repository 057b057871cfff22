"""The rules that turn an MDM's view of a device into a lifecycle change (pure: no database, no network)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from scep_server.mdm.plan import Change, MdmState, Ours, Record, Rules, Tracked, decide, plan

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
ACTOR = "mdm:jamf"
M, U, D = MdmState.MANAGED, MdmState.UNMANAGED, MdmState.DISABLED


def rec(device_id: str, state: MdmState) -> Record:
    return Record(device_id=device_id, mdm_id="1", state=state)


def test_unmanaged_deactivates_an_active_or_suspended_device():
    assert decide(rec("a", U), Ours("active", "cli:root"), actor=ACTOR, rules=Rules()) == Change(
        "a", "deactivate", "no longer managed in the MDM")
    assert decide(rec("a", U), Ours("suspended", "cli:root"), actor=ACTOR, rules=Rules()).action == "deactivate"
    assert decide(rec("a", U), Ours("deactivated", ACTOR), actor=ACTOR, rules=Rules()) is None


def test_disabled_in_the_directory_follows_its_own_rule():
    assert decide(rec("a", D), Ours("active", None), actor=ACTOR, rules=Rules()).action == "deactivate"
    assert decide(rec("a", D), Ours("active", None), actor=ACTOR, rules=Rules(disabled="suspend")).action == "suspend"
    assert decide(rec("a", D), Ours("active", None), actor=ACTOR, rules=Rules(disabled="none")) is None


def test_managed_again_restores_only_what_this_mdm_took_down():
    assert decide(rec("a", M), Ours("deactivated", ACTOR), actor=ACTOR, rules=Rules()).action == "reactivate"
    assert decide(rec("a", M), Ours("suspended", ACTOR), actor=ACTOR, rules=Rules()).action == "unsuspend"
    # an administrator's (or another MDM's) decision stands
    assert decide(rec("a", M), Ours("deactivated", "cli:root"), actor=ACTOR, rules=Rules()) is None
    assert decide(rec("a", M), Ours("deactivated", "mdm:intune"), actor=ACTOR, rules=Rules()) is None
    assert decide(rec("a", M), Ours("deactivated", ACTOR), actor=ACTOR, rules=Rules(restore=False)) is None
    assert decide(rec("a", M), Ours("active", ACTOR), actor=ACTOR, rules=Rules()) is None


def test_a_deleted_device_is_never_touched():
    for state in (M, U, D):
        assert decide(rec("a", state), Ours("deleted", ACTOR), actor=ACTOR, rules=Rules()) is None
    p = plan({}, {"a": Tracked(M)}, {"a": Ours("deleted", ACTOR)}, actor=ACTOR, rules=Rules(), now=NOW)
    assert p.changes == [] and p.untrack == ["a"]


def test_devices_unknown_here_are_neither_changed_nor_tracked():
    p = plan({"x": rec("x", U)}, {}, {}, actor=ACTOR, rules=Rules(), now=NOW)
    assert p.changes == [] and p.tracking == {} and p.untrack == []


def test_a_device_gone_from_the_inventory_is_held_then_deleted_after_the_grace_period():
    rules = Rules(removed_grace=timedelta(days=7))
    ours = {"a": Ours("active", None)}
    first = plan({}, {"a": Tracked(M)}, ours, actor=ACTOR, rules=rules, now=NOW)
    assert [c.action for c in first.changes] == ["deactivate"]
    assert first.tracking["a"][0] == Tracked(MdmState.MISSING, NOW)

    later = NOW + timedelta(days=7) - timedelta(seconds=1)
    held = {"a": Ours("deactivated", ACTOR)}
    second = plan({}, {"a": Tracked(MdmState.MISSING, NOW)}, held, actor=ACTOR, rules=rules, now=later)
    assert second.changes == [] and second.tracking["a"][0].missing_since == NOW  # the clock is not restarted

    third = plan({}, {"a": Tracked(MdmState.MISSING, NOW)}, held, actor=ACTOR, rules=rules,
                 now=NOW + timedelta(days=7))
    assert [c.action for c in third.changes] == ["delete"]


def test_a_device_that_comes_back_before_the_grace_period_is_restored_and_its_clock_cleared():
    held = {"a": Ours("deactivated", ACTOR)}
    p = plan({"a": rec("a", M)}, {"a": Tracked(MdmState.MISSING, NOW)}, held, actor=ACTOR, rules=Rules(),
             now=NOW + timedelta(days=1))
    assert [c.action for c in p.changes] == ["reactivate"]
    assert p.tracking["a"][0] == Tracked(M, None)


def test_removal_rules_are_settings():
    ours = {"a": Ours("active", None)}
    keep = Rules(unmanaged="none", removed="none", removed_grace=timedelta(0))
    assert plan({}, {"a": Tracked(M)}, ours, actor=ACTOR, rules=keep, now=NOW).changes == []
    hold_only = Rules(removed="deactivate", removed_grace=timedelta(0))
    assert [c.action for c in plan({}, {"a": Tracked(M)}, ours, actor=ACTOR, rules=hold_only,
                                   now=NOW).changes] == ["deactivate"]


def test_a_device_taken_down_from_an_administrators_suspension_is_not_restored():
    """The MDM deactivated a device an administrator had suspended: managed again, it stays down (reactivating it
    would undo the administrator's suspension too)."""
    from_suspended = Ours("deactivated", ACTOR, taken_from="suspended")
    assert decide(rec("a", M), from_suspended, actor=ACTOR, rules=Rules()) is None
    assert decide(rec("a", M), Ours("deactivated", ACTOR, taken_from="active"), actor=ACTOR,
                  rules=Rules()).action == "reactivate"
