"""Pages of the certificate list (`GET /api/v1/certificates`, `scep-server cert list`) over a large inventory:
N certificate rows (fake DER) and N/10 device bindings inserted into a fresh migrated database, then the first
pages of each filter timed through `scep_server.ca.queries.CertificateQueries`.

    .venv/bin/python bench/cert_list.py                    # 100,000 rows, SQLite file then PostgreSQL
    .venv/bin/python bench/cert_list.py --rows 1000000 --db postgresql

Target: a page costs one index walk wherever it starts and whatever the filter: tens of milliseconds at
100,000 certificates, not a sort of the table.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from scep_server.binding.certlinks import BoundCertificates  # noqa: E402
from scep_server.binding.tables import device_certs, devices  # noqa: E402
from scep_server.ca.queries import CertFilter, CertificateQueries  # noqa: E402
from scep_server.ca.status import CertStatus  # noqa: E402
from scep_server.store.migrate import upgrade  # noqa: E402
from scep_server.store.tables import cas, certificates  # noqa: E402
from trustkit.db import create_engine, writer  # noqa: E402
from trustkit.paging import PageRequest, decode_cursor  # noqa: E402

PG_ADMIN_URL = os.environ.get("SCEP_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


async def _pg_admin(sql: str) -> None:
    import asyncpg

    u = make_url(PG_ADMIN_URL)
    conn = await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 database=u.database or "postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fill(engine, n: int) -> list[str]:
    await upgrade(engine)
    async with writer(engine).begin() as conn:
        await conn.execute(cas.insert().values(name="default", kind="issuing", subject="CN=x", cert_der=b"x",
                                               ski_hex="00", fingerprint_sha256="f" * 64, created_at=NOW))
        await conn.execute(devices.insert(), [dict(id=f"dev-{i}", name="", status="active", created_at=NOW,
                                                   status_changed_at=NOW) for i in range(n // 10)])
    serials, rows, binds = [], [], []
    for i in range(n):
        serial = format(random.getrandbits(127) | (1 << 126), "x")
        serials.append(serial)
        rows.append(dict(serial=serial, ca="default", profile=f"p{i % 5}", subject=f"CN=d{i}", sans="[]",
                         not_before=NOW - timedelta(minutes=i), not_after=NOW + timedelta(days=365, minutes=-i),
                         status="valid" if i % 50 else "revoked", public_key_sha256="k" * 64, der=b"\x30" * 900,
                         fingerprint_sha256=hashlib.sha256(serial.encode()).hexdigest(),
                         issued_at=NOW - timedelta(minutes=i), updated_at=NOW))
        if i % 10 == 0:
            binds.append(dict(fingerprint_sha256=rows[-1]["fingerprint_sha256"], device_id=f"dev-{i // 10}",
                              ca="default", external=False, serial=serial, not_after=rows[-1]["not_after"],
                              current=True, state="active", bound_at=NOW))
    async with writer(engine).begin() as conn:
        for k in range(0, n, 5000):
            await conn.execute(certificates.insert(), rows[k:k + 5000])
        for k in range(0, len(binds), 5000):
            await conn.execute(device_certs.insert(), binds[k:k + 5000])
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(sa.text("ANALYZE"))
    return serials


async def pages(q: CertificateQueries, f: CertFilter, label: str, count: int = 3) -> None:
    request, times, rows = PageRequest(limit=100, after=None), [], 0
    for _ in range(count):
        started = time.perf_counter()
        page = await q.list(request, f)
        times.append(time.perf_counter() - started)
        rows = len(page.items)
        if page.next_cursor is None:
            break
        request = PageRequest(limit=100, after=decode_cursor(page.next_cursor, (datetime, str)))
    print(f"  {label:<34} best {min(times) * 1000:7.1f} ms, worst {max(times) * 1000:7.1f} ms "
          f"({len(times)} pages, {rows} rows on the last)")


async def run(kind: str, n: int) -> None:
    if kind == "postgresql":
        name = f"bench_certs_{uuid.uuid4().hex[:8]}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-certs-")
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
    engine = create_engine(url)
    try:
        serials = await fill(engine, n)
        q = CertificateQueries(engine, device_links=BoundCertificates())
        print(f"{kind}, {n:,} certificates, {n // 10:,} bindings:")
        await pages(q, CertFilter(), "no filter")
        await pages(q, CertFilter(status=CertStatus.REVOKED), "status=revoked")
        await pages(q, CertFilter(profile="p3"), "profile=p3")
        await pages(q, CertFilter(device=f"dev-{n // 20}"), "device=<one device>")
        await pages(q, CertFilter(serial_prefix=serials[n // 2][:6]), "serial_prefix=<6 digits>")
        await pages(q, CertFilter(issued_before=NOW - timedelta(days=30)), "issued_before=<a month ago>")
        await pages(q, CertFilter(expires_before=NOW + timedelta(days=180)), "expires_before=<none match>")
    finally:
        await engine.dispose()
        if kind == "postgresql":
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    for kind in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
        asyncio.run(run(kind, args.rows))


if __name__ == "__main__":
    main()
