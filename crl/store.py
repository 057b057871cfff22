"""Per-scope CRL state in the database: atomic CRL Number allocation and the newest published CRL."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import aware
from trustkit.db import writer

from .tables import crl_state


@dataclass(frozen=True)
class StoredCrl:
    number: int
    this_update: datetime
    next_update: datetime
    der: bytes
    sha256: str
    entries: int
    published_by: "str | None"
    shares_second: bool = False  # its thisUpdate second is its predecessor's (crl.web answers such a date in full)


@dataclass(frozen=True)
class Saved:
    """A CRL recorded as the newest of its scope."""

    shares_second: bool  # the CRL recorded before it had the same thisUpdate (two re-signs within one second)


class CrlStateStore:
    """One CRL scope's row in `crl_state` (RFC 5280 §5.2.3: numbers are never shared within a scope)."""

    def __init__(self, engine: AsyncEngine, ca: str) -> None:
        self.engine = engine
        self.ca = ca
        self._writer = writer(engine)

    def _insert_ignore(self):
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(crl_state).values(ca=self.ca, last_number=0).on_conflict_do_nothing(
            index_elements=["ca"])

    async def allocate(self, now: datetime, *, floor: int = 0) -> tuple[int, datetime]:
        """Next CRL Number (> all before, > `floor`) and a thisUpdate never earlier than before: one atomic UPDATE."""
        c = crl_state.c
        floor_v = sa.literal(floor, sa.BigInteger)
        now_v = sa.literal(now, sa.DateTime(timezone=True))
        async with self._writer.begin() as conn:
            await conn.execute(self._insert_ignore())
            row = (await conn.execute(
                crl_state.update().where(c.ca == self.ca).values(
                    last_number=sa.case((c.last_number < floor_v, floor_v), else_=c.last_number) + 1,
                    last_this_update=sa.case(
                        (sa.or_(c.last_this_update.is_(None), c.last_this_update < now_v), now_v),
                        else_=c.last_this_update),
                ).returning(c.last_number, c.last_this_update))).one()
        return int(row.last_number), aware(row.last_this_update)

    async def save(self, *, number: int, this_update: datetime, next_update: datetime, der: bytes, sha256: str,
                   entries: int, published_at: datetime, published_by: str) -> "Saved | None":
        """Record a published CRL unless one with a number >= `number` is already recorded (None then)."""
        c = crl_state.c
        this_update_v = sa.literal(this_update, sa.DateTime(timezone=True))
        async with self._writer.begin() as conn:
            row = (await conn.execute(
                crl_state.update()
                .where(c.ca == self.ca, sa.or_(c.crl_number.is_(None), c.crl_number < number),
                       c.last_number >= number)
                # the right-hand side reads the row as it was: the CRL recorded before this one
                .values(crl_number=number, this_update=this_update, next_update=next_update, der=der,
                        sha256=sha256, entries=entries, published_at=published_at, published_by=published_by,
                        this_update_shared=sa.case((c.this_update == this_update_v, True), else_=False))
                .returning(c.this_update_shared))).first()
            return None if row is None else Saved(shares_second=bool(row.this_update_shared))

    async def published_number(self) -> "int | None":
        """The newest published CRL Number (the cheap poll)."""
        async with self.engine.connect() as conn:
            value = (await conn.execute(sa.select(crl_state.c.crl_number).where(crl_state.c.ca == self.ca))).scalar()
        return None if value is None else int(value)

    async def load(self) -> "StoredCrl | None":
        """The newest published CRL, or None."""
        c = crl_state.c
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.select(c.crl_number, c.this_update, c.next_update, c.der, c.sha256, c.entries, c.published_by,
                          c.this_update_shared)
                .where(c.ca == self.ca, c.crl_number.is_not(None)))).first()
        if row is None:
            return None
        return StoredCrl(number=int(row.crl_number), this_update=aware(row.this_update),
                         next_update=aware(row.next_update), der=bytes(row.der), sha256=row.sha256,
                         entries=int(row.entries or 0), published_by=row.published_by,
                         shares_second=bool(row.this_update_shared))

    async def last_allocated(self) -> int:
        async with self.engine.connect() as conn:
            value = (await conn.execute(sa.select(crl_state.c.last_number).where(crl_state.c.ca == self.ca))).scalar()
        return int(value or 0)
