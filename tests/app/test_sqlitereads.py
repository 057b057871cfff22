"""The listing commands' sqlite3 reader (scep_server.store.sqlitereads) returns what the SQLAlchemy stores return.

Both run on the same migrated SQLite database with the same rows; every page of every filter is compared,
records, order and cursors alike, so a change to one side's query that the other does not follow fails here.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from scep_server.binding.certlinks import BoundCertificates
from scep_server.binding.tables import device_certs, devices
from scep_server.ca.queries import CertFilter, CertificateQueries
from scep_server.ca.status import CertStatus
from scep_server.profiles import ProfileError, ProfileStore
from scep_server.store import sqlitereads
from scep_server.store.tables import cas, certificates, profiles
from trustkit.db import writer
from trustkit.paging import PageRequest, decode_cursor

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the reader is for SQLite only

T0 = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
CERT_KEY = (datetime, str)


def _path(db_url: str) -> Path:
    path = sqlitereads.sqlite_path(db_url)
    assert path is not None and path.is_file()
    return path


async def _fill(engine) -> None:
    rows = []
    for i in range(23):
        issued = T0 + timedelta(minutes=i // 3)  # three certificates per issue time: the serial breaks the tie
        status = ("valid", "hold", "revoked")[i % 3]
        rows.append({
            "serial": format(0xA0 + i * 7, "x") + ("0" * (i % 4)), "ca": "default",
            "profile": ("p1", "p2", None)[i % 3],
            "subject": f"CN=device-{i}", "sans": json.dumps([f"dns:d{i}.example"] if i % 2 else []),
            "not_before": issued - timedelta(minutes=5), "not_after": issued + timedelta(days=i),
            "status": status, "revocation_reason": 1 if status == "revoked" else (6 if status == "hold" else None),
            "revoked_at": issued + timedelta(hours=1) if status != "valid" else None,
            "invalidity_date": issued if i % 6 == 2 else None, "transaction_id": f"tx-{i}" if i % 5 else None,
            "fingerprint_sha256": f"{i:064x}", "public_key_sha256": f"{i % 4:064x}", "der": bytes([i]) * 10,
            "issued_at": issued, "first_used_at": issued + timedelta(days=1) if i % 4 == 0 else None,
            "updated_at": issued, "renewal_of": None, "unused_since": issued if i % 2 else None,
            "enrolled_device_id": f"dev-{i % 4}" if i % 3 else None,
        })
    async with writer(engine).begin() as conn:
        await conn.execute(cas.insert().values(name="default", kind="issuing", subject="CN=CA", cert_der=b"x",
                                               ski_hex="00", fingerprint_sha256="f" * 64, created_at=T0))
        await conn.execute(certificates.insert(), rows)
        await conn.execute(devices.insert(), [
            {"id": f"dev-{d}", "status": "active", "created_at": T0, "status_changed_at": T0} for d in range(5)])
        await conn.execute(device_certs.insert(), [
            {"fingerprint_sha256": r["fingerprint_sha256"], "device_id": f"dev-{(n + 1) % 5}", "ca": "default",
             "external": n % 4 == 3, "serial": r["serial"], "not_after": r["not_after"],
             "current": n < 5,  # one current certificate per device
             "state": "active", "bound_at": T0} for n, r in enumerate(rows[::2])])
        await conn.execute(profiles.insert(), [
            {"name": name, "ca": "default", "challenge_kind": kind, "static_secret_sha256": "a" * 64 if kind == "static"
             else None, "settings": settings, "created_at": T0, "updated_at": T0}
            for name, kind, settings in (
                ("default", "static", "{}"),
                ("byod", "dynamic", json.dumps({"require_approval": True, "template": {"validity_days": 30}})),
                ("jamf", "static", json.dumps({"allow_single_des": False, "ocsp_aia": True})),
                ("Zeta", "delegated", json.dumps({"renewal_to": ["byod"], "allow_renewal": False})),
                ("a.b-c", "dynamic", "{}"),
            )])


async def _pages(fetch, limit: int, kinds) -> list[tuple[list, str | None]]:
    pages, after = [], None
    while True:
        page = await fetch(PageRequest(limit=limit, after=after))
        pages.append((page.items, page.next_cursor))
        if page.next_cursor is None:
            return pages
        after = decode_cursor(page.next_cursor, kinds)


FILTERS = [
    CertFilter(), CertFilter(status=CertStatus.REVOKED), CertFilter(status=CertStatus.HOLD, profile="p2"),
    CertFilter(profile="p1"), CertFilter(profile="nope"), CertFilter(device="dev-1"), CertFilter(device="dev-0"),
    CertFilter(device="dev-4", status=CertStatus.HOLD), CertFilter(serial_prefix="a"), CertFilter(serial_prefix="c3"),
    CertFilter(issued_after=T0 + timedelta(minutes=2), issued_before=T0 + timedelta(minutes=5)),
    CertFilter(issued_after=T0 + timedelta(minutes=3, microseconds=1)),
    CertFilter(expires_after=T0 + timedelta(days=4), expires_before=T0 + timedelta(days=15)),
    CertFilter(expires_before=T0 + timedelta(days=3), status=CertStatus.VALID, profile="p1"),
    # an offset other than UTC: both bind the fields as given (as SQLAlchemy's SQLite dialect does)
    CertFilter(issued_after=(T0 + timedelta(minutes=4)).astimezone(timezone(timedelta(minutes=-3)))),
]


@SQLITE
@pytest.mark.parametrize("binding", [True, False], ids=["binding on", "binding off"])
@pytest.mark.parametrize("f", FILTERS, ids=repr)
async def test_certificate_pages_match_the_sqlalchemy_queries(engine, db_url, f, binding):
    await _fill(engine)
    queries = CertificateQueries(engine, device_links=BoundCertificates() if binding else None)
    with sqlitereads.SqliteReads(_path(db_url), device_links=binding) as reads:
        for limit in (1, 2, 5, 100):
            expected = await _pages(lambda page: queries.list(page, f), limit, CERT_KEY)
            got = await _pages(lambda page: reads.certificates.list(page, f), limit, CERT_KEY)
            assert got == expected
    if binding and f.profile != "nope":  # every other filter selects some rows (dev-4 holds bound ones only)
        assert sum(len(items) for items, _ in expected) > 0


@SQLITE
async def test_a_cursor_with_an_offset_pages_alike(engine, db_url):
    """A cursor is the client's: one naming a time with another offset is bound as SQLAlchemy binds it."""
    await _fill(engine)
    after = ((T0 + timedelta(minutes=3)).astimezone(timezone(timedelta(hours=-5))), "zz")
    queries = CertificateQueries(engine)
    with sqlitereads.SqliteReads(_path(db_url), device_links=False) as reads:
        request = PageRequest(limit=4, after=after)
        assert await reads.certificates.list(request) == await queries.list(request)


