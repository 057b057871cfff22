"""Audit events (who did what, when): pki.cert.* (`scep_server.ca.status.EventKind`), device.*, security.* ..."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..ca.status import STATUS_CHANGE_KINDS
from .tables import events

# audit events written in the same transaction as a status change of a certificate (by the status writer)
STATUS_EVENTS = tuple(sorted(kind.value for kind in STATUS_CHANGE_KINDS))

# PostgreSQL NOTIFY channel on which the processes of one database announce changes to each other
# (payloads: "status" for a certificate status change, "crl:<ca>" for a CRL recorded); see
# scep_server.crlwiring.changes for the listening side.
CHANGES_CHANNEL = "scep_server_changes"


async def announce(conn: AsyncConnection, payload: str) -> None:
    """NOTIFY the other processes on PostgreSQL, delivered when the caller's transaction commits (no-op on SQLite,
    where the listeners notice any commit by themselves)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.select(sa.func.pg_notify(CHANGES_CHANNEL, payload)))


async def record_event(conn: AsyncConnection, *, at: datetime, kind: str, subject: str | None = None,
                       actor: str | None = None, data: dict[str, Any] | None = None) -> None:
    """Append one audit event inside the caller's transaction (``kind``: a string or a string enum's member);
    a status change is also announced to the other processes."""
    await conn.execute(events.insert().values(
        at=at, kind=str(kind), subject=subject, actor=actor, data=json.dumps(data or {}, sort_keys=True, default=str)))
    if str(kind) in STATUS_EVENTS:
        await announce(conn, "status")
