"""The audit trail's hash chain ([audit] chain): sealed rows link to each other and to an anchor over the
events written before; verification names the first altered row or the row after a deleted one; two
processes writing and sealing one database at once never fork the chain."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from scep_server.store import chain
from scep_server.store.events import record_event
from scep_server.store.tables import events, events_chain
from tests.factories import NOW, settings_for
from tests.server import start_app
from trustkit.db import create_engine, writer

ROOT = Path(__file__).resolve().parents[2]


async def _write(engine, n: int, *, start: int = 0, kind: str = "test.event") -> None:
    async with writer(engine).begin() as conn:
        for i in range(start, start + n):
            await record_event(conn, at=NOW + timedelta(seconds=i, microseconds=7), kind=kind, subject=f"s{i}",
                               actor="tester", data={"i": i, "text": "naïve ✓"})


async def _ids_by_seq(engine) -> dict[int, int]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.chain_seq, events.c.id).where(events.c.chain_seq > 0))).all()
    return {seq: row_id for seq, row_id in rows}


async def _exec(engine, stmt) -> None:
    async with writer(engine).begin() as conn:
        await conn.execute(stmt)


async def test_anchor_links_and_a_clean_verification(engine):
    assert (await chain.verify(engine)).started is False
    await _write(engine, 3)  # written before the chain was switched on
    assert await chain.seal(engine, now=NOW) == 0  # the first seal anchors them
    await _write(engine, 4, start=3)
    assert await chain.seal(engine, now=NOW) == 4
    assert await chain.seal(engine, now=NOW) == 0
    await _write(engine, 1, start=7)
    result = await chain.verify(engine)
    assert (result.ok, result.anchored, result.checked, result.unsealed, result.head_seq) == (True, 3, 4, 1, 4)
    assert await chain.seal(engine, now=NOW) == 1
    result = await chain.verify(engine)
    assert (result.ok, result.checked, result.unsealed) == (True, 5, 0)
    assert sorted(await _ids_by_seq(engine)) == [1, 2, 3, 4, 5]


async def test_a_tampered_row_is_named(engine):
    await chain.seal(engine, now=NOW)
    await _write(engine, 5)
    await chain.seal(engine, now=NOW)
    ids = await _ids_by_seq(engine)
    await _exec(engine, events.update().where(events.c.id == ids[3]).values(actor="someone else"))
    result = await chain.verify(engine)
    assert not result.ok and result.broken_id == ids[3] and "does not match its hash" in result.problem
    # rewriting the row's hash as well moves the break to the next row, never hides it
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(events).where(events.c.id == ids[3]))).first()
        previous = (await conn.execute(sa.select(events.c.chain_hash).where(events.c.id == ids[2]))).scalar_one()
    await _exec(engine, events.update().where(events.c.id == ids[3]).values(chain_hash=chain.link(previous, 3, row)))
    result = await chain.verify(engine)
    assert not result.ok and result.broken_id == ids[4]


async def test_a_deleted_row_is_named_by_the_one_after_it(engine):
    await chain.seal(engine, now=NOW)
    await _write(engine, 5)
    await chain.seal(engine, now=NOW)
    ids = await _ids_by_seq(engine)
    await _exec(engine, events.delete().where(events.c.id == ids[2]))
    result = await chain.verify(engine)
    assert not result.ok and result.broken_id == ids[3] and "missing" in result.problem


async def test_deleting_the_last_rows_is_seen_at_the_head(engine):
    await chain.seal(engine, now=NOW)
    await _write(engine, 3)
    await chain.seal(engine, now=NOW)
    ids = await _ids_by_seq(engine)
    await _exec(engine, events.delete().where(events.c.id == ids[3]))
    result = await chain.verify(engine)
    assert not result.ok and result.broken_id is None and "last events were deleted" in result.problem


async def test_the_anchor_covers_the_events_before_the_chain(engine):
    await _write(engine, 3)
    await chain.seal(engine, now=NOW)
    async with engine.connect() as conn:
        first = (await conn.execute(sa.select(sa.func.min(events.c.id)))).scalar_one()
    await _exec(engine, events.update().where(events.c.id == first).values(data='{"i": 99}'))
    result = await chain.verify(engine)
    assert not result.ok and "before the chain was started" in result.problem
    await _exec(engine, events.delete().where(events.c.id == first))
    result = await chain.verify(engine)
    assert not result.ok and "2 remain" in result.problem
    # a row slipped into the anchor (chain_seq 0) by hand is no better
    await _exec(engine, events.update().where(events.c.id == first + 1).values(chain_seq=None))
    assert not (await chain.verify(engine)).ok


async def test_a_head_rewound_by_hand_is_seen(engine):
    await chain.seal(engine, now=NOW)
    await _write(engine, 2)
    await chain.seal(engine, now=NOW)
    await _exec(engine, events_chain.update().values(hash="f" * 64))
    assert not (await chain.verify(engine)).ok


_WRITER = textwrap.dedent("""
    import asyncio, sys
    from datetime import datetime, timezone
    from scep_server.store import chain
    from scep_server.store.events import record_event
    from trustkit.db import create_engine, writer

    async def main(url, name, rounds):
        engine = create_engine(url)
        try:
            for i in range(rounds):
                async with writer(engine).begin() as conn:
                    await record_event(conn, at=datetime.now(timezone.utc), kind="test.concurrent",
                                       subject=f"{name}-{i}", actor=name, data={"i": i})
                await chain.seal(engine, now=datetime.now(timezone.utc))
        finally:
            await engine.dispose()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