@SQLITE
async def test_profile_pages_match_the_store(engine, db_url):
    await _fill(engine)
    store = ProfileStore(engine)
    with sqlitereads.SqliteReads(_path(db_url), device_links=True) as reads:
        for limit in (1, 2, 4, 100):
            expected = await _pages(store.page, limit, (str,))
            assert await _pages(reads.profiles.page, limit, (str,)) == expected
    names = [p.name for items, _ in expected for p in items]
    assert names == sorted(names) and len(names) == 5
    by_name = {p.name: p for items, _ in expected for p in items}
    assert by_name["default"].settings.allow_single_des and not by_name["jamf"].settings.allow_single_des


@SQLITE
async def test_stored_settings_that_do_not_validate_fail_alike(engine, db_url):
    await _fill(engine)
    async with writer(engine).begin() as conn:
        await conn.execute(profiles.update().where(profiles.c.name == "jamf")
                           .values(settings=json.dumps({"template": {"validity_days": "many"}})))
    with pytest.raises(ProfileError) as expected:
        await ProfileStore(engine).page(PageRequest(limit=100, after=None))
    with sqlitereads.SqliteReads(_path(db_url), device_links=True) as reads, pytest.raises(ProfileError) as got:
        await reads.profiles.page(PageRequest(limit=100, after=None))
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("url, path", [
    ("sqlite+aiosqlite:////srv/data/scep.db", "/srv/data/scep.db"),
    ("sqlite:///data/scep.db", "data/scep.db"),
    ("sqlite+pysqlite:////a b/scep.db", "/a b/scep.db"),
    ("sqlite://", None), ("sqlite:///:memory:", None), ("sqlite+aiosqlite:////x.db?mode=ro", None),
    ("sqlite:////x%20y.db", None), ("postgresql://u:p@localhost/db", None), ("sqlite+other:////x.db", None),
])
def test_only_plain_file_urls_are_read_directly(url, path):
    got = sqlitereads.sqlite_path(url)
    assert (str(got) if got is not None else None) == path


