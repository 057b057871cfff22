"""A device taken down (deleted, deactivated, suspended) gets no new certificate, whatever named it: its one-time
challenge, a pre-registration, or the request itself; nor through the approval of an enrolment that waited."""
from __future__ import annotations

import os

import aiohttp
import pytest
import sqlalchemy as sa

from scep_server.challenge.store import expectations_from
from scep_server.enrolment.approval import ApprovalWorkflow
from scep_server.enrolment.model import ApprovalRefused
from scep_server.enrolment.service import ScepService
from scep_server.scep.types import PKIStatus
from scep_server.store.tables import certificates
from tests.challenge.conftest import add_profile, dynamic, enrol
from tests.factories import rsa_key
from tests.server import start_app
from trustkit.problems import Conflict


@pytest.fixture
async def on_both(aiohttp_server, tmp_path, db_url):
    """The application on SQLite and on PostgreSQL."""
    return await start_app(aiohttp_server, tmp_path, db_url)


async def certificates_of(rt, device_id: str) -> list[str]:
    async with rt.engine.connect() as conn:
        return list((await conn.execute(sa.select(certificates.c.status).where(
            certificates.c.enrolled_device_id == device_id))).scalars().all())


@pytest.mark.parametrize("action, status", [("delete", "deleted"), ("deactivate", "deactivated"),
                                            ("suspend", "suspended")])
async def test_a_one_time_challenge_issued_for_a_device_taken_down_since_enrols_nothing(server, api, action, status):
    rt = server.runtime
    await add_profile(server, "jamf", "dynamic", dynamic(), device_trust=True)
    await api.add_device("mac-9")
    issued = await rt.challenges.new_challenge("jamf", source="api",
                                               expectations=expectations_from({"device_id": "mac-9"}))
    await api.action("mac-9", action)
    rep = await enrol(api.session, server, "jamf", rsa_key(), issued.challenge, cn="mac-9")
    assert rep.status is PKIStatus.FAILURE and f"device mac-9 is {status}" in rep.fail_text


@pytest.mark.parametrize("action, status", [("delete", "deleted"), ("deactivate", "deactivated")])
async def test_an_enrolment_pre_registered_for_a_device_taken_down_since_enrols_nothing(server, api, action, status):
    await api.add_device("phone-9")
    txid = os.urandom(8).hex().upper()
    await api.post("/api/v1/devices/phone-9/enrolments", {"profile": "default", "transaction_id": txid},
                   admin=True, expect=201)
    await api.action("phone-9", action)
    rep = await enrol(api.session, server, "default", rsa_key(), server.challenge(), cn="phone-9",
                      transaction_id=txid)
    assert rep.status is PKIStatus.FAILURE and f"device phone-9 is {status}" in rep.fail_text


@pytest.mark.parametrize("action", ["deactivate", "suspend", "delete"])
async def test_an_approval_waits_while_the_device_is_taken_down_and_a_deleted_one_is_rejected(server, api, action):
    rt = server.runtime
    await add_profile(server, "manual", "dynamic", dynamic(), require_approval=True, device_trust=True)
    await api.add_device("mac-2")
    issued = await rt.challenges.new_challenge("manual", source="api",
                                               expectations=expectations_from({"device_id": "mac-2"}))
    key = rsa_key()
    rep = await enrol(api.session, server, "manual", key, issued.challenge, cn="mac-2", transaction_id="WAITING-1")
    assert rep.status is PKIStatus.PENDING
    await api.action("mac-2", action)
    if action == "delete":
        with pytest.raises(ApprovalRefused, match="device mac-2 is deleted"):
            await rt.scep.decide("manual", "WAITING-1", approve=True, actor="admin")
        assert (await rt.scep.repository.find("manual", "WAITING-1"))["state"] == "rejected"
        return
    with pytest.raises(Conflict, match="can be approved once it is active"):
        await rt.scep.decide("manual", "WAITING-1", approve=True, actor="admin")
    assert (await rt.scep.repository.find("manual", "WAITING-1"))["state"] == "pending"
    await api.action("mac-2", "reactivate" if action == "deactivate" else "unsuspend")
    serial = await rt.scep.decide("manual", "WAITING-1", approve=True, actor="admin")
    assert (await rt.scep.repository.certificate(serial)).enrolled_device_id == "mac-2"


@pytest.mark.parametrize("action, status", [("delete", "deleted"), ("deactivate", "deactivated")])
async def test_a_device_taken_down_while_its_certificate_is_signed_gets_none(on_both, monkeypatch, action, status):
    """The device passed the checks, then another process (instance) took it down before the certificate was
    recorded: the enrolment is refused and nothing is recorded, instead of a valid certificate that the device's
    change never held or revoked."""
    rt = on_both.runtime
    devices = rt.binding.devices
    await add_profile(on_both, "jamf", "dynamic", dynamic(), device_trust=True)
    await devices.create("mac-7", actor="t")
    issued = await rt.challenges.new_challenge("jamf", source="api",
                                               expectations=expectations_from({"device_id": "mac-7"}))
    issue = ScepService._issue

    async def taken_down_meanwhile(self, e):
        await devices.transition("mac-7", action, actor="mdm")
        return await issue(self, e)

    monkeypatch.setattr(ScepService, "_issue", taken_down_meanwhile)
    async with aiohttp.ClientSession() as session:
        rep = await enrol(session, on_both, "jamf", rsa_key(), issued.challenge, cn="mac-7")
    assert rep.status is PKIStatus.FAILURE and f"device mac-7 is {status}" in rep.fail_text
    assert await certificates_of(rt, "mac-7") == []


@pytest.mark.parametrize("action", ["delete", "deactivate"])
async def test_an_approval_racing_the_device_being_taken_down_issues_nothing(on_both, monkeypatch, action):
    rt = on_both.runtime
    devices = rt.binding.devices
    await add_profile(on_both, "manual", "dynamic", dynamic(), require_approval=True, device_trust=True)
    await devices.create("mac-3", actor="t")
    issued = await rt.challenges.new_challenge("manual", source="api",
                                               expectations=expectations_from({"device_id": "mac-3"}))
    async with aiohttp.ClientSession() as session:
        rep = await enrol(session, on_both, "manual", rsa_key(), issued.challenge, cn="mac-3",
                          transaction_id="WAITING-3")
    assert rep.status is PKIStatus.PENDING
    active = ApprovalWorkflow._device_active

    async def taken_down_after_the_check(self, *args, **kwargs):
        await active(self, *args, **kwargs)
        await devices.transition("mac-3", action, actor="mdm")

    monkeypatch.setattr(ApprovalWorkflow, "_device_active", taken_down_after_the_check)
    if action == "delete":
        with pytest.raises(ApprovalRefused, match="device mac-3 is deleted"):
            await rt.scep.decide("manual", "WAITING-3", approve=True, actor="admin")
        assert (await rt.scep.repository.find("manual", "WAITING-3"))["state"] == "rejected"
    else:
        with pytest.raises(Conflict, match="can be approved once it is active"):
            await rt.scep.decide("manual", "WAITING-3", approve=True, actor="admin")
        assert (await rt.scep.repository.find("manual", "WAITING-3"))["state"] == "pending"
    assert await certificates_of(rt, "mac-3") == []
