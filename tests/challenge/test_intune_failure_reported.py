"""docs/intune.md step 6: "An enrolment Intune allowed that fails afterwards ... is reported with
failureNotification": also when the checks after the challenge refuse it (here the CN and the IntuneDeviceId SAN
name two devices)."""
from __future__ import annotations

import aiohttp
from cryptography import x509

from scep_server.profilemodel import DeviceIdSource
from scep_server.scep import PKIStatus
from tests.challenge.conftest import add_profile, clock, enrol, server  # noqa: F401
from tests.challenge.peers import FakeIntune
from tests.challenge.test_delegated import intune_settings, secret_file  # noqa: F401
from tests.factories import rsa_key

async def test_an_enrolment_intune_allowed_then_refused_here_is_reported(server, secret_file):
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file, retries=0),
                          device_id=DeviceIdSource(attribute="CN"), template={"san_types": ["uri"]})
        rep = await enrol(s, server, "intune", rsa_key(), "intune-challenge", cn="device-a",
                          sans=[x509.UniformResourceIdentifier("IntuneDeviceId://device-b")])
        assert rep.status is PKIStatus.FAILURE, rep.fail_text
        assert "validateRequest" in fake.actions()  # Intune allowed it
        assert "failureNotification" in fake.actions(), (rep.fail_text, fake.actions())
