import re

import pytest
import sqlalchemy as sa

from scep_server.store import tables


async def test_migrated_schema_has_core_tables(engine):
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    for t in tables.metadata.tables:
        assert t in names


def _server_default_differs(context, inspected_column, metadata_column, inspected_default, metadata_default,
                            rendered_metadata_default):
    # alembic's SQLite comparison strips the quotes of a non-empty string only: SQLite's ('') is the model's ""
    if context.dialect.name == "sqlite" and inspected_default == "('')" and rendered_metadata_default in ("", "''"):
        return False
    return None  # alembic's own comparison


def _schema_diff(conn, metadata=None):
    """What alembic's autogenerate would change to bring the migrated database to the models.

    compare_type: column types (lengths included) are reflected faithfully on SQLite and PostgreSQL.
    compare_server_default: server defaults are compared on both, with the one false difference of alembic's
    SQLite comparison (an empty string default) answered by _server_default_differs.
    """
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from scep_server.store.schema import combined_metadata

    mc = MigrationContext.configure(conn, opts={"compare_type": True,
                                                "compare_server_default": _server_default_differs})
    return compare_metadata(mc, combined_metadata() if metadata is None else metadata)


async def test_migrations_create_what_the_models_say(engine):
    async with engine.connect() as conn:
        diff = await conn.run_sync(_schema_diff)
    assert diff == []


def _predicate(text) -> str:
    return re.sub(r"\s+", " ", re.sub(r"^\((.*)\)$", r"\1", str(text).strip())).lower()


def _partial_index_drift(conn, metadata=None) -> list[tuple[str, str, str | None, str | None]]:
    """Partial indexes whose WHERE differs between the models and the database (autogenerate does not look)."""
    from scep_server.store.schema import combined_metadata

    metadata = combined_metadata() if metadata is None else metadata
    dialect = conn.dialect.name
    insp = sa.inspect(conn)
    drift = []
    for table in metadata.tables.values():
        reflected = {i["name"]: i.get("dialect_options", {}).get(f"{dialect}_where")
                     for i in insp.get_indexes(table.name)}
        for index in table.indexes:
            want = index.dialect_options[dialect]["where"]
            have = reflected.get(index.name)
            want, have = (None if w is None else _predicate(w) for w in (want, have))
            if want != have:
                drift.append((table.name, index.name, want, have))
    return drift


async def test_partial_indexes_have_the_models_predicates(engine):
    async with engine.connect() as conn:
        drift = await conn.run_sync(_partial_index_drift)
    assert drift == []


async def test_the_comparisons_see_a_model_that_drifted(engine):
    """A column, a type, a server default and a partial index predicate changed in the models only are seen."""
    from scep_server.store.schema import combined_metadata

    drifted = combined_metadata()
    throttle = drifted.tables["otp_throttle"]
    throttle.append_column(sa.Column("note", sa.Text))
    throttle.c.subject.type = sa.String(161)
    drifted.tables["otp_events"].c.occurrences.server_default = sa.DefaultClause("2")
    index = next(i for i in drifted.tables["device_certs"].indexes if i.name == "uq_device_certs_current")
    for dialect in ("sqlite", "postgresql"):
        index.dialect_options[dialect]["where"] = sa.text("NOT current")
    async with engine.connect() as conn:
        diff = await conn.run_sync(_schema_diff, drifted)
        predicates = await conn.run_sync(_partial_index_drift, drifted)
    flat = [d for item in diff for d in (item if isinstance(item, list) else [item])]
    assert {(d[0], d[2], d[3] if d[0] != "add_column" else d[3].name) for d in flat} == {
        ("add_column", "otp_throttle", "note"),
        ("modify_type", "otp_throttle", "subject"),
        ("modify_default", "otp_events", "occurrences"),
    }
    assert predicates == [("device_certs", "uq_device_certs_current", "not current", "current")]


async def test_decided_transactions_forget_their_challenge_password_on_upgrade(tmp_path):
    """core_0013: the rows written before it kept the CSR as sent, a static secret included; a decided one (issued
    or rejected) keeps it without, a waiting one (pending, awaiting_ack) as it is."""
    from datetime import datetime, timezone

    from cryptography import x509

    from scep_server.enrolment.model import challenge_password
    from scep_server.scep import client
    from scep_server.store.migrate import upgrade
    from scep_server.store.tables import scep_transactions
    from tests.factories import rsa_key
    from trustkit.db import create_engine

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        await upgrade(engine, "core_0012")
        now = datetime(2026, 12, 1, tzinfo=timezone.utc)
        csrs = {state: client.make_csr(rsa_key(), state, f"static-secret-{state}")
                for state in ("issued", "rejected", "pending", "awaiting_ack")}
        async with engine.begin() as conn:
            for state, der in csrs.items():
                await conn.execute(scep_transactions.insert().values(
                    profile="p", transaction_id=f"tx-{state}", state=state, message_type=19, csr_der=der,
                    public_key_sha256="0" * 64, created_at=now, updated_at=now))
        await upgrade(engine)
        async with engine.connect() as conn:
            kept = dict((await conn.execute(sa.select(scep_transactions.c.state, scep_transactions.c.csr_der))).all())
    finally:
        await engine.dispose()
    for state, der in kept.items():
        csr = x509.load_der_x509_csr(der)
        assert csr.subject.rfc4514_string() == f"CN={state}"
        assert (challenge_password(csr) == f"static-secret-{state}") is (state in ("pending", "awaiting_ack")), state


