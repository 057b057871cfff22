"""Cursor pagination: every row exactly once, in order, whatever the page size; hostile limits and cursors are
400 problems; the keyset condition means the same on SQLite and PostgreSQL."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from yarl import URL

from trustkit.db import create_engine
from trustkit.paging import (MAX_LIMIT, after, decode_cursor, encode_cursor, order, page_body, page_request,
                             take)
from trustkit.problems import BadRequest

UTC = timezone.utc
T0 = datetime(2026, 12, 1, tzinfo=UTC)

meta = sa.MetaData()
rows_table = sa.Table("paging_rows", meta, sa.Column("at", sa.DateTime(timezone=True), nullable=False),
                      sa.Column("name", sa.String(32), nullable=False), sa.PrimaryKeyConstraint("at", "name"))


@pytest.fixture
async def table(db_url):
    engine = create_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
        # ties on `at` (three names per instant): the second column decides
        await conn.execute(rows_table.insert(), [{"at": T0 + timedelta(seconds=i // 3), "name": f"n{i % 3}-{i}"}
                                                 for i in range(47)])
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)
    await engine.dispose()


async def _walk(engine, limit: int, descending: bool) -> list[tuple]:
    cols = [rows_table.c.at, rows_table.c.name]
    seen, cursor, pages = [], None, 0
    while pages < 100:
        req = page_request({"limit": str(limit), **({"cursor": cursor} if cursor else {})}, (datetime, str))
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(*cols).where(after(cols, req.after, descending=descending))
                                       .order_by(*order(cols, descending=descending)).limit(req.limit + 1))).all()
        page = take(rows, req.limit, key=lambda r: (r.at, r.name))
        seen.extend((r.at.replace(tzinfo=UTC) if r.at.tzinfo is None else r.at, r.name) for r in page.items)
        pages += 1
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize("limit", [1, 2, 3, 7, 46, 47, 48, 1000])
async def test_every_row_once_in_order(table, limit, descending):
    async with table.connect() as conn:
        everything = [(r.at.replace(tzinfo=UTC) if r.at.tzinfo is None else r.at, r.name) for r in
                      (await conn.execute(sa.select(rows_table.c.at, rows_table.c.name)
                                          .order_by(*order([rows_table.c.at, rows_table.c.name],
                                                           descending=descending)))).all()]
    assert len(everything) == 47
    assert await _walk(table, limit, descending) == everything


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "1e3", "٣", "abc", " 5", "5 ", "99999999999"])
def test_bad_limits_are_400(limit):
    with pytest.raises(BadRequest) as err:
        page_request({"limit": limit}, (str,))
    assert err.value.code == "invalid_limit" and err.value.status == 400


def _raw(values) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "!!!", "a" * 2000, "é", _raw({"a": 1}), _raw([1, 2]), _raw(["x"]), _raw(["not a time", "x"]),
    _raw([1.5, "x"]), _raw(["2026-12-01T00:00:00+00:00", 7]), _raw(["2026-12-01T00:00:00+00:00", "x" * 600]),
    base64.urlsafe_b64encode(b"[" * 5000).decode(), base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    _raw([None, None]), _raw(["2026-12-01T00:00:00+00:00", None]), _raw([None, "x"]),
])
def test_bad_cursors_are_400(cursor):
    with pytest.raises(BadRequest) as err:
        page_request({"cursor": cursor}, (datetime, str))
    assert err.value.code == "invalid_cursor"


def test_a_cursor_round_trips_and_the_defaults_hold():
    key = (T0, "abc")
    assert decode_cursor(encode_cursor(key), (datetime, str)) == key
    assert decode_cursor(encode_cursor((5, "a")), (int, str)) == (5, "a")
    req = page_request({}, (str,))
    assert req.limit == 100 and req.after is None
    assert page_request({"limit": str(MAX_LIMIT)}, (str,)).limit == MAX_LIMIT


def test_the_body_and_link_of_a_page():
    page = take([1, 2, 3], 2, key=lambda n: (n,))
    body, headers = page_body("things", page.items, page, URL("/api/v1/things?limit=2&status=x"))
    assert body["things"] == [1, 2] and body["next_cursor"] == encode_cursor((2,))
    assert URL(body["next"]).query == {"limit": "2", "status": "x", "cursor": encode_cursor((2,))}
    assert headers == {"Link": f'<{body["next"]}>; rel="next"'}
    last = take([1], 2, key=lambda n: (n,))
    body, headers = page_body("things", last.items, last, URL("/api/v1/things"))
    assert body == {"things": [1], "next_cursor": None, "next": None} and headers == {}
