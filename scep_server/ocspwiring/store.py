"""What the OCSP responder reads: the status of serials of one CA, and the certificates whose status changed.

Changes are found in the audit log: every status change records a status-change event in its own
transaction (`scep_server.ca.revocation.change_status`), and every issuance a ``pki.cert.issue`` event
(a serial answered "unknown" before becomes known). Events are read by id above a floor; the floor trails
the newest id seen by `WINDOW` ids, so that a transaction that took its id earlier but committed later
(PostgreSQL sequences) is still seen; ids already handled are skipped. SQLite has one writer at a time, so its
ids are committed in order and the floor is the newest id itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import aware

from ..ca.status import CertStatus, EventKind
from ..store.events import STATUS_EVENTS
from ..store.tables import certificates, events

WINDOW = 256
WATCHED_KINDS = tuple(sorted({*STATUS_EVENTS, EventKind.ISSUE.value}))


@dataclass(frozen=True)
class SerialStatus:
    status: CertStatus
    revoked_at: datetime | None
    reason: int | None


async def statuses(engine: AsyncEngine, ca: str, serials: list[str]) -> dict[str, SerialStatus]:
    """The status of each serial (lower-case hex) issued by ``ca``; serials never issued by it are absent."""
    c = certificates.c
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(c.serial, c.status, c.revoked_at, c.revocation_reason)
                                  .where(c.ca == ca, c.serial.in_(serials)))
        return {r.serial: SerialStatus(CertStatus(r.status), aware(r.revoked_at), r.revocation_reason)
                for r in rows}


class ChangeScanner:
    """Serials whose status changed (or that were issued) since the last scan, from the audit log."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.window = 0 if engine.dialect.name == "sqlite" else WINDOW
        self.newest = 0  # the highest event id seen
        self._seen: set[int] = set()  # ids handled above the floor

    async def start(self) -> None:
        """Everything before now counts as seen (nothing is cached yet)."""
        async with self.engine.connect() as conn:
            self.newest = int((await conn.execute(sa.select(sa.func.max(events.c.id)))).scalar() or 0)
        self._seen = set(range(max(0, self.newest - self.window) + 1, self.newest + 1))

    async def changed(self) -> set[str]:
        """The serials of the new events, with the certificates a renewal among them superseded."""
        floor = max(0, self.newest - self.window)
        e, c = events.c, certificates.c
        q = (sa.select(e.id, e.subject, c.renewal_of)
             .select_from(events.outerjoin(certificates, c.serial == e.subject))
             .where(e.id > floor, e.kind.in_(WATCHED_KINDS)).order_by(e.id))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
            top = (await conn.execute(sa.select(sa.func.max(e.id)))).scalar()
        serials: set[str] = set()
        for row in rows:
            if row.id in self._seen:
                continue
            self._seen.add(row.id)
            self.newest = max(self.newest, row.id)
            if row.subject:
                serials.add(row.subject)
            if row.renewal_of:
                serials.add(row.renewal_of)
        self.newest = max(self.newest, int(top or 0))  # the floor follows every event, watched or not
        floor = max(0, self.newest - self.window)
        self._seen = {i for i in self._seen if i > floor}
        return serials
