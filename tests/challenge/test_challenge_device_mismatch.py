"""A one-time challenge issued for a device (expectations {"device_id"}) is not used up by a request naming another
device: like a subject or SAN mismatch, the mismatch is refused before the challenge is spent, and the device's
own request then succeeds."""
from __future__ import annotations

import aiohttp

from scep_server.challenge.store import expectations_from
from scep_server.profiles import DeviceIdSource
from scep_server.scep.types import PKIStatus
from tests.challenge.conftest import add_profile, dynamic, enrol
from tests.factories import rsa_key
from tests.server import start_app

UDID = "00008030-001A2B3C4D5E802E"
OTHER = "00008030-0000000000000001"


async def test_a_request_for_another_device_does_not_spend_the_devices_challenge(aiohttp_server, tmp_path, db_url):
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    await add_profile(srv, "jamf", "dynamic", dynamic(),
                      device_id=DeviceIdSource(attribute="CN", pattern=r"[0-9A-F]{8}-[0-9A-F]{16}"))
    issued = await srv.runtime.challenges.new_challenge("jamf", source="api",
                                                        expectations=expectations_from({"device_id": UDID}))
    async with aiohttp.ClientSession() as s:
        wrong = await enrol(s, srv, "jamf", rsa_key(), issued.challenge, cn=OTHER)
        assert wrong.status is PKIStatus.FAILURE
        right = await enrol(s, srv, "jamf", rsa_key(), issued.challenge, cn=UDID)
    assert right.status is PKIStatus.SUCCESS, (wrong.fail_text, right.fail_text)