async def test_a_schema_newer_than_this_version_is_refused_with_a_message(engine):
    """A newer version migrated the database (a rolling upgrade, a downgrade of the package): the start and `db
    upgrade` of this one stop naming the revision, and leave the schema as it is (Alembic's own error was a
    traceback)."""
    import pytest

    from scep_server.store.migrate import SchemaTooNew, upgrade

    async with engine.begin() as conn:
        core = (await conn.execute(sa.text(
            "SELECT version_num FROM alembic_version WHERE version_num LIKE 'core%'"))).scalar_one()
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'core_9999' WHERE version_num = :v"),
                           {"v": core})
    try:
        with pytest.raises(SchemaTooNew, match=r"at core_9999, which this version of scep-server does not know "
                                               rf"\(its latest: .*{core}.*\): a newer version has upgraded it"):
            await upgrade(engine)
        async with engine.connect() as conn:
            versions = set((await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars())
        assert "core_9999" in versions and core not in versions
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = :v WHERE version_num = 'core_9999'"),
                               {"v": core})


def test_the_commands_on_a_newer_schema_say_so_without_a_traceback(tmp_path, sqlite_template, monkeypatch):
    import shutil
    import sqlite3

    from click.testing import CliRunner

    from scep_server.cli import main

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(sqlite_template, data / "scep.db")
    with sqlite3.connect(data / "scep.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'core_9999' WHERE version_num LIKE 'core%'")
    monkeypatch.delenv("SCEP_SERVER_DATABASE__URL", raising=False)
    monkeypatch.setenv("SCEP_CA_PASSPHRASE", "pw")
    for args in (["db", "upgrade"], ["init", "--no-input", "--key-size", "2048"]):
        result = CliRunner().invoke(main, ["--data-dir", str(data), *args])
        assert result.exit_code == 1, (args, result.output)
        assert isinstance(result.exception, SystemExit), result.exception  # a message, not an exception's traceback
        assert "the database schema is at core_9999, which this version of scep-server does not know" in result.output
    assert not (data / "ca").exists()  # nothing made beside a database it cannot use


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_profiles_stored_before_the_pending_expiry_keep_their_enrolments_waiting(tmp_path, dialect):
    """core_0015: an upgrade rejects nothing a device was told is PENDING. A profile stored before
    pending_expiry_days existed keeps its enrolments waiting until decided (0, explicit in its settings); one made
    after the upgrade gets the default, 30 days."""
    import json
    import uuid
    from datetime import datetime, timezone

    from scep_server.enrolment.model import pending_expiry
    from scep_server.profiles import ProfileSettings, ProfileStore
    from scep_server.store.migrate import upgrade
    from tests.conftest import PG_ADMIN_URL, _pg_admin
    from trustkit.db import create_engine

    if dialect == "sqlite":
        url, drop = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}", None
    else:
        from sqlalchemy.engine import make_url

        name = f"scep_m_{uuid.uuid4().hex[:12]}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url, drop = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False), name
    engine = create_engine(url)
    try:
        await upgrade(engine, "core_0014")
        now = datetime(2026, 12, 1, tzinfo=timezone.utc)
        before = json.loads(ProfileSettings().model_dump_json())
        before.pop("pending_expiry_days")  # what the version before the setting stored: every setting it had
        async with engine.begin() as conn:
            await conn.execute(tables.cas.insert().values(name="ca", kind="issuing", subject="CN=ca", cert_der=b"0",
                                                          ski_hex="00", fingerprint_sha256="0" * 64, created_at=now))
            await conn.execute(tables.profiles.insert().values(name="byod", ca="ca", challenge_kind="static",
                                                               settings=json.dumps(before), created_at=now,
                                                               updated_at=now))
        await upgrade(engine)
        store = ProfileStore(engine, cache_seconds=0)
        kept = await store.get("byod")
        await store.create("new", ca="ca", challenge_kind="static", static_secret="s" * 24, now=now)
        made = await store.get("new")
    finally:
        await engine.dispose()
        if drop:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
    assert kept.settings.pending_expiry_days == 0 and pending_expiry(kept.settings) is None
    assert kept.settings.model_dump(exclude={"pending_expiry_days"}) == \
        ProfileSettings().model_dump(exclude={"pending_expiry_days"})
    assert made.settings.pending_expiry_days == 30
