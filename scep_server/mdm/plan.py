"""What an MDM's view of a device means for its lifecycle here: a pure function of the MDM's records, what the MDM
said before (tracking) and our devices, so the rules are tested without a database or a network.

| the MDM says                                  | default action here                                 |
|-----------------------------------------------|-----------------------------------------------------|
| managed                                       | reactivate/unsuspend, only if this MDM took it down |
| not managed (Jamf), disabled (Entra ID)       | deactivate (certificates on hold)                   |
| gone from the inventory                       | deactivate at once, delete after the grace period   |

A device the MDM never listed is not touched, nor one that is deleted here. A device an administrator took down is
never brought back by an MDM: only a change whose actor is this MDM is undone by it, and only when the MDM took the
device down from active (one it deactivated while an administrator had it suspended stays down).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

ACTIONS = ("none", "suspend", "deactivate", "delete")


class MdmState(str, Enum):
    MANAGED = "managed"
    UNMANAGED = "unmanaged"
    DISABLED = "disabled"
    MISSING = "missing"


@dataclass(frozen=True)
class Record:
    """One device as the MDM lists it."""
    device_id: str  # the value our device id is matched with (Jamf UDID or serial number, Intune device id, ...)
    mdm_id: str  # the MDM's own record id
    state: MdmState
    name: str = ""


@dataclass(frozen=True)
class Tracked:
    state: MdmState
    missing_since: datetime | None = None


@dataclass(frozen=True)
class Ours:
    status: str  # active | suspended | deactivated | deleted
    status_changed_by: str | None
    # the status before the run of changes its status_changed_by made (None: not known, taken as active)
    taken_from: str | None = None
    changed_at: datetime | None = None  # when its status last changed


@dataclass(frozen=True)
class Rules:
    unmanaged: str = "deactivate"  # what "not managed" does: none | suspend | deactivate | delete
    disabled: str = "deactivate"  # what "disabled in the directory" does
    removed: str = "delete"  # what leaving the inventory does once the grace period has passed
    removed_grace: timedelta = timedelta(days=7)
    restore: bool = True  # managed again -> reactivate (only what this MDM took down)


@dataclass(frozen=True)
class Change:
    device_id: str
    action: str  # a device lifecycle action: suspend | unsuspend | deactivate | reactivate | delete
    why: str

    def to_json(self) -> dict:
        return {"device_id": self.device_id, "action": self.action, "why": self.why}


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    tracking: dict[str, tuple[Tracked, str | None]] = field(default_factory=dict)  # device id -> (state, mdm id)
    untrack: list[str] = field(default_factory=list)


# action -> the statuses it applies to (the device store refuses the others)
_FROM = {"suspend": {"active"}, "deactivate": {"active", "suspended"}, "delete": {"active", "suspended", "deactivated"}}


def _take_down(action: str, ours: Ours, device_id: str, why: str) -> Change | None:
    if action == "none" or ours.status not in _FROM[action]:
        return None
    return Change(device_id, action, why)


def _restore(ours: Ours, actor: str, device_id: str, why: str) -> Change | None:
    if ours.status_changed_by != actor or ours.taken_from not in (None, "active"):
        return None  # taken down by someone else, or by this MDM from someone else's suspension: theirs to undo
    if ours.status == "deactivated":
        return Change(device_id, "reactivate", why)
    if ours.status == "suspended":
        return Change(device_id, "unsuspend", why)
    return None


def decide(record: Record, ours: Ours, *, actor: str, rules: Rules) -> Change | None:
    """The change one record of the MDM asks for (a webhook event or one row of a full sync)."""
    if ours.status == "deleted":
        return None
    if record.state is MdmState.MANAGED:
        return _restore(ours, actor, record.device_id, "managed in the MDM") if rules.restore else None
    if record.state is MdmState.UNMANAGED:
        return _take_down(rules.unmanaged, ours, record.device_id, "no longer managed in the MDM")
    if record.state is MdmState.DISABLED:
        return _take_down(rules.disabled, ours, record.device_id, "disabled in the directory")
    return None


def plan(records: dict[str, Record], tracked: dict[str, Tracked], ours: dict[str, Ours], *, actor: str,
         rules: Rules, now: datetime) -> Plan:
    """The changes a complete listing of the MDM's inventory asks for, and what to remember of it."""
    out = Plan()
    for device_id in sorted(set(records) | set(tracked)):
        mine = ours.get(device_id)
        if mine is None or mine.status == "deleted":
            if device_id in tracked:
                out.untrack.append(device_id)
            continue
        record = records.get(device_id)
        if record is not None:
            out.tracking[device_id] = (Tracked(record.state), record.mdm_id)
            change = decide(record, mine, actor=actor, rules=rules)
        else:
            before = tracked[device_id]
            since = before.missing_since or now
            out.tracking[device_id] = (Tracked(MdmState.MISSING, since), None)
            if now - since >= rules.removed_grace:
                change = _take_down(rules.removed, mine, device_id,
                                    f"gone from the MDM's inventory since {since.isoformat()}")
            else:
                change = _take_down(rules.unmanaged, mine, device_id, "gone from the MDM's inventory")
        if change is not None:
            out.changes.append(change)
    return out
