"""The admin console's list pages over a large inventory: N YubiKeys and N certificates bulk-inserted (Core
inserts, fake sealed secrets and DER) into a freshly initialised server, then the first page of /admin/yubikeys
and /admin/certificates, with and without a filter, requested R times over loopback from a signed-in session.

    .venv/bin/python bench/console.py                       # 100,000 of each, SQLite (about 50 s)
    .venv/bin/python bench/console.py --db postgresql       # the same on PostgreSQL (about 70 s)
    .venv/bin/python bench/console.py --rows 20000 --requests 10 --db sqlite

Prints p50/p95 of each page in milliseconds (the time from sending the request to the last byte of the page:
the server's time plus a loopback round trip). Target: under 300 ms at 100,000 rows.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from aiohttp import web  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from otp.kek import SecretBox  # noqa: E402
from otp.tables import otp_imports, otp_verify_counts, otp_yubikeys  # noqa: E402
from scep_server.app import create_app  # noqa: E402
from scep_server.appkeys import RUNTIME  # noqa: E402
from scep_server.config import load_settings  # noqa: E402
from scep_server.runtime import initialise  # noqa: E402
from scep_server.store.tables import certificates, scep_transactions  # noqa: E402
from trustkit.db import create_engine, writer  # noqa: E402

PG_ADMIN_URL = os.environ.get("SCEP_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
CHUNK = 5000
STATUSES = ("UNASSIGNED", "ACTIVE", "REVOKED")
TX_STATES = ("issued",) * 7 + ("pending", "rejected", "awaiting_ack")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    u = make_url(PG_ADMIN_URL)
    conn = await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 database=u.database or "postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _modhex(n: int) -> str:
    return "".join("cbdefghijklnrtuv"[(n >> (4 * i)) & 15] for i in range(12))


async def insert(conn, table: sa.Table, rows: list[dict]) -> None:
    """Bulk insert: COPY on PostgreSQL (asyncpg), an executemany elsewhere."""
    if conn.dialect.name != "postgresql":
        await conn.execute(table.insert(), rows)
        return
    columns = list(rows[0])
    raw = await conn.get_raw_connection()
    await raw.driver_connection.copy_records_to_table(table.name, records=[tuple(r[c] for c in columns) for r in rows],
                                                      columns=columns)


async def seed(url: str, n: int, now: datetime, *, kek_id: str) -> None:
    """N YubiKeys (a third of each status), N certificates (1 in 50 revoked) of the CA `default`, and for the
    dashboard N/2 enrolments and 168 hours of OTP verification counts over the last 7 days."""
    engine = create_engine(url)
    try:
        async with writer(engine).begin() as conn:
            import_id = (await conn.execute(otp_imports.insert().values(
                at=now, actor="bench", format="yubico", key_count=n, file_sha256="0" * 64)
                .returning(otp_imports.c.id))).scalar_one()
            for start in range(0, n, CHUNK):
                rows = []
                for i in range(start, min(n, start + CHUNK)):
                    status = STATUSES[i % 3]
                    rows.append(dict(serial=10_000_000 + i, public_id=_modhex(0xFF0000000000 + i), status=status,
                                     user_name=f"user{i}" if status == "ACTIVE" else None,
                                     last_user=f"user{i}" if status != "UNASSIGNED" else None,
                                     secret_sealed=b"\0" * 60, kek_id=kek_id, import_id=import_id,
                                     source_line=i + 1, imported_at=now - timedelta(seconds=i),
                                     enrolled_at=now if status != "UNASSIGNED" else None,
                                     revoked_at=now if status == "REVOKED" else None))
                await insert(conn, otp_yubikeys, rows)
            for start in range(0, n, CHUNK):
                rows = []
                for i in range(start, min(n, start + CHUNK)):
                    serial = format((1 << 126) | (i * 2654435761 % (1 << 64)) << 32 | i, "x")
                    rows.append(dict(serial=serial, ca="default", profile=f"p{i % 5}", subject=f"CN=device-{i}",
                                     sans="[]", not_before=now - timedelta(minutes=i),
                                     not_after=now + timedelta(days=365, minutes=-i),
                                     status="valid" if i % 50 else "revoked",
                                     revoked_at=None if i % 50 else now, revocation_reason=None if i % 50 else 4,
                                     public_key_sha256="k" * 64,
                                     der=b"\x30" * 300, fingerprint_sha256=hashlib.sha256(serial.encode()).hexdigest(),
                                     issued_at=now - timedelta(minutes=i), updated_at=now))
                await insert(conn, certificates, rows)
            # the dashboard's charts: N/2 enrolments and an hour of OTP verification counts each, over 7 days
            week = 7 * 24 * 3600
            for start in range(0, n // 2, CHUNK):
                rows = []
                for i in range(start, min(n // 2, start + CHUNK)):
                    at = now - timedelta(seconds=(i * 7919) % week)
                    rows.append(dict(profile=f"p{i % 5}", transaction_id=f"tx-{i}", state=TX_STATES[i % 10],
                                     message_type=19, csr_der=b"-", public_key_sha256="0" * 64, created_at=at,
                                     updated_at=at))
                await insert(conn, scep_transactions, rows)
            hour = now.replace(minute=0, second=0, microsecond=0)
            await conn.execute(otp_verify_counts.insert(), [
                dict(hour=hour - timedelta(hours=h), api=api, status=status, count=10 + h % 7)
                for h in range(168) for api in ("signin", "wsapi") for status in ("OK", "BAD_OTP", "REPLAYED_OTP")])
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                await conn.execute(sa.text("ANALYZE"))
    finally:
        await engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(http: aiohttp.ClientSession, url: str, cookie: str, requests: int) -> tuple[float, float, int]:
    """(p50, p95) in ms of `requests` GETs of `url` (one warm-up first), and the rows on the page."""
    times = []
    rows = 0
    for i in range(requests + 1):
        started = time.perf_counter()
        async with http.get(url, headers={"Cookie": f"console_session={cookie}"}, allow_redirects=False) as r:
            text = await r.text()
            if r.status != 200:
                raise SystemExit(f"{url}: {r.status}")
        if i:
            times.append((time.perf_counter() - started) * 1000)
        rows = len(re.findall(r'<tr class="(?:key|cert)"', text))
    times.sort()
    p95 = times[min(len(times) - 1, max(0, round(0.95 * len(times)) - 1))]
    return statistics.median(times), p95, rows


async def run(kind: str, n: int, requests: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    if kind == "postgresql":
        name = f"bench_console_{uuid.uuid4().hex[:8]}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
    port = _free_port()
    settings = load_settings(None, data_dir=str(tmp / "data"), server={"listen": f"127.0.0.1:{port}"},
                             ca={"key_size": 2048}, log={"level": "warning"}, database={"url": url},
                             metrics={"enabled": False})
    runner = None
    try:
        await initialise(settings)
        # the key-encryption key the server will use (created now), so the fake keys are sealed "under" it
        kek_id = SecretBox(settings.otp.load_kek(settings.data_dir)).kek_id
        now = datetime.now(timezone.utc)
        started = time.perf_counter()
        await seed(url, n, now, kek_id=kek_id)
        print(f"{kind}: {n:,} YubiKeys, {n:,} certificates and {n // 2:,} enrolments inserted in "
              f"{time.perf_counter() - started:.1f} s")
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runtime = app[RUNTIME]
        _, token = await runtime.tokens.create(scope="admin", name="bench", now=runtime.clock())
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            async with http.post(base + "/admin/login", data={"token": token}, allow_redirects=False) as r:
                assert r.status == 303, r.status
                cookie = r.cookies["console_session"].value
            for label, path in (("yubikeys", "/admin/yubikeys"),
                                ("yubikeys status=ACTIVE", "/admin/yubikeys?status=ACTIVE"),
                                ("yubikeys user=user4", "/admin/yubikeys?user=user4"),
                                ("certificates", "/admin/certificates"),
                                ("certificates status=revoked", "/admin/certificates?status=revoked"),
                                ("certificates profile=p3", "/admin/certificates?profile=p3"),
                                ("dashboard (7 days of charts)", "/admin/")):
                p50, p95, rows = await measure(http, base + path, cookie, requests)
                flag = "" if p95 < 300 else "  (over the 300 ms target)"
                print(f"  {label:<30} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  ({requests} requests, {rows} rows)"
                      f"{flag}")
    finally:
        if runner is not None:
            await runner.cleanup()
        if kind == "postgresql":
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="YubiKeys, and certificates (each)")
    parser.add_argument("--requests", type=int, default=20, help="requests of each page")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    args = parser.parse_args()
    for kind in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
        asyncio.run(run(kind, args.rows, args.requests))


if __name__ == "__main__":
    main()
