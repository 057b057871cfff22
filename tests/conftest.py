"""Shared fixtures: every store test runs on SQLite and on PostgreSQL, on the migrated schema."""
from __future__ import annotations

import asyncio
import os
import shutil
import uuid

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url

from trustkit.db import create_engine
from scep_server.store.migrate import upgrade
from tests.helpers import missing, require_tool

PG_ADMIN_URL = os.environ.get("SCEP_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    u = make_url(PG_ADMIN_URL)
    conn = await asyncpg.connect(
        host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
        password=u.password, database=u.database or "postgres", timeout=5,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_url():
    """A fresh, migrated PostgreSQL database for this test session (one per xdist worker)."""
    name = f"scep_t_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "PostgreSQL missing"
        missing(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc!r}")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_migrate(url))
    yield url
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


async def _truncate_pg(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            names = (await conn.execute(sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'"
            ))).scalars().all()
            if names:
                await conn.execute(sa.text("TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, sqlite_template):
    """A migrated, empty database URL: SQLite (a fresh file) and PostgreSQL (truncated)."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url = request.getfixturevalue("pg_url")
    asyncio.run(_truncate_pg(url))
    return url


@pytest.fixture
async def engine(db_url):
    eng = create_engine(db_url)
    yield eng
    await eng.dispose()


def pytest_terminal_summary(terminalreporter):
    from tests import openapi_check

    if openapi_check.CHECKED[0]:
        terminalreporter.write_line(f"openapi: {openapi_check.CHECKED[0]} API exchanges checked against the document "
                                    f"in {openapi_check.SECONDS[0]:.1f} s (this process)")


@pytest.fixture(autouse=True)
def _api_matches_openapi():
    """Every /api/v1 exchange with an in-process server matches the OpenAPI document (tests/openapi_check.py)."""
    from tests import openapi_check

    openapi_check.PENDING.clear()
    openapi_check.FAILURES.clear()
    yield
    openapi_check.drain()
    failures = list(openapi_check.FAILURES)
    openapi_check.FAILURES.clear()
    if failures:
        pytest.fail(f"{len(failures)} API exchange(s) do not match the OpenAPI document:\n" + "\n\n".join(failures[:5]),
                    pytrace=False)


@pytest.fixture(autouse=True)
def _structlog_defaults():
    """A CLI command run in-process configures logging; the next test starts from structlog's defaults."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def openssl():
    return require_tool("openssl")


@pytest.fixture
def scepclient():
    """micromdm's scepclient (Debian package scep)."""
    return require_tool("scepclient")


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """The command line run in-process on a fresh data directory (after `init`): cli(*args, code=0) -> output."""
    from click.testing import CliRunner

    from scep_server.cli import main

    monkeypatch.setenv("SCEP_SERVER_CA__KEY_SIZE", "2048")
    monkeypatch.setenv("SCEP_SERVER_LOG__LEVEL", "warning")
    runner = CliRunner()

    def invoke(*args, code=0):
        result = runner.invoke(main, ["--data-dir", str(tmp_path / "data"), *args])
        assert result.exit_code == code, (result.output, result.exception)
        return result.stdout if code == 0 else result.output

    invoke("init")
    return invoke


@pytest.fixture
def fast_job_backoff(monkeypatch):
    """Supervised jobs restart after milliseconds, not seconds, and settle quickly (scep_server.jobs)."""
    from scep_server import jobs

    monkeypatch.setattr(jobs, "INITIAL_BACKOFF", 0.01)
    monkeypatch.setattr(jobs, "MAX_BACKOFF", 0.05)
    monkeypatch.setattr(jobs, "SETTLE", 0.3)