async def test_two_processes_appending_at_once_never_fork_the_chain(db_url):
    engine = create_engine(db_url)
    try:
        await _write(engine, 2)  # an anchor to start from, raced for by both processes
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", _WRITER, db_url, name, "40", env=env,
                                                      stderr=subprocess.PIPE)
                 for name in ("a", "b")]
        for p in procs:
            _, err = await asyncio.wait_for(p.communicate(), 120)
            assert p.returncode == 0, err.decode()[-2000:]
        result = await chain.verify(engine)
        # the first seal anchors what exists then: the two rows, and perhaps a first row of the other process
        assert (result.ok, result.anchored + result.checked, result.unsealed) == (True, 82, 0), result
        assert result.anchored >= 2 and sorted(await _ids_by_seq(engine)) == list(range(1, result.checked + 1))
    finally:
        await engine.dispose()


def test_cli_commands_seal_and_verify_names_the_broken_row(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_AUDIT__CHAIN", "true")
    cli("device", "add", "dev-1")
    cli("device", "suspend", "dev-1")
    assert cli("audit", "verify").startswith("ok: ")  # the commands sealed their own events on the way out
    settings = settings_for(tmp_path / "data")

    async def tamper() -> int:
        engine = create_engine(settings.database_url())
        try:
            ids = await _ids_by_seq(engine)
            await _exec(engine, events.update().where(events.c.id == ids[max(ids)]).values(subject="dev-2"))
            return ids[max(ids)]
        finally:
            await engine.dispose()

    broken = asyncio.run(tamper())
    out = cli("audit", "verify", code=1)
    assert f"BROKEN: first broken event: {broken};" in out


async def test_the_server_seals_what_it_writes(aiohttp_server, tmp_path, db_url):
    app = await start_app(aiohttp_server, tmp_path, db_url, audit={"chain": True, "seal_interval": 0.05})
    rt = app.runtime
    _, admin = await rt.tokens.create(scope="admin", name="ops", now=NOW)
    for _ in range(200):  # the sealer's first round starts the chain (what exists then is anchored)
        if (await chain.verify(rt.engine)).started:
            break
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession(app.url, headers={"Authorization": f"Bearer {admin}"}) as http:
        async with http.post("/api/v1/devices", json={"id": "dev-1"}) as r:
            assert r.status == 201
    for _ in range(200):
        result = await chain.verify(rt.engine)
        if result.started and result.unsealed == 0 and result.checked >= 1:
            break
        await asyncio.sleep(0.05)
    assert result.ok and result.checked >= 1 and result.unsealed == 0, result
    async with aiohttp.ClientSession(app.url, headers={"Authorization": f"Bearer {admin}"}) as http:
        async with http.get("/api/v1/events", params={"subject": "dev-1"}) as r:
            [event] = (await r.json())["events"]
    assert event["chain_seq"] >= 1 and len(event["chain_hash"]) == 64


async def test_verification_reads_in_pages_and_sees_a_number_used_twice(engine, monkeypatch):
    monkeypatch.setattr(chain, "READ_BATCH", 2)  # every page boundary is crossed
    await _write(engine, 3)
    await chain.seal(engine, now=NOW)
    await _write(engine, 5, start=3)
    await chain.seal(engine, now=NOW)
    result = await chain.verify(engine)
    assert (result.ok, result.anchored, result.checked) == (True, 3, 5)
    ids = await _ids_by_seq(engine)
    await _exec(engine, events.update().where(events.c.id == ids[3]).values(chain_seq=2))
    result = await chain.verify(engine)
    assert not result.ok and result.broken_id == ids[3] and "appears twice" in result.problem
