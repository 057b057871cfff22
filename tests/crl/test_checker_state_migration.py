"""crl_0005: the records of crl_checker_state written under crl_0004 (keyed by the URL itself) are kept, keyed by
the URL's SHA-256; a downgrade to crl_0004 keys them by the URL again (on PostgreSQL a record whose URL that key
cannot index is dropped: that URL's next valid CRL is taken, as after a forget). On SQLite and PostgreSQL."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from crl.check import AcceptedCrl
from crl.checkstore import CheckerStateStore
from crl.tables import crl_checker_state
from scep_server.store.migrate import alembic_config, upgrade
from tests.crl.test_check_long_url import long_url, url_key
from trustkit.db import create_engine

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
ISSUER = "ab" * 32


def _old_table() -> sa.Table:
    """crl_checker_state as crl_0004 made it."""
    return sa.Table("crl_checker_state", sa.MetaData(), sa.Column("ca", sa.String(64)),
                    sa.Column("issuer", sa.String(64)), sa.Column("url", sa.Text),
                    sa.Column("crl_number", sa.String(50)), sa.Column("this_update", sa.DateTime(timezone=True)),
                    sa.Column("sha256", sa.String(64)), sa.Column("only_user", sa.Boolean),
                    sa.Column("only_ca", sa.Boolean), sa.Column("recorded_at", sa.DateTime(timezone=True)))


def _record(n: int) -> dict:
    return dict(crl_number=str(10**30 + n), this_update=NOW - timedelta(hours=n), sha256=f"{n:064x}",
                only_user=n % 2 == 1, only_ca=False, recorded_at=NOW)


@pytest.fixture(params=["sqlite", "postgresql"])
async def fresh_engine(request, tmp_path):
    """An empty database (no migration applied)."""
    from sqlalchemy.engine import make_url

    from tests.conftest import PG_ADMIN_URL, _pg_admin

    drop = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    else:
        name = f"scep_m_{uuid.uuid4().hex[:12]}"
        try:
            await _pg_admin(f'CREATE DATABASE "{name}"')
        except Exception as exc:  # noqa: BLE001 - as tests.conftest.pg_url: PostgreSQL missing
            from tests.helpers import missing

            missing(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc!r}")
        url, drop = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False), name
    engine = create_engine(url)
    yield engine
    await engine.dispose()
    if drop:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')


async def _downgrade(engine, target: str) -> None:
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))

    def down(connection):
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, target)

    async with engine.begin() as conn:
        await conn.run_sync(down)


async def test_records_survive_the_upgrade_and_a_downgrade(fresh_engine):
    engine = fresh_engine
    pg = engine.dialect.name == "postgresql"
    await upgrade(engine, "crl_0004")
    urls = ["http://cdp.example/a.crl", long_url(1500, tag="mid")]
    if not pg:  # SQLite took any URL under crl_0004
        urls.append(long_url(4096, tag="long"))
    old = _old_table()
    async with engine.begin() as conn:
        for n, url in enumerate(urls):
            await conn.execute(old.insert().values(ca="cust", issuer=ISSUER, url=url, **_record(n)))
        await conn.execute(old.insert().values(ca="other", issuer=ISSUER, url=urls[0], **_record(7)))

    await upgrade(engine)
    store = CheckerStateStore(engine)
    for n, url in enumerate(urls):
        got = await store.last_accepted("cust", ISSUER, url)
        assert got == AcceptedCrl(10**30 + n, NOW - timedelta(hours=n), f"{n:064x}", n % 2 == 1, False), url
    assert (await store.last_accepted("other", ISSUER, urls[0])).sha256 == f"{7:064x}"
    c = crl_checker_state.c
    async with engine.connect() as conn:
        keys = sorted((await conn.execute(sa.select(c.ca, c.url_sha256, c.url))).all())
    assert keys == sorted([("cust", url_key(u), u) for u in urls] + [("other", url_key(urls[0]), urls[0])])
    # a record at a URL the old key could not hold on PostgreSQL is written now
    longest = long_url(8192, tag="new")
    assert await store.record("cust", ISSUER, longest, AcceptedCrl(5, NOW, "f" * 64), replacing=None)
    assert (await store.last_accepted("cust", ISSUER, longest)).number == 5

    await _downgrade(engine, "crl_0004")
    async with engine.connect() as conn:
        kept = sorted((await conn.execute(sa.select(old.c.ca, old.c.url, old.c.sha256))).all())
    expected = [("cust", u, f"{n:064x}") for n, u in enumerate(urls)] + [("other", urls[0], f"{7:064x}")]
    if not pg:
        expected.append(("cust", longest, "f" * 64))
    assert kept == sorted(expected)

    await upgrade(engine)  # and up again
    assert (await CheckerStateStore(engine).last_accepted("cust", ISSUER, urls[1])).sha256 == f"{1:064x}"
