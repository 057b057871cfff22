"""A SQLite connection the pool closes in the middle of a write transaction, with a read part-way through (what
happens to the connection of a task cancelled between a query and its rows, as every job is at shutdown), leaves
no lock behind: another connection writes at once instead of waiting out its busy timeout."""
from __future__ import annotations

import asyncio

import sqlalchemy as sa

from trustkit.db import create_engine, writer


async def test_a_connection_closed_mid_transaction_keeps_no_write_lock(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with writer(engine).begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(sa.text("INSERT INTO t VALUES (1), (2), (3)"))
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection  # the aiosqlite connection under the pool's
            await driver.execute("BEGIN IMMEDIATE")
            reading = await driver.execute("SELECT x FROM t")  # one row read of three: the statement is live
            assert await reading.fetchone() == (1,)
            await conn.invalidate()  # the pool closes it, as for a cancelled task's connection

        async def write() -> None:
            async with writer(engine).begin() as other:
                await other.execute(sa.text("INSERT INTO t VALUES (4)"))

        await asyncio.wait_for(write(), timeout=5)  # not the 30 s busy timeout
        assert reading is not None  # the part-read cursor is still referenced all along
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar() == 4
    finally:
        await engine.dispose()
