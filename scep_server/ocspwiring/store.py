"""What the OCSP responder reads: the status of serials of one CA, and the certificates whose status changed.

Changes are found in the audit log: every status change records a status-change event in its own
transaction (`scep_server.ca.revocation.change_status`), and every issuance a ``pki.cert.issue`` event
(a serial answered "unknown" before becomes known). Events are read by id: those above the newest id seen, and
the gaps below it. On PostgreSQL a transaction that took its id from the sequence earlier can commit after one
that took a later id; an id missing below the newest is therefore looked for again at every scan for
`GAP_WAIT` seconds (an id whose transaction rolled back stays missing), however many events came meanwhile. SQLite
has one writer at a time: its ids are committed in order, and a missing id never appears.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import aware

from ..ca.status import CertStatus, EventKind
from ..store.events import STATUS_EVENTS
from ..store.tables import certificates, events

GAP_WAIT = 60.0  # seconds an id missing below the newest is looked for (its transaction may commit late)
MAX_GAPS = 10_000  # ids looked for at most: beyond, the oldest are given up
START_LOOKBACK = 1_000  # at the start, the ids below the newest whose absence counts as a gap
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

    def __init__(self, engine: AsyncEngine, *, monotonic=time.monotonic) -> None:
        self.engine = engine
        self.in_order = engine.dialect.name == "sqlite"  # ids committed in the order they were taken
        self.monotonic = monotonic
        self.newest = 0  # the highest event id seen
        self.gaps: dict[int, float] = {}  # ids below the newest not seen yet -> when first missed

    async def start(self) -> None:
        """Everything before now counts as seen (nothing is cached yet), except the ids missing just below the
        newest: a transaction in flight now may commit after a response for its serial is cached."""
        async with self.engine.connect() as conn:
            self.newest = int((await conn.execute(sa.select(sa.func.max(events.c.id)))).scalar() or 0)
            if self.in_order:
                return
            low = max(0, self.newest - START_LOOKBACK)
            present = set((await conn.execute(sa.select(events.c.id).where(events.c.id > low))).scalars())
        self._note_gaps([i for i in range(low + 1, self.newest + 1) if i not in present])

    async def changed(self) -> set[str]:
        """The serials of the new events, with the certificates a renewal among them superseded."""
        now = self.monotonic()
        self.gaps = {i: t for i, t in self.gaps.items() if now - t < GAP_WAIT}
        e, c = events.c, certificates.c
        # every new event, watched or not (an id that is not there is a gap), and the gaps: two index range
        # reads (one condition with OR would read the whole table)
        joined = events.outerjoin(certificates, sa.and_(c.serial == e.subject, e.kind.in_(WATCHED_KINDS)))
        q = sa.select(e.id, e.kind, e.subject, c.renewal_of).select_from(joined)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.where(e.id > self.newest).order_by(e.id))).all()
            if self.gaps:
                rows = (await conn.execute(q.where(e.id.in_(sorted(self.gaps))))).all() + rows
        serials: set[str] = set()
        expected = self.newest + 1
        for row in rows:
            if row.id > self.newest:
                self._note_gaps(range(expected, row.id), now)
                expected = row.id + 1
            self.gaps.pop(row.id, None)
            if row.kind in WATCHED_KINDS:
                if row.subject:
                    serials.add(row.subject)
                if row.renewal_of:
                    serials.add(row.renewal_of)
        self.newest = max(self.newest, expected - 1)
        return serials

    def _note_gaps(self, ids, now: float | None = None) -> None:
        """Ids missing below a new newest id: looked for again until GAP_WAIT (never on SQLite)."""
        if self.in_order:
            return
        at = self.monotonic() if now is None else now
        for i in ids[-MAX_GAPS:]:
            self.gaps[i] = at
        while len(self.gaps) > MAX_GAPS:
            del self.gaps[next(iter(self.gaps))]
