"""One call to Intune's ScepActions, with the token and service-discovery requests it needs and all their retries,
ends within `deadline_seconds`: the retries nest (a 404 from validateRequest discovers the endpoint again, with
its own retries, each of which may fetch a token with its own), and a device's PKIOperation waited for all of
them (minutes at the default settings, hours at the largest). Past the deadline the enrolment gets the FAILURE an
unavailable Intune gives."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from scep_server.challenge.config import IntuneSettings
from scep_server.scep import PKIStatus
from tests.challenge.conftest import add_profile, enrol
from tests.challenge.peers import CLIENT_ID, TENANT, FakeIntune
from tests.challenge.test_delegated import intune_settings, secret_file  # noqa: F401
from tests.factories import rsa_key

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # about HTTP, not storage


class MovingService(FakeIntune):
    """validateRequest answers 404 (the service moved), and Graph lists the service at the first request and every sixth after it
    (HTTP 503 before): each retry of the action runs a whole rediscovery with its retries."""

    async def endpoints(self, request):
        self.graph_calls = getattr(self, "graph_calls", 0) + 1
        await asyncio.sleep(0.05)
        if (self.graph_calls - 1) % 6:
            return web.json_response({"error": {"code": "ServiceUnavailable"}}, status=503)
        return await super().endpoints(request)


@sqlite_only
async def test_nested_retries_end_at_the_deadline_with_the_unavailable_failure(server, secret_file):
    async with MovingService(codes={"validateRequest": "HTTP404"}) as fake, aiohttp.ClientSession() as s:
        # the largest retries: before the deadline, this validation took about 25 s (6 x 6 Graph requests)
        await add_profile(server, "intune", "delegated", intune_settings(
            fake, secret_file, timeout_seconds=0.5, retries=5, deadline_seconds=1))
        started = time.monotonic()
        rep = await asyncio.wait_for(enrol(s, server, "intune", rsa_key(), "intune-challenge"), 10)
        took = time.monotonic() - started
    assert rep.status is PKIStatus.FAILURE and "Intune validation is unavailable" in rep.fail_text, rep.fail_text
    assert "deadline" in rep.fail_text, rep.fail_text
    assert took < 3, took
    assert fake.actions() and set(fake.actions()) == {"validateRequest"}  # nothing issued, nothing notified


@sqlite_only
async def test_a_validation_within_the_deadline_is_unchanged(server, secret_file):
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file, deadline_seconds=5))
        rep = await enrol(s, server, "intune", rsa_key(), "intune-challenge")
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert fake.actions() == ["validateRequest", "successNotification"]


def test_the_deadline_is_well_under_a_scep_clients_timeout():
    base = {"tenant": TENANT, "client_id": CLIENT_ID, "client_secret": {"env": "X"}}
    assert IntuneSettings(**base).deadline_seconds == 20
    for bad in (0, 61):
        with pytest.raises(ValidationError):
            IntuneSettings(**base, deadline_seconds=bad)


@sqlite_only
async def test_the_deadline_never_cuts_one_call_short_of_its_own_time_out(server, secret_file):
    """A profile whose timeout_seconds is longer than deadline_seconds (timeout_seconds may be up to 120, the
    deadline's default is 20): a validateRequest answered within its time-out still enrols, as before the deadline."""
    async with FakeIntune(delays={"validateRequest": 1.0}) as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(
            fake, secret_file, timeout_seconds=3, retries=0, deadline_seconds=0.5))
        rep = await asyncio.wait_for(enrol(s, server, "intune", rsa_key(), "intune-challenge"), 10)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert fake.actions() == ["validateRequest", "successNotification"]
