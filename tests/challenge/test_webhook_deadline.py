"""One call of the validation webhook, with all its retries, ends within `deadline_seconds` (as Intune's
ScepActions calls do): each attempt may take `timeout_seconds` and the retries add up (20 s at the defaults, about
12 minutes at the largest settings), while a device's PKIOperation and a SCEP request slot wait. Past the deadline
the enrolment gets the FAILURE an unavailable webhook gives, with the same log event."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import structlog
from pydantic import ValidationError

from scep_server.challenge.config import WebhookSettings
from scep_server.scep import PKIStatus
from tests.challenge.conftest import add_profile, enrol
from tests.challenge.peers import WebhookReceiver
from tests.challenge.test_delegated import hook_secret, webhook_settings  # noqa: F401
from tests.factories import rsa_key

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # about HTTP, not storage


@sqlite_only
async def test_retries_end_at_the_deadline_with_the_unavailable_failure(server, hook_secret):
    async with WebhookReceiver(allowed={"ok"}, delay=0.8) as hook, aiohttp.ClientSession() as s:
        # the largest retries: before the deadline, this validation took 6 x 0.2 s and 3.1 s of pauses
        await add_profile(server, "hooked", "delegated", webhook_settings(
            hook, hook_secret, timeout_seconds=0.2, retries=5, deadline_seconds=0.5))
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            rep = await asyncio.wait_for(enrol(s, server, "hooked", rsa_key(), "ok"), 10)
        took = time.monotonic() - started
    assert rep.status is PKIStatus.FAILURE, rep.fail_text
    assert "the validation webhook failed: no answer within the deadline of 0.5s" in rep.fail_text, rep.fail_text
    assert "timed out after 0.2s" in rep.fail_text, rep.fail_text  # why the last attempt failed
    assert took < 2, took
    assert [e["event"] for e in logs if e["event"].startswith("challenge.")] == ["challenge.webhook.unavailable"]
    assert 1 <= hook.types().count("scep.challenge") <= 3 and "scep.success" not in hook.types()


@sqlite_only
async def test_the_deadline_never_cuts_one_attempt_short_of_its_own_time_out(server, hook_secret):
    """A profile whose timeout_seconds is longer than deadline_seconds (timeout_seconds may be up to 120, the
    deadline's default is 20): a validation answered within its time-out still enrols, as before the deadline."""
    async with WebhookReceiver(allowed={"ok"}, delay=0.6) as hook, aiohttp.ClientSession() as s:
        await add_profile(server, "slow", "delegated", webhook_settings(
            hook, hook_secret, timeout_seconds=3, retries=0, deadline_seconds=0.2))
        rep = await asyncio.wait_for(enrol(s, server, "slow", rsa_key(), "ok"), 10)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert hook.types() == ["scep.challenge", "scep.success"]


@sqlite_only
async def test_a_validation_within_the_deadline_is_unchanged(server, hook_secret):
    async with WebhookReceiver(allowed={"ok"}) as hook, aiohttp.ClientSession() as s:
        await add_profile(server, "hooked", "delegated", webhook_settings(hook, hook_secret, deadline_seconds=5))
        rep = await enrol(s, server, "hooked", rsa_key(), "ok")
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert hook.types() == ["scep.challenge", "scep.success"]


def test_the_deadline_is_well_under_a_scep_clients_timeout():
    base = {"url": "https://hooks.example/scep", "secret": {"env": "X"}}
    assert WebhookSettings(**base).deadline_seconds == 20
    assert WebhookSettings(**base, deadline_seconds=60).deadline_seconds == 60
    for bad in (0, -1, 61):
        with pytest.raises(ValidationError):
            WebhookSettings(**base, deadline_seconds=bad)
