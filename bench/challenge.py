"""One-time SCEP challenges: issuance and redemption rates on SQLite and PostgreSQL.

    .venv/bin/python bench/challenge.py                      # both back ends, 5,000 challenges each
    .venv/bin/python bench/challenge.py --count 20000 --backends sqlite
    .venv/bin/python bench/challenge.py --pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

For each back end, on a freshly migrated database (SQLite: a file with the server's defaults, WAL and
synchronous=FULL; PostgreSQL: a new database, dropped afterwards), through ChallengeStore as the server uses it:
- issue, 1 task: challenges created one after another (one write transaction each);
- issue, N tasks: the same with N concurrent tasks (a scraper or Jamf fetching for many devices at once);
- issue+cap, N tasks: with a cap of unused challenges set (a count under a lock per issue);
- redeem, N tasks: every challenge redeemed once by N concurrent tasks (read, then compare-and-set);
- HTTP JSON, N clients: GET /scep/{profile}/challenge with Basic auth against the full application
  in this process (one worker), N concurrent clients.
Target (issue 4): at least 1,000 challenges/s issued.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.engine import make_url  # noqa: E402

from scep_server.challenge.basic import hash_password  # noqa: E402
from scep_server.challenge.store import ChallengeStore  # noqa: E402
from scep_server.profiles import ProfileSettings, ProfileStore  # noqa: E402
from trustkit.db import create_engine  # noqa: E402
from scep_server.store.migrate import upgrade  # noqa: E402

TTL = timedelta(minutes=60)
TARGET = 1000.0


async def pg_admin(admin_url: str, sql: str) -> None:
    import asyncpg

    u = make_url(admin_url)
    conn = await asyncpg.connect(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
                                 password=u.password, database=u.database or "postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def rate(label: str, n: int, tasks: int, fn) -> float:
    """Run fn(i) for i in range(n) with `tasks` concurrent workers; print and return operations per second."""
    queue = iter(range(n))

    async def worker():
        for i in queue:
            await fn(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    elapsed = time.perf_counter() - started
    ops = n / elapsed
    print(f"  {label:<28} {n:>7} in {elapsed:7.2f} s  {ops:>9,.0f}/s")
    return ops


async def store_bench(url: str, count: int, tasks: int) -> dict[str, float]:
    engine = create_engine(url)
    try:
        await upgrade(engine)
        from trustkit.db import writer
        from scep_server.store.tables import cas

        now = datetime.now(timezone.utc)
        async with writer(engine).begin() as conn:
            await conn.execute(cas.insert().values(name="bench", kind="issuing", subject="CN=bench", cert_der=b"x",
                                                   ski_hex="00", fingerprint_sha256="0" * 64, created_at=now))
        profiles = ProfileStore(engine)
        for name in ("p1", "p2"):
            await profiles.create(name, ca="bench", challenge_kind="dynamic", now=now)
        store = ChallengeStore(engine)
        issued: list[str] = []

        async def issue(i, profile="p1", cap=None):
            got = await store.issue(profile, now=now, ttl=TTL, source="bench", max_unused=cap)
            issued.append(got.challenge)

        out = {}
        out["issue, 1 task"] = await rate("issue, 1 task", count // 5, 1, issue)
        out[f"issue, {tasks} tasks"] = await rate(f"issue, {tasks} tasks", count, tasks, issue)
        out[f"issue+cap, {tasks} tasks"] = await rate(f"issue+cap, {tasks} tasks", count, tasks,
                                                      lambda i: issue(i, "p2", 10 * count))
        challenges = list(issued)

        async def redeem(i):
            await store.redeem("p1" if i < count + count // 5 else "p2", challenges[i], now=now,
                               transaction_id=f"tx-{i}")

        out[f"redeem, {tasks} tasks"] = await rate(f"redeem, {tasks} tasks", len(challenges), tasks, redeem)
        return out
    finally:
        await engine.dispose()


async def http_bench(url: str, count: int, clients: int, workdir: Path) -> float:
    import aiohttp
    from aiohttp import web

    from scep_server.app import create_app
    from scep_server.appkeys import RUNTIME
    from scep_server.config import load_settings
    from scep_server.runtime import initialise

    settings = load_settings(None, data_dir=str(workdir), database={"url": url}, ca={"key_size": 2048},
                             log={"level": "warning"}, server={"listen": "127.0.0.1:0"})
    import logging

    from scep_server.logs import configure

    configure("warning", "json")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    await initialise(settings)
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        rt = app[RUNTIME]
        await rt.profiles.create("http", ca=next(iter(rt.cas)), challenge_kind="dynamic", now=rt.clock(),
                                 settings=ProfileSettings(challenge={"credentials": {
                                     "username": "jamf", "password_hash": hash_password("secret")}}))
        headers = {"Authorization": "Basic " + base64.b64encode(b"jamf:secret").decode(),
                   "Accept": "application/json"}
        target = f"http://127.0.0.1:{port}/scep/http/challenge"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:
            async with s.get(target, headers=headers) as resp:  # warm-up: scrypt once, then remembered
                assert resp.status == 200, await resp.text()

            async def fetch(i):
                async with s.get(target, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
                    await resp.read()

            return await rate(f"HTTP JSON, {clients} clients", count, clients, fetch)
    finally:
        await runner.cleanup()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=os.environ.get("SCEP_TEST_PG_URL",
                                                       "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--no-http", action="store_true")
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="challenge-bench-") as tmp:
            pg_db = None
            if backend == "sqlite":
                url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
                http_url = f"sqlite+aiosqlite:///{Path(tmp) / 'http.db'}"
            else:
                pg_db = f"scep_bench_{uuid.uuid4().hex[:10]}"
                await pg_admin(args.pg_url, f'CREATE DATABASE "{pg_db}"')
                await pg_admin(args.pg_url, f'CREATE DATABASE "{pg_db}_http"')
                url = make_url(args.pg_url).set(database=pg_db).render_as_string(hide_password=False)
                http_url = make_url(args.pg_url).set(database=pg_db + "_http").render_as_string(hide_password=False)
            try:
                print(f"{backend}:")
                results[backend] = await store_bench(url, args.count, args.tasks)
                if not args.no_http:
                    results[backend]["HTTP JSON"] = await http_bench(http_url, args.count // 2, args.tasks,
                                                                     Path(tmp) / "data")
            finally:
                if pg_db:
                    for name in (pg_db, pg_db + "_http"):
                        await pg_admin(args.pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print()
    for backend, figures in results.items():
        best = max(v for k, v in figures.items() if k.startswith("issue"))
        print(f"{backend}: best issuance {best:,.0f}/s -> target {TARGET:,.0f}/s "
              f"{'met' if best >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    asyncio.run(main())
