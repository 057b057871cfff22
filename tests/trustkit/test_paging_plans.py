"""A page deep in a list costs what the first page costs: the keyset condition of `trustkit.paging.after` starts
an index range at the cursor on PostgreSQL and SQLite, rather than reading and filtering every row before it."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from trustkit.db import create_engine
from trustkit.paging import after, order

UTC = timezone.utc
T0 = datetime(2026, 12, 1, tzinfo=UTC)
ROWS = 20_000
LIMIT = 50

meta = sa.MetaData()
deep = sa.Table("paging_plan_rows", meta, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("at", sa.DateTime(timezone=True), nullable=False),
                sa.Column("name", sa.String(32), nullable=False),
                sa.Index("ix_paging_plan_rows_at_name", "at", "name"))


@pytest.fixture
async def big(db_url):
    engine = create_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
        await conn.execute(deep.insert(), [{"id": i, "at": T0 + timedelta(seconds=i // 2), "name": f"n{i:06d}"}
                                           for i in range(ROWS)])
        await conn.execute(sa.text("ANALYZE"))
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)
    await engine.dispose()


def _page(key, descending: bool):
    cols = [deep.c.at, deep.c.name]
    return (sa.select(deep.c.id).where(after(cols, key, descending=descending))
            .order_by(*order(cols, descending=descending)).limit(LIMIT + 1))


def _rows_read(plan: dict) -> int:
    """Rows the plan's scans produced plus those their filters removed (EXPLAIN ANALYZE, JSON)."""
    total = 0
    if "Relation Name" in plan:
        total += plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
    for child in plan.get("Plans", []):
        total += _rows_read(child)
    return total


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
async def test_a_deep_page_reads_only_its_rows(big, descending):
    i = ROWS * 3 // 4 if not descending else ROWS // 4  # three quarters of the list lie before the cursor
    key = (T0 + timedelta(seconds=i // 2), f"n{i:06d}")
    query = _page(key, descending)
    async with big.connect() as conn:
        ids = (await conn.execute(query)).scalars().all()
        assert len(ids) == LIMIT + 1
        assert ids[0] == (i + 1 if not descending else i - 1)
        compiled = query.compile(conn.engine, compile_kwargs={"literal_binds": True})
        if conn.dialect.name == "postgresql":
            text = (await conn.execute(sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}"))).scalar_one()
            plan = (json.loads(text) if isinstance(text, str) else text)[0]["Plan"]
            assert _rows_read(plan) <= 2 * LIMIT, json.dumps(plan, indent=1)
        else:
            detail = " ".join(r[-1] for r in (await conn.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}"))).all())
            assert "SEARCH" in detail and "ix_paging_plan_rows_at_name" in detail, detail
