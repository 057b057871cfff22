"""The responder's audit-log scan: every status change is seen, however late its transaction commits after
later ones (PostgreSQL takes an event's id from a sequence before the commit), and however many events
committed meanwhile."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from scep_server.ocspwiring import store
from scep_server.ocspwiring.store import ChangeScanner
from scep_server.store.tables import events

AT = datetime(2026, 12, 1, tzinfo=timezone.utc)


def event(kind: str, subject: str):
    return events.insert().values(at=AT, kind=kind, subject=subject, actor="test")


async def add(engine, *rows) -> None:
    async with engine.begin() as conn:
        for kind, subject in rows:
            await conn.execute(event(kind, subject))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def pg_only(engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: its event ids are committed in order")


async def test_changes_and_issuances_are_seen_once_and_other_events_only_move_on(engine):
    scanner = ChangeScanner(engine)
    await add(engine, ("pki.cert.issue", "aa"))
    await scanner.start()
    assert await scanner.changed() == set()  # before the start: nothing is cached yet
    await add(engine, ("pki.cert.revoke", "bb"), ("security.login_failed", "cc"), ("pki.cert.issue", "dd"))
    assert await scanner.changed() == {"bb", "dd"}
    assert await scanner.changed() == set()
    assert scanner.gaps == {}


async def test_a_change_committed_after_hundreds_of_later_events_is_still_seen(engine):
    """A revocation whose transaction took its event id, then committed after 600 later events had been
    committed and scanned (a slow transaction during an enrolment burst): its serial is still invalidated."""
    pg_only(engine)
    scanner = ChangeScanner(engine)
    await scanner.start()
    async with engine.connect() as slow:
        await slow.begin()
        await slow.execute(event("pki.cert.revoke", "5e1f"))
        for burst in range(3):
            await add(engine, *[("pki.cert.issue", f"{burst}-{i}") for i in range(200)])
            assert "5e1f" not in await scanner.changed()
        await slow.commit()
    assert await scanner.changed() == {"5e1f"}
    assert scanner.gaps == {}


async def test_a_transaction_in_flight_at_the_start_is_still_seen(engine):
    pg_only(engine)
    await add(engine, ("pki.cert.issue", "aa"))
    async with engine.connect() as slow:
        await slow.begin()
        await slow.execute(event("pki.cert.lifecycle.hold", "77"))
        await add(engine, ("pki.cert.issue", "bb"))
        scanner = ChangeScanner(engine)
        await scanner.start()
        assert await scanner.changed() == set()
        await slow.commit()
    assert await scanner.changed() == {"77"}


async def test_an_id_rolled_back_is_given_up_after_the_wait(engine):
    pg_only(engine)
    clock = Clock()
    scanner = ChangeScanner(engine, monotonic=clock)
    await scanner.start()
    async with engine.connect() as gone:
        await gone.begin()
        await gone.execute(event("pki.cert.revoke", "99"))
        await gone.rollback()
    await add(engine, ("pki.cert.issue", "aa"))
    assert await scanner.changed() == {"aa"}
    assert len(scanner.gaps) == 1
    clock.t += store.GAP_WAIT - 1
    assert await scanner.changed() == set() and len(scanner.gaps) == 1
    clock.t += 2
    assert await scanner.changed() == set() and scanner.gaps == {}


async def test_a_jump_of_the_sequence_looks_for_a_bounded_number_of_ids(engine, monkeypatch):
    pg_only(engine)
    monkeypatch.setattr(store, "MAX_GAPS", 50)
    scanner = ChangeScanner(engine)
    await scanner.start()
    async with engine.begin() as conn:
        await conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('events', 'id'), "
                                   "(SELECT coalesce(max(id), 0) FROM events) + 1000000)"))
    await add(engine, ("pki.cert.revoke", "ab"))
    assert await scanner.changed() == {"ab"}
    assert len(scanner.gaps) == 50
