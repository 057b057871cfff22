"""Audit events (who did what, when): pki.cert.* (`scep_server.ca.status.EventKind`), device.*, security.* ..."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from trustkit import paging
from trustkit.paging import Page, PageRequest, RowId

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


EVENT_KEY = (RowId,)
"""The kinds of an event list's cursor: newest first by id."""


@dataclass(frozen=True)
class EventFilter:
    """What `list_events` keeps: `kind` exact, or a prefix when `kind_prefix`; `since` inclusive, `until`
    exclusive (aware datetimes)."""
    kind: str | None = None
    kind_prefix: bool = False
    actor: str | None = None
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def list_events(conn: AsyncConnection, page: PageRequest, flt: EventFilter) -> Page[Any]:
    """One page of the audit trail, newest first (docs/api.md "Pagination")."""
    c = events.c
    q = (sa.select(events).where(paging.after([c.id], page.after, descending=True))
         .order_by(*paging.order([c.id], descending=True)).limit(page.limit + 1))
    if flt.kind is not None:
        # LIKE finds the range by index; SQLite's LIKE ignores ASCII case, the substr() comparison does not
        q = q.where(sa.and_(c.kind.like(_like_prefix(flt.kind), escape="\\"),
                            sa.func.substr(c.kind, 1, len(flt.kind)) == flt.kind)
                    if flt.kind_prefix else c.kind == flt.kind)
    if flt.actor is not None:
        q = q.where(c.actor == flt.actor)
    if flt.subject is not None:
        q = q.where(c.subject == flt.subject)
    # SQLite keeps the UTC wall clock without an offset: compare in UTC everywhere
    if flt.since is not None:
        q = q.where(c.at >= flt.since.astimezone(timezone.utc))
    if flt.until is not None:
        q = q.where(c.at < flt.until.astimezone(timezone.utc))
    rows = (await conn.execute(q)).all()
    return paging.take(rows, page.limit, key=lambda r: (r.id,))
