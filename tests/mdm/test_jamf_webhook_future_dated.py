"""Jamf webhook event dating: an event dated in the future (a Jamf clock far ahead, seconds and milliseconds mixed
up, a replay tool) is taken as dated now; it does not make every later, real event about that device "older than
an event already applied"."""
from __future__ import annotations

import pytest

from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET, jamf_webhook
from tests.mdm.test_mdm_store import listed


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


async def test_a_future_dated_event_does_not_silence_the_device(server, api, secret_env):
    _, secret = await server.runtime.mdm.configure("jamf", "jamf", {
        "url": "https://jamf.example", "client_id": CLIENT_ID, "client_secret": secret_env, "id_field": "udid"},
        actor="cli:admin")
    await api.add_device("d1")
    await listed(server.runtime.mdm, "jamf", "d1")
    hook = f"{server.url}/hooks/jamf"
    year_9000 = 221845392000000
    await jamf_webhook(api.session, hook, "MobileDeviceCheckIn", "d1", secret=secret, header=True, at_ms=year_9000)
    status, body = await jamf_webhook(api.session, hook, "MobileDeviceUnEnrolled", "d1", secret=secret,
                                      header=True)  # the real unenrolment, now
    device = await api.get("/api/v1/devices/d1")
    assert device["status"] == "deactivated", (status, body, device["status"])
