"""Typed errors of MDM sources (`trustkit.problems.DomainError`s: HTTP status and stable code)."""
from __future__ import annotations

from datetime import datetime

from trustkit import problems


class MdmError(problems.DomainError):
    code = "mdm_error"
    status = 400


class MdmSourceNotFound(MdmError, problems.NotFound):
    code = "mdm_source_not_found"
    status = 404


class MdmSourceExists(MdmError, problems.Conflict):
    code = "mdm_source_exists"
    status = 409


class MdmSourceInvalid(MdmError, problems.BadRequest):
    code = "mdm_source_invalid"
    status = 400


class MdmSyncRunning(MdmError, problems.Conflict):
    """Another sync of the source (the periodic one, or one asked for in any process or instance) holds its claim."""

    code = "mdm_sync_running"
    status = 409

    def __init__(self, source: str, since: datetime, until: datetime, renewed: datetime | None = None,
                 lease_seconds: float | None = None):
        if renewed is not None:
            ends = (f"its holder last renewed its claim at {renewed.isoformat()}; a claim not renewed for "
                    f"{lease_seconds:g} s is free, and it ends by {until.isoformat()} at the latest")
        else:  # made by a version that does not renew its claims
            ends = f"its claim ends by {until.isoformat()} at the latest"
        super().__init__(f"a sync of MDM source {source!r} is running since {since.isoformat()}; nothing was "
                         f"changed, try again when it has ended ({ends})", source=source,
                         running_since=since.isoformat(), claimed_until=until.isoformat(),
                         last_renewed_at=renewed.isoformat() if renewed is not None else None)
        self.source = source
        self.since = since
        self.until = until
        self.renewed = renewed


class SyncClaimLost(Exception):
    """A sync's claim of its source was taken by another sync (it had not been renewed in time): from then on the
    sync applies and records nothing."""


class EventSuperseded(Exception):
    """A webhook event older than one already recorded about the device: not applied."""


class DeviceNotListed(Exception):
    """A webhook event about a device that is not ours, or that another source follows and this source's
    inventory has not listed: not applied."""


class EventHeld(Exception):
    """A webhook event that takes a device down when the source's take-downs of the last sync interval reach the
    brake's limit: not applied (the next sync reads the device)."""

    def __init__(self, message: str, *, recent: int, limit: int):
        super().__init__(message)
        self.recent = recent
        self.limit = limit
