"""MDM sources on the store (SQLite and PostgreSQL): configuration, the periodic sync's claim, tracking; and the
`scep-server mdm` commands."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from scep_server.binding.devices import DeviceStore
from scep_server.config import MdmSettings
from scep_server.mdm.clients import MdmUnavailable
from scep_server.mdm.errors import EventSuperseded, MdmSourceInvalid, MdmSourceNotFound, MdmSyncRunning
from scep_server.mdm.plan import MdmState, Record, Tracked
from scep_server.mdm.service import MdmService
from trustkit.clock import SettableClock

from tests.binding.conftest import START

JAMF = {"url": "https://jamf.example", "client_id": "c", "client_secret": {"env": "X"}, "id_field": "udid"}


class FakeMdm:
    def __init__(self):
        self.records: list[Record] = []
        self.fail = False
        self.during_read = None  # called while the inventory is read (a webhook arriving meanwhile)

    async def __call__(self, config, state):
        if self.fail:
            raise MdmUnavailable("GET /api/v1/computers-inventory: HTTP 503")
        records = list(self.records)
        if self.during_read is not None:
            await self.during_read()
        return records, state


async def listed(svc: MdmService, name: str, *device_ids: str) -> None:
    """Devices the source's inventory listed, tracked as a sync leaves them (no event time recorded): a webhook
    event changes only such a device."""
    await svc._track(name, {d: (Tracked(MdmState.MANAGED), "") for d in device_ids}, {}, [], svc.clock())


@pytest.fixture
async def env(engine):
    clock = SettableClock(START)
    devices = DeviceStore(engine, clock=clock)
    fake = FakeMdm()
    svc = MdmService(engine, devices, MdmSettings(), reader=fake, clock=clock)
    return svc, devices, fake, clock


async def test_configure_validates_and_keeps_only_a_hash_of_the_webhook_secret(env, engine):
    svc, *_ = env
    with pytest.raises(MdmSourceInvalid):
        await svc.configure("Bad Name", "jamf", JAMF, actor="t")
    with pytest.raises(MdmSourceInvalid):
        await svc.configure("jamf", "jamf", {**JAMF, "id_field": "device_id"}, actor="t")
    source, secret = await svc.configure("jamf", "jamf", JAMF, actor="t")
    assert secret and source["webhook"] and "secret" not in json.dumps(source["config"]).replace("client_secret", "")
    assert (await svc.webhook_source("jamf", secret))["url"] == JAMF["url"]
    with pytest.raises(MdmSourceNotFound):
        await svc.webhook_source("jamf", secret[:-1])
    # an update keeps the secret unless a new one is asked for
    _, again = await svc.configure("jamf", "jamf", {**JAMF, "url": "https://other.example"}, actor="t")
    assert again is None and (await svc.webhook_source("jamf", secret))["url"] == "https://other.example"
    _, rotated = await svc.configure("jamf", "jamf", JAMF, actor="t", new_webhook_secret=True)
    with pytest.raises(MdmSourceNotFound):
        await svc.webhook_source("jamf", secret)
    assert await svc.webhook_source("jamf", rotated)


async def test_the_periodic_sync_is_claimed_by_one_process_per_period(env, engine):
    svc, devices, fake, clock = env
    other = MdmService(engine, devices, MdmSettings(), reader=fake, clock=clock)
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    hold = timedelta(seconds=900)
    assert await svc.claim("jamf", hold=hold)
    assert not await other.claim("jamf", hold=hold)
    with pytest.raises(MdmSyncRunning):  # nor does an administrator's sync run meanwhile
        await other.sync("jamf", actor="admin")
    await svc._sync("jamf", dry_run=False, actor="mdm:jamf", confirm_takedowns=None)
    clock.advance(timedelta(seconds=899))
    assert not await other.claim("jamf", hold=hold)
    clock.advance(timedelta(seconds=2))
    assert await other.claim("jamf", hold=hold)
    assert not await svc.claim("nope", hold=hold)


async def test_a_failed_read_changes_nothing_and_is_the_last_outcome(env):
    svc, devices, fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("d1", actor="t")
    fake.records = [Record("d1", "1", MdmState.MANAGED)]
    assert (await svc.sync("jamf", actor="t")).changes == []
    fake.fail = True
    clock.advance(timedelta(days=30))
    report = await svc.sync("jamf", actor="t")
    assert report.error and report.changes == []
    assert (await devices.get("d1")).status.value == "active"
    assert (await svc.source("jamf"))["last_sync_outcome"].startswith("error: GET")


async def test_tracking_follows_the_inventory_and_forgets_deleted_devices(env, engine):
    svc, devices, fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    for d in ("d1", "d2"):
        await devices.create(d, actor="t")
    fake.records = [Record("d1", "1", MdmState.MANAGED), Record("d2", "2", MdmState.UNMANAGED)]
    report = await svc.sync("jamf", actor="t")
    assert [(c.device_id, c.action) for c in report.changes] == [("d2", "deactivate")]
    assert (await devices.get("d2")).status_changed_by == "mdm:jamf"
    await devices.transition("d1", "delete", actor="cli:root")
    fake.records = []
    report = await svc.sync("jamf", actor="t")
    assert report.changes == []  # d1 is deleted already; d2 is held already (its grace period starts)
    assert set((await svc._tracked("jamf"))) == {"d2"}
    clock.advance(timedelta(days=7))
    assert [(c.device_id, c.action) for c in (await svc.sync("jamf", actor="t")).changes] == [("d2", "delete")]
    await svc.remove("jamf", actor="t")
    assert await svc._tracked("jamf") == {}
    with pytest.raises(MdmSourceNotFound):
        await svc.sync("jamf", actor="t")


def test_mdm_commands(cli, tmp_path):
    with capture_logs():  # the commands' log lines stay out of their output
        _mdm_commands(cli, tmp_path)


def _mdm_commands(cli, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    out = cli("mdm", "configure", "jamf", "--url", "https://127.0.0.1:1", "--client-id", "c",
              "--client-secret-file", str(secret))
    assert json.loads(out)["kind"] == "jamf"
    assert cli("mdm", "configure", "jamf", "--url", "http://jamf.example", "--client-id", "c",
               "--client-secret-file", str(secret), code=2)  # plain http only to a loopback address
    assert "give exactly one" in cli("mdm", "configure", "intune", "--tenant", "t", "--client-id", "c", code=2)
    assert cli("mdm", "list").startswith("jamf\tjamf\t-")
    assert json.loads(cli("mdm", "show", "jamf"))["config"]["client_secret"] == {"file": str(secret)}
    # the MDM cannot be reached: the command fails and says nothing changed
    assert "nothing changed" in cli("mdm", "sync", "jamf", "--dry-run", code=1)
    cli("mdm", "remove", "jamf")
    assert "no MDM source" in cli("mdm", "show", "jamf", code=1)


async def test_an_unenrol_and_enrol_again_does_not_undo_an_administrators_suspension(env):
    """The holder of a device an administrator suspended unenrols it from the MDM (deactivated by the MDM) and
    enrols it again: by a webhook event or by a sync, it stays down, as the administrator's to bring back."""
    svc, devices, fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    for device in ("d1", "d2"):
        await devices.create(device, actor="t")
        await devices.transition(device, "suspend", actor="cli:root", reason="lost phone")
    await listed(svc, "jamf", "d1")
    await svc.event("jamf", Record("d1", "1", MdmState.UNMANAGED))
    assert (await devices.get("d1")).status.value == "deactivated"
    assert await svc.event("jamf", Record("d1", "1", MdmState.MANAGED)) is None
    assert (await devices.get("d1")).status.value == "deactivated"
    fake.records = [Record("d2", "2", MdmState.UNMANAGED)]
    await svc.sync("jamf", actor="mdm:jamf")
    fake.records = [Record("d2", "2", MdmState.MANAGED)]
    assert (await svc.sync("jamf", actor="mdm:jamf")).changes == []
    assert (await devices.get("d2")).status.value == "deactivated"
    # what this MDM took down from active, it brings back
    await devices.create("d3", actor="t")
    await listed(svc, "jamf", "d3")
    await svc.event("jamf", Record("d3", "3", MdmState.UNMANAGED))
    assert (await svc.event("jamf", Record("d3", "3", MdmState.MANAGED))).action == "reactivate"
    assert (await devices.get("d3")).status.value == "active"


