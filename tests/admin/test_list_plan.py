"""A page of the certificate list is an index walk, not a sort of the table (SQLite's plan of the query the
list runs; bench/cert_list.py measures both databases): newest first by ix_certificates_issued, the device
filter by its two indexes."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from scep_server.binding.certlinks import BoundCertificates
from scep_server.ca.queries import CertFilter, CertificateQueries
from trustkit.paging import PageRequest

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def _plan(engine, f: CertFilter) -> str:
    """SQLite's plan of the statement `CertificateQueries.list` executes for `f`."""
    seen: list[tuple[str, tuple]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        await CertificateQueries(engine, device_links=BoundCertificates()).list(PageRequest(limit=100, after=None), f)
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", capture)
    [(statement, parameters)] = seen
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        cursor = await raw.driver_connection.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        rows = await cursor.fetchall()
    return "\n".join(str(r[-1]) for r in rows)


async def test_pages_walk_the_issue_time_index(engine):
    for f in (CertFilter(), CertFilter(profile="p")):
        plan = await _plan(engine, f)
        assert "ix_certificates_issued" in plan and "TEMP B-TREE" not in plan, plan


async def test_the_device_filter_uses_its_indexes(engine):
    plan = await _plan(engine, CertFilter(device="dev-1"))
    assert "ix_device_certs_device" in plan and "ix_certificates_enrolled_device" in plan, plan
