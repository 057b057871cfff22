"""The expiry grammar of `scep-server token create` and the console's token form (trustkit.clock.expiry)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from trustkit.clock import ExpiryError, expiry

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("given", "after"), [("30s", timedelta(seconds=30)), ("15m", timedelta(minutes=15)),
                                              ("2h", timedelta(hours=2)), (" 90d ", timedelta(days=90))])
def test_expires_in(given, after):
    assert expiry(given, None, NOW) == NOW + after


def test_expires_at_is_utc_unless_it_says():
    assert expiry(None, "2027-01-31T00:00:00", NOW) == datetime(2027, 1, 31, tzinfo=timezone.utc)
    at = expiry(None, "2027-01-31T00:00:00+02:00", NOW)
    assert at == datetime(2027, 1, 30, 22, tzinfo=timezone.utc) and at.utcoffset() == timedelta(hours=2)
    assert expiry(None, "2027-01-31T00:00:00Z", NOW) == datetime(2027, 1, 31, tzinfo=timezone.utc)


def test_nothing_given_is_no_expiry():
    assert expiry(None, None, NOW) is None and expiry("", "", NOW) is None


@pytest.mark.parametrize(("expires_in", "expires_at", "field"), [
    ("0d", None, "expires_in"), ("90", None, "expires_in"), ("1w", None, "expires_in"), ("-1d", None, "expires_in"),
    ("1234567d", None, "expires_in"), ("1 d", None, "expires_in"), (None, "tomorrow", "expires_at"),
    (None, "2027-13-01", "expires_at"), ("1d", "2027-01-01", None)])
def test_refused(expires_in, expires_at, field):
    with pytest.raises(ExpiryError) as info:
        expiry(expires_in, expires_at, NOW)
    assert info.value.field == field
