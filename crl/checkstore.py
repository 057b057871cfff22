"""The checker's record of each customer CA URL's last good CRL (crl.check.CheckerState) in the database, and the
administrator's forgetting of a CA's records (every process forgets the CRLs it holds as a floor)."""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustkit.clock import aware, utcnow
from trustkit.db import writer

from .check import AcceptedCrl
from .tables import crl_checker_resets, crl_checker_state


def url_key(url: str) -> str:
    """The key of a URL's record: the SHA-256 (hex) of the URL in UTF-8. A URL is the certificate's, of any length;
    a PostgreSQL index row holds at most about 2.7 KB, so the URL itself is kept beside its key, not in it."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


class CheckerStateStore:
    """crl.check.CheckerState on the `crl_checker_state` table: one small read per download that brings another
    CRL than the one held, one conditional write per CRL taken (none per check)."""

    def __init__(self, engine: AsyncEngine, *, clock: "Callable[[], datetime] | None" = None) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self._clock = clock or utcnow

    @staticmethod
    def _key(ca: str, issuer: str, url: str):
        c = crl_checker_state.c
        return sa.and_(c.ca == ca, c.issuer == issuer, c.url_sha256 == url_key(url))

    async def last_accepted(self, ca: str, issuer: str, url: str) -> "AcceptedCrl | None":
        c = crl_checker_state.c
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(c.crl_number, c.this_update, c.sha256, c.only_user, c.only_ca)
                                      .where(self._key(ca, issuer, url)))).first()
        if row is None:
            return None
        return AcceptedCrl(None if row.crl_number is None else int(row.crl_number), aware(row.this_update),
                           row.sha256, bool(row.only_user), bool(row.only_ca))

    async def record(self, ca: str, issuer: str, url: str, crl: AcceptedCrl, *, replacing: "str | None") -> bool:
        values = dict(crl_number=None if crl.number is None else str(crl.number), this_update=crl.this_update,
                      sha256=crl.sha256, only_user=crl.only_user, only_ca=crl.only_ca, recorded_at=self._clock())
        async with self._writer.begin() as conn:
            if replacing is None:
                dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
                stmt = dialect.insert(crl_checker_state).values(ca=ca, issuer=issuer, url_sha256=url_key(url), url=url,
                                                                **values)
                res = await conn.execute(stmt.on_conflict_do_nothing(index_elements=["ca", "issuer", "url_sha256"]))
            else:
                res = await conn.execute(crl_checker_state.update().where(
                    self._key(ca, issuer, url), crl_checker_state.c.sha256 == replacing).values(**values))
            return res.rowcount == 1

    async def generations(self) -> dict[str, int]:
        """How many times each CA's records were forgotten (the CAs never forgotten are absent)."""
        c = crl_checker_resets.c
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(c.ca, c.generation))).all()
        return {r.ca: int(r.generation) for r in rows}


async def forget(conn: AsyncConnection, ca: str, *, now: datetime, actor: "str | None") -> int:
    """Within the caller's (writing) transaction: delete the records of CA `ca` and move its generation on, so
    that every process takes the next valid CRL of each of its URLs whatever its age or scope. Returns the
    number of records deleted."""
    deleted = (await conn.execute(crl_checker_state.delete().where(crl_checker_state.c.ca == ca))).rowcount
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(crl_checker_resets).values(ca=ca, generation=1, reset_at=now, reset_by=actor)
    await conn.execute(stmt.on_conflict_do_update(index_elements=["ca"], set_={
        "generation": crl_checker_resets.c.generation + 1, "reset_at": now, "reset_by": actor}))
    return int(deleted or 0)


async def drop(conn: AsyncConnection, ca: str) -> None:
    """Within the caller's transaction: delete the records of a CA that is unregistered (its generation stays)."""
    await conn.execute(crl_checker_state.delete().where(crl_checker_state.c.ca == ca))
