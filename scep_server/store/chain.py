"""The hash chain of the audit trail (`[audit] chain`): tamper evidence for the `events` table.

Events are written as before (:func:`scep_server.store.events.record_event` and the enrolment's fast paths,
nothing added to their transactions); a *sealer* then links the rows not yet sealed, oldest id first, in
one short transaction of its own: each gets the next sequence number (``chain_seq``) and
``chain_hash = SHA-256(previous hash || "\\n" || canonical encoding of the row)``, and the head row
(``events_chain``, id 1) keeps the last link. Sealers serialise on a transaction-scoped advisory lock on
PostgreSQL (``pg_advisory_xact_lock``) and on BEGIN IMMEDIATE on SQLite, so several processes sealing one
database never fork the chain. The sealer takes no lock the writers hold (it touches only ``events`` rows
already committed and the head), so it cannot deadlock with them, and the enrolment path pays nothing.

The first seal writes the *anchor*: every row present then gets ``chain_seq = 0`` and the chain starts
from the fold of those rows in id order (their id standing in for the sequence number); the head keeps
that hash and their count.

:func:`verify` recomputes everything from the stored rows: the anchor, each link, the sequence without
gaps, the head at the last link. It names the first row that breaks (altered, or following a deleted one).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustkit import paging
from trustkit.clock import aware
from trustkit.db import writer

from .tables import events, events_chain

GENESIS = "0" * 64
"""The hash the anchor's fold starts from."""

LOCK_KEY = 0x5CE9_A0D1  # pg_advisory_xact_lock key of the sealers (a constant of this application)
BATCH = 1000  # rows sealed per statement batch
MAX_BATCHES = 5  # per seal() call (its transaction holds SQLite's write lock): a larger backlog takes more calls
READ_BATCH = 5000  # rows read per query by verify()

_COLUMNS = (events.c.id, events.c.at, events.c.kind, events.c.subject, events.c.actor, events.c.data,
            events.c.chain_seq, events.c.chain_hash)


def canonical(seq: int, row) -> bytes:
    """The canonical encoding of an event row: compact JSON of [seq, at (UTC, microseconds), kind, subject,
    actor, data (the stored text)], UTF-8."""
    at = aware(row.at).astimezone(timezone.utc)
    return json.dumps([seq, at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), row.kind, row.subject, row.actor, row.data],
                      separators=(",", ":"), ensure_ascii=False).encode()


def link(previous: str, seq: int, row) -> str:
    """The hash of a row chained to the previous one (hex SHA-256)."""
    return hashlib.sha256(previous.encode() + b"\n" + canonical(seq, row)).hexdigest()


async def _lock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_KEY)))


async def _anchor(conn: AsyncConnection, now: datetime) -> tuple[int, str]:
    """Start the chain: the rows present now are the anchor (chain_seq 0). Returns (count, hash)."""
    await conn.execute(events.update().where(events.c.chain_seq.is_(None)).values(chain_seq=0))
    count, digest = await _fold_anchor(conn)
    await conn.execute(events_chain.insert().values(id=1, started_at=now, anchor_count=count, anchor_hash=digest,
                                                    seq=0, hash=digest))
    return count, digest