async def test_two_events_for_one_device_at_once_are_both_applied(env):
    import asyncio

    svc, devices, fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("d1", actor="t")
    await listed(svc, "jamf", "d1")
    for state in (MdmState.MANAGED, MdmState.UNMANAGED):
        results = await asyncio.gather(*(svc.event("jamf", Record("d1", "1", state)) for _ in range(2)),
                                       return_exceptions=True)
        assert not [r for r in results if isinstance(r, Exception)], results
    assert (await devices.get("d1")).status.value == "deactivated"


async def test_of_two_records_of_one_device_the_least_trusted_counts(env):
    """Two inventory records name one device (a stale record, a second enrolment reporting the same serial): one
    disabled or unmanaged is not outweighed by one managed, whichever comes last."""
    svc, devices, fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("SN1", actor="t")
    fake.records = [Record("SN1", "1", MdmState.UNMANAGED)]
    assert [c.action for c in (await svc.sync("jamf", actor="t")).changes] == ["deactivate"]
    fake.records = [Record("SN1", "1", MdmState.UNMANAGED), Record("SN1", "2", MdmState.MANAGED)]
    assert (await svc.sync("jamf", actor="t")).changes == []
    assert (await devices.get("SN1")).status.value == "deactivated"


async def test_a_sync_leaves_alone_a_device_that_changed_while_it_read(env):
    """The sync reads the device as managed; meanwhile the MDM posts that it was unenrolled and it is deactivated.
    The sync's older view does not bring it back; the next sync looks again."""
    svc, devices, fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("d1", actor="t")
    fake.records = [Record("d1", "1", MdmState.MANAGED)]
    await svc.sync("jamf", actor="t")

    async def unenrolled():
        clock.advance(1)
        assert (await svc.event("jamf", Record("d1", "1", MdmState.UNMANAGED))).action == "deactivate"

    fake.during_read = unenrolled
    clock.advance(60)
    report = await svc.sync("jamf", actor="t")
    assert report.changes == [] and [s["error"] for s in report.skipped] == ["changed_while_read"]
    assert (await devices.get("d1")).status.value == "deactivated"