# ------------------------------------------------------------------ the commands print the same either way


@pytest.fixture
def listed(cli, tmp_path):
    """An initialised data directory with a few certificates (one revoked) and three profiles."""
    import asyncio

    from scep_server.ca.authority import random_serial
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from scep_server.runtime import load_cas
    from tests.factories import csr, record_issued, rsa_key, settings_for
    from trustkit.clock import utcnow
    from trustkit.db import create_engine

    settings = settings_for(tmp_path / "data")
    [ca] = load_cas(settings).values()
    key = rsa_key()

    async def record():
        engine = create_engine(settings.database_url())
        try:
            return [await record_issued(engine, ca, ca.issue(csr(key, f"d{i}"), IssuancePolicy(CertificateTemplate()),
                                                             serial=random_serial(), now=utcnow()),
                                        issued_at=T0 + timedelta(minutes=i % 3)) for i in range(7)]
        finally:
            await engine.dispose()

    serials = asyncio.run(record())
    cli("cert", "revoke", serials[2], "--reason", "key-compromise")
    cli("profile", "add", "byod", "--require-approval", "--challenge", "dynamic")
    cli("profile", "add", "jamf", "--validity-days", "30")
    return cli


@pytest.mark.parametrize("args", [
    ["profile", "list"], ["profile", "list", "--limit", "1"], ["profile", "list", "--limit", "2", "--all"],
    ["cert", "list"], ["cert", "list", "--limit", "2"], ["cert", "list", "--limit", "3", "--all", "--format", "json"],
    ["cert", "list", "--status", "revoked", "--format", "json"], ["cert", "list", "--profile", "default"],
    ["cert", "list", "--issued-after", "2026-11-01T12:01:00Z"], ["cert", "list", "--expires-after", "2020-01-01"],
], ids=" ".join)
def test_listing_commands_print_the_same_through_either_reader(listed, monkeypatch, args):
    opened = []
    real = sqlitereads.open_reads
    with monkeypatch.context() as m:
        m.setattr(sqlitereads, "open_reads", lambda settings: opened.append(real(settings)) or opened[-1])
        fast = listed(*args)
    assert opened and isinstance(opened[0], sqlitereads.SqliteReads)  # the command read through sqlite3
    with monkeypatch.context() as m:
        m.setattr(sqlitereads, "open_reads", lambda settings: None)
        assert listed(*args) == fast
    assert fast.strip()



def test_a_coroutine_that_waits_is_not_completed_without_an_event_loop():
    import asyncio

    from trustkit.sqlitereads import complete

    async def reads():
        return 42

    async def waits():
        await asyncio.sleep(0)
        return 42

    async def fails():
        raise ValueError("named")

    assert complete(reads()) == 42
    with pytest.raises(RuntimeError, match="event loop"):
        complete(waits())
    with pytest.raises(ValueError, match="named"):
        complete(fails())
