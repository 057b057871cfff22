"""Alembic migrations: one history with a branch per package (core, crl, otp)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import crl.migrations
import otp.migrations

from trustkit.db import normalise_url

HERE = Path(__file__).parent / "migrations"
VERSION_LOCATIONS = [
    HERE / "versions",
    Path(crl.migrations.__file__).parent / "versions",
    Path(otp.migrations.__file__).parent / "versions",
]


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    # os.pathsep-separated list of folders holding revision files
    cfg.set_main_option("path_separator", "os")
    import os

    cfg.set_main_option("version_locations", os.pathsep.join(str(p) for p in VERSION_LOCATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


class SchemaTooNew(Exception):
    """The database's schema is at a revision this software does not know: a newer version migrated it."""


def _refuse_unknown_revisions(connection, cfg: Config) -> None:
    """Raise SchemaTooNew when the database records a revision none of our migrations is (Alembic's own
    "Can't locate revision" would end the start in a traceback)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(cfg)
    unknown = []
    for revision in MigrationContext.configure(connection).get_current_heads():
        try:
            known = script.get_revision(revision) is not None
        except CommandError:
            known = False
        if not known:
            unknown.append(revision)
    if unknown:
        raise SchemaTooNew(
            f"the database schema is at {', '.join(sorted(unknown))}, which this version of scep-server does not "
            f"know (its latest: {', '.join(sorted(script.get_heads()))}): a newer version has upgraded it; run "
            "that version (or a newer one) here too")


def _upgrade_sync(connection, cfg: Config, target: str) -> None:
    _refuse_unknown_revisions(connection, cfg)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, target)


# pg_advisory_xact_lock key held while migrations run ("scep-mig" in ASCII): any number of processes may
# run `db upgrade` (or start) on one database at once; one applies the migrations, the others wait for its
# commit and find the schema at its heads.
MIGRATION_LOCK_KEY = 0x7363_6570_2D6D_6967


async def upgrade(engine: AsyncEngine, target: str = "heads") -> None:
    """Bring the schema to `target` (all branch heads by default), in one transaction that holds the migration
    lock: a PostgreSQL advisory lock (transaction-scoped, released by the commit) or, on SQLite, the database
    lock itself (BEGIN EXCLUSIVE; a second process waits for it within the busy timeout). Raises SchemaTooNew,
    touching nothing, when a newer version migrated the database."""
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    if engine.dialect.name == "sqlite":
        engine = engine.execution_options(sqlite_begin="EXCLUSIVE")
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await conn.run_sync(_upgrade_sync, cfg, target)


def upgrade_url(url: str, target: str = "heads") -> None:
    from trustkit.db import create_engine

    async def run() -> None:
        engine = create_engine(url)
        try:
            await upgrade(engine, target)
        finally:
            await engine.dispose()

    asyncio.run(run())