async def test_an_unrelated_administrators_event_does_not_make_the_mdm_undo_a_suspension(env):
    """The device an administrator suspended, then this MDM deactivated, stays down when the MDM manages it again,
    even after an administrator's device event that changes no status (a pre-registration)."""
    svc, devices, fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("D1", actor="cli:admin")
    await devices.transition("D1", "suspend", actor="cli:admin", reason="lost")
    fake.records = [Record("D1", "1", MdmState.UNMANAGED)]
    clock.advance(timedelta(minutes=1))
    assert [c.action for c in (await svc.sync("jamf", actor="mdm:jamf")).changes] == ["deactivate"]
    clock.advance(timedelta(minutes=1))
    await devices.preregister("D1", profile="default", transaction_id="tx-1", actor="cli:admin")
    fake.records = [Record("D1", "1", MdmState.MANAGED)]
    clock.advance(timedelta(minutes=1))
    assert (await svc.sync("jamf", actor="mdm:jamf")).changes == []
    assert (await devices.get("D1")).status.value == "deactivated"


@pytest.mark.parametrize("by", ["webhook", "sync"])
async def test_an_administrators_change_made_after_the_mdm_read_the_device_is_not_undone(env, by):
    """The MDM read the device as taken down by itself; before it writes, an administrator reactivates and
    deactivates it again (stolen): the status is the same, but the MDM's reactivation no longer applies."""
    svc, devices, fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("D4", actor="cli:admin")
    fake.records = [Record("D4", "4", MdmState.UNMANAGED)]
    await svc.sync("jamf", actor="mdm:jamf")
    assert (await devices.get("D4")).status.value == "deactivated"
    clock.advance(timedelta(minutes=15))
    real = svc._ours

    async def read_then_administrator(ids):
        out = await real(ids)
        clock.advance(timedelta(seconds=1))
        await devices.transition("D4", "reactivate", actor="cli:admin")
        clock.advance(timedelta(seconds=1))
        await devices.transition("D4", "deactivate", actor="cli:admin", reason="stolen")
        return out

    svc._ours = read_then_administrator
    fake.records = [Record("D4", "4", MdmState.MANAGED)]
    if by == "webhook":
        assert await svc.event("jamf", Record("D4", "4", MdmState.MANAGED)) is None
    else:
        report = await svc.sync("jamf", actor="mdm:jamf")
        assert report.changes == [] and report.skipped[0]["device_id"] == "D4"
    device = await devices.get("D4")
    assert (device.status.value, device.status_changed_by) == ("deactivated", "cli:admin")


async def test_an_event_dated_before_a_syncs_reading_is_not_applied_over_it(env):
    """A sync read the device unmanaged an hour after the MDM dated an enrolment event, delivered late (or a
    captured one posted again): what the sync read is newer, and the event is not applied."""
    svc, devices, fake, clock = env
    await svc.configure("jamf", "jamf", JAMF, actor="t")
    await devices.create("D3", actor="cli:admin")
    event_time = clock()
    clock.advance(timedelta(hours=1))
    fake.records = [Record("D3", "3", MdmState.UNMANAGED)]
    assert [c.action for c in (await svc.sync("jamf", actor="mdm:jamf")).changes] == ["deactivate"]
    clock.advance(timedelta(minutes=1))
    with pytest.raises(EventSuperseded):
        await svc.event("jamf", Record("D3", "3", MdmState.MANAGED), at=event_time)
    assert (await devices.get("D3")).status.value == "deactivated"
    assert (await svc.event("jamf", Record("D3", "3", MdmState.MANAGED), at=clock())).action == "reactivate"
