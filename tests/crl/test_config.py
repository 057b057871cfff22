"""Settings of the crl package: defaults from the product decisions, and refused combinations."""
from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from crl.config import CheckerSettings, CrlSettings, Policy


def test_defaults():
    s = CrlSettings()
    assert s.validity == timedelta(days=7) and s.resign_interval == timedelta(hours=1)
    assert s.coalesce_delay <= timedelta(seconds=5)
    assert s.checker.policy is Policy.FAIL_CLOSED and s.checker.timeout == timedelta(seconds=10)


def test_parsed_from_a_config_section():
    s = CrlSettings.model_validate({"validity": "P10D", "resign_interval": 1800, "coalesce_delay": 0.5,
                                    "checker": {"policy": "fail-open", "refresh_interval": "PT6H",
                                                "max_bytes": 1000}})
    assert s.validity == timedelta(days=10) and s.resign_interval == timedelta(minutes=30)
    assert s.checker.policy is Policy.FAIL_OPEN and s.checker.refresh_interval == timedelta(hours=6)


@pytest.mark.parametrize("values", [
    {"validity": 3600, "resign_interval": 3600},  # no room to retry before nextUpdate
    {"coalesce_delay": 7200},
    {"validity": 0},
    {"retry_interval": -1},
    {"http_max_age": -1},
    {"unknown_key": 1},
    {"checker": {"policy": "sometimes"}},
    {"checker": {"timeout": 0}},
    {"checker": {"max_bytes": 0}},
])
def test_refused(values):
    with pytest.raises(ValidationError):
        CrlSettings.model_validate(values)


def test_settings_are_immutable():
    with pytest.raises(ValidationError):
        CheckerSettings().timeout = timedelta(seconds=1)