async def _fold_anchor(conn: AsyncConnection) -> tuple[int, str]:
    """(count, hash) of the anchored rows (chain_seq 0), folded in id order from GENESIS."""
    digest, count, last = GENESIS, 0, None
    for _ in range(10 ** 9 // READ_BATCH):  # bounded: a billion rows
        q = sa.select(*_COLUMNS).where(events.c.chain_seq == 0)
        if last is not None:
            q = q.where(events.c.id > last)
        rows = (await conn.execute(q.order_by(events.c.id).limit(READ_BATCH))).all()
        for r in rows:
            digest = link(digest, r.id, r)
        count += len(rows)
        if len(rows) < READ_BATCH:
            break
        last = rows[-1].id
    return count, digest


async def seal(engine: AsyncEngine, *, now: datetime) -> int:
    """Link the events not yet sealed (starting the chain with its anchor on the first call); the number
    sealed. One transaction per call, serialised with every other sealer of the database."""
    async with engine.connect() as conn:  # nothing to do (the steady state): no write transaction, no lock
        started = (await conn.execute(sa.select(events_chain.c.id).where(events_chain.c.id == 1))).first()
        pending = (await conn.execute(sa.select(events.c.id).where(events.c.chain_seq.is_(None)).limit(1))).first()
    if started is not None and pending is None:
        return 0
    sealed = 0
    async with writer(engine).begin() as conn:
        await _lock(conn)
        head = (await conn.execute(sa.select(events_chain.c.seq, events_chain.c.hash)
                                   .where(events_chain.c.id == 1))).first()
        if head is None:
            _count, digest = await _anchor(conn, now)
            seq = 0
        else:
            seq, digest = head.seq, head.hash
        for _ in range(MAX_BATCHES):
            rows = (await conn.execute(sa.select(*_COLUMNS).where(events.c.chain_seq.is_(None))
                                       .order_by(events.c.id).limit(BATCH))).all()
            if not rows:
                break
            updates = []
            for r in rows:
                seq += 1
                digest = link(digest, seq, r)
                updates.append({"row_id": r.id, "seq": seq, "hash": digest})
            await conn.execute(events.update().where(events.c.id == sa.bindparam("row_id"))
                               .values(chain_seq=sa.bindparam("seq"), chain_hash=sa.bindparam("hash")), updates)
            sealed += len(rows)
            if len(rows) < BATCH:
                break
        if sealed:
            await conn.execute(events_chain.update().where(events_chain.c.id == 1).values(seq=seq, hash=digest))
    return sealed


@dataclass(frozen=True)
class Verification:
    ok: bool
    started: bool  # whether the chain was ever switched on (a head exists)
    anchored: int = 0  # events written before the chain, covered by the anchor
    checked: int = 0  # links checked
    unsealed: int = 0  # events not sealed yet (written since the last seal)
    broken_id: int | None = None  # the first event that breaks the chain (None: the anchor or the head)
    problem: str | None = None
    head_seq: int = 0
    head_hash: str | None = None

    def to_json(self) -> dict:
        return {"ok": self.ok, "started": self.started, "anchored": self.anchored, "checked": self.checked,
                "unsealed": self.unsealed, "broken_event_id": self.broken_id, "problem": self.problem,
                "head": {"seq": self.head_seq, "hash": self.head_hash}}


async def verify(engine: AsyncEngine) -> Verification:
    """Check the chain from the stored rows (one consistent snapshot): anchor, every link, the head."""
    async with engine.connect() as base:
        conn = base
        if base.dialect.name == "postgresql":
            conn = await base.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            return await _verify(conn)


async def _verify(conn: AsyncConnection) -> Verification:
    head = (await conn.execute(sa.select(events_chain).where(events_chain.c.id == 1))).first()
    unsealed = (await conn.execute(sa.select(sa.func.count()).select_from(events)
                                   .where(events.c.chain_seq.is_(None)))).scalar_one()
    if head is None:
        return Verification(ok=True, started=False, unsealed=unsealed)
    found = dict(started=True, unsealed=unsealed, head_seq=head.seq, head_hash=head.hash)
    count, digest = await _fold_anchor(conn)
    if (count, digest) != (head.anchor_count, head.anchor_hash):
        return Verification(ok=False, anchored=count, problem=(
            f"the events written before the chain was started ({head.anchor_count} anchored on "
            f"{aware(head.started_at).isoformat()}) were changed or deleted: {count} remain and their hash differs"
            if count != head.anchor_count else
            f"an event written before the chain was started (one of the {count} anchored) was changed"), **found)
    previous, expected, last = head.anchor_hash, 1, None
    key = [events.c.chain_seq, events.c.id]
    for _ in range(10 ** 9 // READ_BATCH):
        rows = (await conn.execute(sa.select(*_COLUMNS).where(events.c.chain_seq > 0, paging.after(key, last))
                                   .order_by(*paging.order(key)).limit(READ_BATCH))).all()
        for r in rows:
            if r.chain_seq != expected:
                what = (f"the event sealed as number {expected} is missing (deleted)" if r.chain_seq > expected
                        else f"sequence number {r.chain_seq} appears twice")
                return Verification(ok=False, anchored=count, checked=expected - 1, broken_id=r.id,
                                    problem=f"event {r.id}: {what}", **found)
            if link(previous, r.chain_seq, r) != r.chain_hash:
                return Verification(ok=False, anchored=count, checked=expected - 1, broken_id=r.id, problem=(
                    f"event {r.id} (number {r.chain_seq}) does not match its hash: it, or the link before it, "
                    "was altered"), **found)
            previous, expected = r.chain_hash, expected + 1
        if len(rows) < READ_BATCH:
            break
        last = (rows[-1].chain_seq, rows[-1].id)
    if (expected - 1, previous) != (head.seq, head.hash):
        return Verification(ok=False, anchored=count, checked=expected - 1, problem=(
            f"the chain ends at number {expected - 1} but its head says {head.seq}: the last events were deleted"
            if expected - 1 != head.seq else "the head of the chain does not match its last event"), **found)
    return Verification(ok=True, anchored=count, checked=expected - 1, **found)
