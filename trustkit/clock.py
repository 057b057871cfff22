"""Aware UTC datetimes and the clock: the one place the code reads the wall clock; tests inject their own."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Callable, overload

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | None) -> datetime | None:
    """A datetime read back from a database as UTC: SQLite returns naive values for aware columns."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


class SettableClock:
    """A clock that stands still until moved: ``clock()`` is the time, ``advance``/``set`` move it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = aware(start) if start is not None else utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float | timedelta = 0, **kwargs: float) -> datetime:
        """Move forward by ``seconds`` (a number or a timedelta) plus any ``timedelta`` keywords."""
        step = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        self.now += step + timedelta(**kwargs)
        return self.now

    def set(self, value: datetime) -> datetime:
        self.now = aware(value)
        return self.now
