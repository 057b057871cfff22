"""Certificate status and certificate audit events: the stored values, as enums.

The values are what the database holds (``certificates.status``, ``events.kind``); they never change.
Every write of a certificate's status goes through `scep_server.ca.revocation.change_status`, which records
one of the `STATUS_CHANGE_KINDS` events in the same transaction; the CRL safety net
(`scep_server.crlwiring.service`) watches exactly those kinds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .inventory import CertRecord


class CertStatus(StrEnum):
    """``certificates.status``."""

    VALID = "valid"
    HOLD = "hold"  # certificateHold: listed on the CRL, can be released
    REVOKED = "revoked"  # listed on the CRL, final

    @property
    def listed(self) -> bool:
        """Whether a certificate in this state is on its CA's CRL (while unexpired)."""
        return self in LISTED


LISTED: frozenset[CertStatus] = frozenset({CertStatus.HOLD, CertStatus.REVOKED})
# the states a certificate can still leave (a revocation is final)
CHANGEABLE: frozenset[CertStatus] = frozenset({CertStatus.VALID, CertStatus.HOLD})


class EventKind(StrEnum):
    """``events.kind`` of the audit events about one certificate (subject: its serial, or the device for
    bind/unbind)."""

    ISSUE = "pki.cert.issue"
    RENEW = "pki.cert.renew"  # a renewal; its predecessor may be revoked (superseded) in the same transaction
    REVOKE = "pki.cert.revoke"
    HOLD = "pki.cert.lifecycle.hold"
    ACTIVATE = "pki.cert.lifecycle.activate"  # a hold released
    BIND = "pki.cert.bind"
    UNBIND = "pki.cert.unbind"

    @property
    def changes_status(self) -> bool:
        """Whether an event of this kind is written in the same transaction as a change of
        ``certificates.status`` (what the CRL safety net watches)."""
        return self in STATUS_CHANGE_KINDS


STATUS_CHANGE_KINDS: frozenset[EventKind] = frozenset(
    {EventKind.REVOKE, EventKind.RENEW, EventKind.HOLD, EventKind.ACTIVATE})

# the event a status change records unless the caller names another status-change kind
DEFAULT_KIND: dict[CertStatus, EventKind] = {
    CertStatus.VALID: EventKind.ACTIVATE, CertStatus.HOLD: EventKind.HOLD, CertStatus.REVOKED: EventKind.REVOKE}


@dataclass(frozen=True)
class StatusChange:
    """A change of one certificate's status, as written (the CRL of ``ca`` must be re-signed)."""

    serial: str
    ca: str
    status: CertStatus
    record: CertRecord | None = field(default=None, compare=False, repr=False)  # the row after the change

    def to_json(self) -> dict:
        return {"serial": self.serial, "ca": self.ca, "status": self.status.value}
