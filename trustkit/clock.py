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


class ExpiryError(ValueError):
    """An expiry that does not parse: ``field`` is ``expires_in`` or ``expires_at`` (None: both were given)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def expiry(expires_in: str | None, expires_at: str | None, now: datetime) -> datetime | None:
    """The expiry an operator asks for: `expires_in` (N followed by s, m, h or d, from `now`) or `expires_at`
    (ISO 8601; UTC unless it says); None when neither is given. An ExpiryError when it does not parse."""
    import re

    if expires_in and expires_at:
        raise ExpiryError(None, "give a time to expire in or a time to expire at, not both")
    if expires_in:
        m = re.fullmatch(r"([0-9]{1,6})([smhd])", expires_in.strip())
        if not m or int(m.group(1)) == 0:
            raise ExpiryError("expires_in", "a positive number followed by s, m, h or d (e.g. 90d)")
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now + timedelta(**{unit: int(m.group(1))})
    if expires_at:
        try:
            parsed = datetime.fromisoformat(expires_at.strip())
        except ValueError:
            raise ExpiryError("expires_at", "an ISO 8601 time, e.g. 2027-01-31T00:00:00Z") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
    return None
