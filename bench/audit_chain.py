"""What the audit trail's hash chain costs ([audit] chain; docs/audit.md "The hash chain").

    .venv/bin/python bench/audit_chain.py               # SQLite (a temporary file)
    .venv/bin/python bench/audit_chain.py --pg          # PostgreSQL at 127.0.0.1:5432 (a fresh database)

Writes `--events` audit events (in transactions of `--per-tx`, as the server's changes do), then times:
the anchor (the first seal, over events written before the chain), sealing a backlog of new events in one
call, sealing them as a server does (a seal after every `--per-seal` events), and `audit verify` over all
of them. Prints microseconds per event (wall and this process's CPU) and a `RESULT {json}` line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import PG_ADMIN, pg_admin  # noqa: E402  (bench/measure.py)


async def _write(engine, n: int, per_tx: int, start: int) -> None:
    from scep_server.store.events import record_event
    from trustkit.db import writer

    for first in range(start, start + n, per_tx):
        async with writer(engine).begin() as conn:
            for i in range(first, min(first + per_tx, start + n)):
                await record_event(conn, at=datetime.now(timezone.utc), kind="pki.cert.issue",
                                   subject=f"{i:040x}", actor="scep:default",
                                   data={"profile": "default", "transaction_id": f"tx-{i}", "renewal_of": None})


async def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await fn()
    return time.perf_counter() - wall, time.process_time() - cpu


async def run(url: str, events: int, per_tx: int, per_seal: int) -> dict:
    from scep_server.store import chain
    from scep_server.store.migrate import upgrade
    from trustkit.db import create_engine

    engine = create_engine(url)
    now = datetime.now(timezone.utc)
    try:
        await upgrade(engine)
        await _write(engine, events, per_tx, 0)
        anchor = await _timed(lambda: chain.seal(engine, now=now))
        await _write(engine, events, per_tx, events)
        backlog = await _timed(lambda: chain.seal(engine, now=now))

        async def as_a_server():
            for start in range(2 * events, 3 * events, per_seal):
                await _write(engine, per_seal, per_tx, start)
                await chain.seal(engine, now=now)

        written_only = await _timed(lambda: _write(engine, events, per_tx, 3 * events))
        await chain.seal(engine, now=now)
        interleaved = await _timed(as_a_server)
        result: dict = {}
        verify = await _timed(lambda: _verify(engine, result))
        assert result["ok"], result
    finally:
        await engine.dispose()

    def us(t: tuple[float, float], n: int) -> dict:
        return {"wall_us": round(t[0] / n * 1e6, 1), "cpu_us": round(t[1] / n * 1e6, 1)}

    return {"events": events, "per_tx": per_tx, "per_seal": per_seal, "anchor": us(anchor, events),
            "seal_backlog": us(backlog, events), "write_only": us(written_only, events),
            "write_and_seal": us(interleaved, events), "verify": us(verify, 4 * events)}


async def _verify(engine, out: dict) -> None:
    from scep_server.store import chain

    out.update((await chain.verify(engine)).to_json())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", action="store_true")
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--per-tx", type=int, default=1, help="events per write transaction")
    ap.add_argument("--per-seal", type=int, default=50, help="events written between two seals")
    args = ap.parse_args()
    if args.pg:
        name = f"bench_audit_{uuid.uuid4().hex[:8]}"
        pg_admin(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
        try:
            figures = asyncio.run(run(url, args.events, args.per_tx, args.per_seal))
        finally:
            pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        with tempfile.TemporaryDirectory() as tmp:
            figures = asyncio.run(run(f"sqlite+aiosqlite:///{tmp}/bench.db", args.events, args.per_tx,
                                      args.per_seal))
    figures["backend"] = "postgresql" if args.pg else "sqlite"
    for key in ("anchor", "seal_backlog", "write_only", "write_and_seal", "verify"):
        print(f"{key:15} {figures[key]['wall_us']:9.1f} us wall  {figures[key]['cpu_us']:9.1f} us CPU per event")
    print("RESULT " + json.dumps(figures))


if __name__ == "__main__":
    main()
