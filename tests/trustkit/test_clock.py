"""The settable clock every test injects, and aware datetimes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from trustkit.clock import SettableClock, aware, utcnow

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)


def test_the_clock_stands_still_until_moved():
    clock = SettableClock(T0)
    assert clock() == clock() == T0


def test_advance_takes_seconds_a_timedelta_or_keywords():
    clock = SettableClock(T0)
    assert clock.advance(60) == T0 + timedelta(seconds=60)
    assert clock.advance(timedelta(hours=1)) == T0 + timedelta(hours=1, seconds=60)
    assert clock.advance(days=1, minutes=-1) == T0 + timedelta(days=1, hours=1)
    assert clock.advance(seconds=0.5) == clock() == T0 + timedelta(days=1, hours=1, seconds=0.5)


def test_set_and_start_are_aware():
    naive = datetime(2030, 1, 1)
    clock = SettableClock(naive)
    assert clock() == naive.replace(tzinfo=timezone.utc)
    assert clock.set(datetime(2031, 1, 1)).tzinfo is not None
    started = SettableClock()
    assert abs((started() - utcnow()).total_seconds()) < 60 and started().tzinfo is not None


def test_aware_keeps_none_and_aware_values():
    assert aware(None) is None
    other = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert aware(other) is other
