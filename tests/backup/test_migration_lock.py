"""`scep-server db upgrade` run by several processes at once on a fresh database: every one succeeds and the
migrations are applied once (PostgreSQL: an advisory lock; SQLite: BEGIN EXCLUSIVE)."""
from __future__ import annotations

import asyncio
import os
import sys

import pytest
import sqlalchemy as sa

from scep_server.backup import script_heads
from trustkit.db import create_engine

from .support import drop_pg_database, pg_database

PROCESSES = 3


async def _upgrade_at_once(url: str, tmp_path) -> list[tuple[int, str]]:
    env = {**os.environ, "SCEP_SERVER_DATABASE__URL": url, "SCEP_SERVER_LOG__LEVEL": "warning"}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scep_server.cli", "--data-dir", str(tmp_path / "data"), "db", "upgrade", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT) for _ in range(PROCESSES)]
    async with asyncio.timeout(120):
        outs = [await p.communicate() for p in procs]
    return [(p.returncode, out[0].decode(errors="replace")) for p, out in zip(procs, outs)]


async def _versions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return sorted((await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars())
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_concurrent_db_upgrades_apply_the_migrations_once(backend, tmp_path):
    url = await pg_database() if backend == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    try:
        results = await _upgrade_at_once(url, tmp_path)
        for code, out in results:
            assert code == 0, out
            assert "database schema is up to date" in out and "Error" not in out
        # each head once: a migration applied twice would have failed (a table created twice)
        assert await _versions(url) == script_heads()
        # and a later upgrade has nothing to do
        results = await _upgrade_at_once(url, tmp_path)
        assert all(code == 0 for code, _ in results)
        assert await _versions(url) == script_heads()
    finally:
        if backend == "postgresql":
            await drop_pg_database(url)
