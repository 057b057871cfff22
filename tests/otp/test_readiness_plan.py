"""The OTP check of /readyz (unauthenticated, computed at each call) reads two ranges of an index, never every
key: its statements are planned without a walk of otp_yubikeys, on SQLite and PostgreSQL."""
from __future__ import annotations

import json

import sqlalchemy as sa

from scep_server.runtime import initialise, open_runtime
from tests.factories import settings_for
from tests.otp.conftest import make_key, secrets_file


async def test_the_readiness_check_reads_no_key_it_need_not(tmp_path, db_url):
    settings = settings_for(tmp_path / "data", db_url)
    await initialise(settings)
    async with open_runtime(settings) as rt:
        assert (await rt.otp.import_secrets(secrets_file([make_key(600_400 + i) for i in range(3)]))).ok
        statements: list[tuple[str, object]] = []

        def seen(conn, cursor, statement, parameters, context, executemany):
            if "otp_yubikeys" in statement:
                statements.append((statement, parameters))

        sa.event.listen(rt.engine.sync_engine, "before_cursor_execute", seen)
        try:
            assert await rt.readiness["otp"]() == "ok"
        finally:
            sa.event.remove(rt.engine.sync_engine, "before_cursor_execute", seen)
        assert statements
        async with rt.engine.connect() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:  # a walk of the table is then chosen only when nothing else can answer
                await conn.exec_driver_sql("SET enable_seqscan = off")
            for statement, parameters in statements:
                if postgres:
                    text = (await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)).scalar_one()
                    plan = json.loads(text) if isinstance(text, str) else text
                    scans = list(_nodes(plan[0]["Plan"]))
                    assert not any(n["Node Type"] == "Seq Scan" for n in scans), json.dumps(plan, indent=1)
                    # every index read is a range of kek_id, not the whole of an index filtered row by row
                    reads = [n for n in scans if "Index Name" in n]
                    assert reads and all("kek_id" in n.get("Index Cond", "") for n in reads), json.dumps(plan, indent=1)
                else:
                    rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
                    detail = " | ".join(str(r[-1]) for r in rows)
                    assert "SCAN otp_yubikeys" not in detail and "SEARCH otp_yubikeys" in detail, detail


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)
