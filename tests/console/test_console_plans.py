"""The console's costly queries are index walks (SQLite's plans; bench/console.py measures both databases): the
YubiKey report of one status in page order, and the dashboard's enrolments per hour from one index alone."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from otp.config import OtpSettings
from otp.report import ReportFilter
from otp.service import OtpService
from scep_server.challenge.enrolments import hourly_outcomes
from trustkit.paging import PageRequest

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def _plans(engine, run) -> list[str]:
    """SQLite's plan of each SELECT `run()` executes."""
    seen: list[tuple[str, tuple]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        await run()
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", capture)
    out = []
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        for statement, parameters in seen:
            cursor = await raw.driver_connection.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            out.append("\n".join(str(r[-1]) for r in await cursor.fetchall()))
    return out


async def test_a_report_page_of_one_status_walks_the_status_index_in_page_order(engine):
    async with OtpService(engine, OtpSettings(), b"\0" * 32) as otp:
        plans = await _plans(engine, lambda: otp.report_page(ReportFilter(status="ACTIVE"),
                                                             PageRequest(limit=50, after=None), with_history=False))
    [plan] = plans
    assert "ix_otp_yubikeys_status_serial" in plan and "TEMP B-TREE" not in plan, plan


async def test_the_enrolment_chart_reads_one_index_alone(engine):
    now = datetime(2026, 11, 23, tzinfo=timezone.utc)
    [plan] = await _plans(engine, lambda: hourly_outcomes(engine, now - timedelta(days=7), now))
    assert "COVERING INDEX ix_scep_transactions_created_state" in plan, plan
