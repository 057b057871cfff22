"""`yubikey report`'s sqlite3 reader (otp.sqlitereads) returns what the service's SQLAlchemy store returns.

Both run on the same migrated SQLite database with the same keys (unassigned, enrolled, revoked, deleted and
imported again, blocked, with security events); every page of every filter is compared, rows, history, order and
cursors alike, so a change to one side's query that the other does not follow fails here.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from otp.report import REPORT_KEY, ReportFilter
from otp.sqlitereads import OtpReads
from otp.tables import otp_events, otp_yubikeys
from trustkit.db import writer
from trustkit.paging import PageRequest, decode_cursor
from trustkit.sqlitereads import sqlite_path

from tests.app.test_sqlitereads import _pages as every_page

from .conftest import import_keys, make_key

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the reader is for SQLite only


async def _pages(fetch, limit: int) -> list[tuple[list, str | None]]:
    return await every_page(fetch, limit, REPORT_KEY)


async def _fill(service, clock, engine) -> None:
    keys = [make_key(700 + i) for i in range(9)]
    await import_keys(service, keys[:4])
    clock.advance(86400 + 0.123456)  # microseconds in the stored times
    await import_keys(service, keys[4:8])
    for user, key in (("kate", keys[0]), ("leo", keys[2]), ("mia", keys[4]), ("ned", keys[5])):
        clock.advance(600)
        assert (await service.verify_signin(user, key.otp())).ok
    await service.revoke(700)
    await service.delete(700)
    await import_keys(service, [keys[0]])  # the same hardware again: a second row with serial 700
    await service.revoke(705)
    clock.advance(3600)
    await import_keys(service, [keys[8]])
    async with writer(engine).begin() as conn:
        await conn.execute(sa.update(otp_yubikeys).where(otp_yubikeys.c.serial == 704)
                           .values(blocked_until=clock.now + timedelta(minutes=5)))
        key_id = (await conn.execute(sa.select(otp_yubikeys.c.id).where(otp_yubikeys.c.serial == 702))).scalar_one()
        await conn.execute(otp_events.insert().values(
            at=clock.now, kind="otp.security.replay", key_id=key_id, serial=702, source="203.0.113.9", client_id=None,
            detail='{"counter": [3, 1]}', occurrences=4))


def _filters(clock) -> list[ReportFilter]:
    day2 = (clock.now - timedelta(hours=2)).date().isoformat()
    return [ReportFilter.from_mapping(kw) for kw in (
        {}, {"status": "unassigned"}, {"status": "ACTIVE"}, {"status": "revoked"}, {"serial": "700"},
        {"serial": "700", "include_deleted": "false"}, {"user": "kate"}, {"user": "mia"}, {"user": "nobody"},
        {"public_id": make_key(703).public_id.upper()}, {"imported_after": day2}, {"imported_before": day2},
        {"enrolled_after": (clock.now - timedelta(minutes=100)).isoformat()},
        {"enrolled_before": (clock.now - timedelta(minutes=75)).isoformat(), "status": "active"},
        {"last_used_after": day2, "last_used_before": (clock.now + timedelta(days=1)).isoformat()},
        {"include_deleted": "false"},
        # an offset other than UTC: parsed to UTC before either binds it
        {"imported_after": (clock.now - timedelta(hours=3)).astimezone().isoformat()},
    )]


@SQLITE
async def test_report_pages_match_the_service(service, clock, engine, db_url):
    await _fill(service, clock, engine)
    path = sqlite_path(db_url)
    assert path is not None and path.is_file()
    nonempty = 0
    with OtpReads(path) as reads:
        for flt in _filters(clock):
            for with_history in (True, False):
                for limit in (1, 2, 3, 100):
                    expected = await _pages(lambda p: service.report_page(flt, p, with_history=with_history), limit)
                    got = await _pages(lambda p: reads.report_page(flt, p, with_history=with_history), limit)
                    assert got == expected, flt
                    # the key ids too, which equality leaves out
                    assert [[r.key_id for r in items] for items, _ in got] == \
                        [[r.key_id for r in items] for items, _ in expected]
            nonempty += bool(expected[0][0])
    assert nonempty >= len(_filters(clock)) - 2  # the filters select something ("nobody" and one more do not)
    every = await _pages(lambda p: service.report_page(ReportFilter(), p), 100)
    rows = every[0][0]
    assert [r.serial for r in rows] == [700, 700, 701, 702, 703, 704, 705, 706, 707, 708]
    assert any(e["event"] == "otp.security.replay" and e["occurrences"] == 4 for r in rows for e in r.history)
    assert any(r.blocked_until is not None for r in rows) and any(r.deleted for r in rows)


@SQLITE
async def test_a_cursor_from_the_service_reads_on_alike(service, clock, engine, db_url):
    await _fill(service, clock, engine)
    first = await service.report_page(ReportFilter(), PageRequest(limit=3, after=None))
    after = decode_cursor(first.next_cursor, REPORT_KEY)
    with OtpReads(sqlite_path(db_url)) as reads:
        got = await reads.report_page(ReportFilter(), PageRequest(limit=4, after=after))
    assert got == await service.report_page(ReportFilter(), PageRequest(limit=4, after=after))
