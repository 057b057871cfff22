"""Two Jamf events about one device handled at once (two deliveries racing, two server workers): the one the MDM
dated later decides, whichever of the two finishes first. Here the older event (unenrolled) is overtaken by the
newer one (check-in: still managed) at the two moments where it could be: after it was judged fresh, and after
it read the device; the device stays active and tracked as managed."""
from __future__ import annotations

from datetime import timedelta

import pytest

from scep_server.mdm.errors import EventSuperseded
from scep_server.mdm.plan import MdmState, Record
from tests.binding.conftest import api, clock, server  # noqa: F401
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET, jamf_webhook
from tests.mdm.test_mdm_store import JAMF, env, listed  # noqa: F401 - the store fixture (SQLite and PostgreSQL)


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


@pytest.mark.parametrize("overtaken", ["after its check", "before its change"])
async def test_an_older_event_overtaken_by_a_newer_one_changes_nothing(server, api, secret_env, overtaken):
    svc = server.runtime.mdm
    _, secret = await svc.configure("jamf", "jamf", {
        "url": "https://jamf.example", "client_id": CLIENT_ID, "client_secret": secret_env, "id_field": "udid"},
        actor="cli:admin")
    await api.add_device("d1")
    await listed(svc, "jamf", "d1")
    hook = f"{server.url}/hooks/jamf"
    now_ms = int(svc.clock().timestamp() * 1000)
    older, newer = now_ms - 60_000, now_ms - 30_000
    newer_reply: list = []
    started: list = []

    async def newer_event() -> None:
        started.append(True)
        newer_reply.append(await jamf_webhook(api.session, hook, "MobileDeviceCheckIn", "d1", secret=secret,
                                              header=True, at_ms=newer))

    if overtaken == "after its check":  # the newer one runs while the older one first reads the device
        real_ours = svc._ours

        async def ours(ids):
            if not started:
                await newer_event()
            return await real_ours(ids)

        svc._ours = ours
    else:  # the newer one runs once the older one has read the device and decided
        real_transition = svc.devices.transition

        async def transition(*args, **kw):
            if not started:
                await newer_event()
            return await real_transition(*args, **kw)

        svc.devices.transition = transition
    status, body = await jamf_webhook(api.session, hook, "MobileDeviceUnEnrolled", "d1", secret=secret,
                                      header=True, at_ms=older)
    assert newer_reply and newer_reply[0][0] == 200, newer_reply
    assert status in (200, 202) and (body.get("change") is None), body
    assert (await api.get("/api/v1/devices/d1"))["status"] == "active"
    tracked = await svc._tracked_one("jamf", "d1")
    assert tracked["d1"].state.value == "managed"
    # a later event still applies
    status, body = await jamf_webhook(api.session, hook, "MobileDeviceUnEnrolled", "d1", secret=secret,
                                      header=True, at_ms=now_ms)
    assert status == 200 and body["change"]["action"] == "deactivate", body


async def test_on_either_database_the_later_event_decides_when_it_overtakes_an_older_change(env):
    """The same race on the store (SQLite and PostgreSQL): the newer event is handled between the older one's
    reading of the device and its change; the change is refused and the newer event's state is what is tracked."""
    svc, devices, _fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("D1", actor="cli:admin")
    await listed(svc, "jamf", "D1")
    older, newer = clock() - timedelta(minutes=2), clock() - timedelta(minutes=1)
    real_transition = devices.transition
    overtaken = []

    async def transition(*args, **kw):
        if not overtaken:
            overtaken.append(await svc.event("jamf", Record("D1", "1", MdmState.MANAGED), at=newer))
        return await real_transition(*args, **kw)

    devices.transition = transition
    assert await svc.event("jamf", Record("D1", "1", MdmState.UNMANAGED), at=older) is None
    assert overtaken == [None]  # the newer event found nothing to change
    assert (await devices.get("D1")).status.value == "active"
    assert (await svc._tracked_one("jamf", "D1"))["D1"].state is MdmState.MANAGED
    with pytest.raises(EventSuperseded):  # and the older one, posted again, is refused outright
        await svc.event("jamf", Record("D1", "1", MdmState.UNMANAGED), at=older)
