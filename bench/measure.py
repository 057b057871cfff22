"""What the benchmarks share: ports, process CPU time from /proc, the store's durable commit rate, and the
PostgreSQL administration connection (fresh databases per run)."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time


PG_ADMIN = os.environ.get("SCEP_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pg_admin(sql: str) -> None:
    """Run one statement (CREATE / DROP DATABASE) on the administration connection."""
    import asyncpg

    async def go():
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    asyncio.run(go())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_pids(proc: subprocess.Popen) -> list[int]:
    """A `scep-server serve` supervisor and its forked workers."""
    pids = [proc.pid]
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            pids += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return pids


def cpu_seconds(pids: list[int] | None = None, comm: str | None = None) -> float:
    """CPU time (user + system) of the given processes, or of every process with this command name."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc") if pids is None else map(str, pids):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        if comm is not None and stat[stat.index("(") + 1:stat.rindex(")")] != comm:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


async def commit_rate(url: str, seconds: float) -> float:
    """Durable single-row commits/s on one connection through the store's engine (a target's reference)."""
    import sqlalchemy as sa

    from trustkit.db import create_engine, writer

    engine = create_engine(url)
    try:
        async with writer(engine).begin() as conn:
            await conn.execute(sa.text("CREATE TABLE IF NOT EXISTS bench_commit (id INTEGER PRIMARY KEY, n INTEGER)"))
            await conn.execute(sa.text("DELETE FROM bench_commit"))
            await conn.execute(sa.text("INSERT INTO bench_commit VALUES (1, 0)"))
        stmt = sa.text("UPDATE bench_commit SET n = n + 1 WHERE id = 1")
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            async with writer(engine).begin() as conn:
                await conn.execute(stmt)
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        await engine.dispose()
