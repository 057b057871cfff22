"""A device from enrolment to retirement, driven by a simulated Jamf Pro (API and webhooks) and a simulated
Microsoft Graph: its certificate goes good -> on hold -> revoked over OCSP and on the CRL, and every change is an
audit event whose actor is the MDM."""
from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from cryptography import x509

from scep_server.mdm.readers import make_reader
from tests.binding.conftest import enrol
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET, GraphPeer, JamfPeer, jamf_webhook
from tests.mdm.test_mdm_store import listed

pytestmark = pytest.mark.interop

UDID = "00008030-001A2B3C4D5E802E"


async def _crl_reason(api, serial: int, timeout: float = 10):
    """The CRL reason of `serial` on the served CRL once it changes to what is awaited (None: not listed;
    "unpublished": the server's first CRL is not signed yet, the documented 503)."""
    async with api.session.get(api.url + "/crl/default.crl") as resp:
        if resp.status == 503:
            return "unpublished"
        assert resp.status == 200, await resp.text()
        der = await resp.read()
    entry = x509.load_der_x509_crl(der).get_revoked_certificate_by_serial_number(serial)
    if entry is None:
        return None
    return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason


async def _await_crl(api, serial: int, reason, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := await _crl_reason(api, serial)) is not reason:
        assert time.monotonic() < deadline, f"CRL shows {got}, not {reason}"
        await asyncio.sleep(0.05)


async def _ocsp(api, cert: x509.Certificate, issuer: x509.Certificate):
    """The certificate's status and revocation reason in the OCSP responder's answer (POST /ocsp/default)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    body = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)
    async with api.session.post(api.url + "/ocsp/default", data=body,
                                headers={"Content-Type": "application/ocsp-request"}) as resp:
        assert resp.status == 200 and resp.content_type == "application/ocsp-response"
        answer = ocsp.load_der_ocsp_response(await resp.read())
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL and answer.serial_number == cert.serial_number
    return answer.certificate_status, answer.revocation_reason


async def _device(api, device_id: str) -> dict:
    return await api.get(f"/api/v1/devices/{device_id}")


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MDM_TEST_SECRET", CLIENT_SECRET)
    return {"env": "MDM_TEST_SECRET"}


async def test_jamf_drives_a_device_from_enrolment_to_retirement(server, api, scepclient, aiohttp_server, clock,
                                                                  secret_env, tmp_path):
    jamf = JamfPeer()
    peer = await aiohttp_server(jamf.app(), host="127.0.0.1")
    jamf_url = f"http://127.0.0.1:{peer.port}"
    dev = await enrol(scepclient, server.url, server.challenge(), tmp_path / "dev", UDID)
    await api.add_device(UDID)
    assert (await api.attest(UDID, dev.cert_pem, dev.key))["managed"]
    serial = dev.cert.serial_number
    issuer = server.runtime.cas["default"].cert
    from cryptography.x509.ocsp import OCSPCertStatus

    assert await _ocsp(api, dev.cert, issuer) == (OCSPCertStatus.GOOD, None)

    mdm = server.runtime.mdm
    source, hook_secret = await mdm.configure("jamf", "jamf", {"url": jamf_url, "client_id": CLIENT_ID,
                                                               "client_secret": secret_env, "id_field": "udid"},
                                              actor="cli:admin")
    assert hook_secret and source["webhook"]
    jamf.mobile(UDID, managed=True)
    jamf.computer("COMPUTER-UNKNOWN-HERE", managed=False)

    # managed in Jamf: nothing changes, the device is tracked
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert report["records"] == 2 and report["changes"] == [] and report["error"] is None
    assert jamf.page_size_seen and set(jamf.page_size_seen) == {100}

    # Jamf posts MobileDeviceUnEnrolled: the device is deactivated, its certificate on hold
    hook = f"{server.url}/hooks/jamf"
    status, body = await jamf_webhook(api.session, hook, "MobileDeviceUnEnrolled", UDID, secret=hook_secret)
    assert status == 200 and body["change"]["action"] == "deactivate", body
    assert (await _device(api, UDID))["status"] == "deactivated"
    # the responder answers the change at once (the CRL within its re-sign delay)
    assert await _ocsp(api, dev.cert, issuer) == (OCSPCertStatus.REVOKED, x509.ReasonFlags.certificate_hold)
    await _await_crl(api, serial, x509.ReasonFlags.certificate_hold)
    assert not (await api.attest(UDID, dev.cert_pem, dev.key))["managed"]

    # enrolled again (header authentication this time): reactivated, off the CRL
    status, body = await jamf_webhook(api.session, hook, "MobileDeviceEnrolled", UDID, secret=hook_secret,
                                      header=True)
    assert status == 200 and body["change"]["action"] == "reactivate", body
    assert await _ocsp(api, dev.cert, issuer) == (OCSPCertStatus.GOOD, None)
    await _await_crl(api, serial, None)
    assert (await api.attest(UDID, dev.cert_pem, dev.key))["managed"]

    # removed from Jamf's inventory: on hold at once, deleted (revoked) after the grace period
    del jamf.mobiles[UDID]
    dry = await api.post("/api/v1/mdm/jamf/sync", {"dry_run": True}, admin=True)
    assert [c["action"] for c in dry["changes"]] == ["deactivate"]
    assert (await _device(api, UDID))["status"] == "active"  # a dry run changes nothing
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert [c["action"] for c in report["changes"]] == ["deactivate"]
    await _await_crl(api, serial, x509.ReasonFlags.certificate_hold)

    clock.advance(timedelta(days=7, minutes=1))
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert [c["action"] for c in report["changes"]] == ["delete"]
    assert (await _device(api, UDID))["status"] == "deleted"
    assert await _ocsp(api, dev.cert, issuer) == (OCSPCertStatus.REVOKED, x509.ReasonFlags.cessation_of_operation)
    await _await_crl(api, serial, x509.ReasonFlags.cessation_of_operation)

    # the audit trail names the MDM as the actor of each change
    shown = await _device(api, UDID)
    kinds = [(h["kind"], h["actor"]) for h in shown["history"]]
    assert ("device.deactivate", "mdm:jamf") in kinds and ("device.reactivate", "mdm:jamf") in kinds
    assert ("device.delete", "mdm:jamf") in kinds
    events = await api.get("/api/v1/events?kind=mdm.sync")
    assert len(events["events"]) == 4 - 1  # three syncs applied; the dry run records none


async def test_an_administrators_deactivation_is_not_undone_by_the_mdm(server, api, aiohttp_server, secret_env):
    jamf = JamfPeer()
    peer = await aiohttp_server(jamf.app(), host="127.0.0.1")
    await api.add_device("dev-admin-held")
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": "udid"}, actor="cli:admin")
    jamf.computer("dev-admin-held", managed=True)
    await api.action("dev-admin-held", "deactivate")
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True)
    assert report["changes"] == []
    assert (await _device(api, "dev-admin-held"))["status"] == "deactivated"


async def test_an_unreadable_inventory_changes_nothing(server, api, aiohttp_server, secret_env):
    jamf = JamfPeer()
    peer = await aiohttp_server(jamf.app(), host="127.0.0.1")
    await api.add_device("dev-keep")
    await server.runtime.mdm.configure("jamf", "jamf", {"url": f"http://127.0.0.1:{peer.port}",
                                                        "client_id": CLIENT_ID, "client_secret": secret_env,
                                                        "id_field": "udid"}, actor="cli:admin")
    jamf.computer("dev-keep")
    assert (await api.post("/api/v1/mdm/jamf/sync", {}, admin=True))["changes"] == []
    jamf.fail_with = 500  # Jamf fails: the device must not look "gone"
    report = await api.post("/api/v1/mdm/jamf/sync", {}, admin=True, expect=502)
    assert report["changes"] == [] and "HTTP 500" in report["error"]
    assert (await _device(api, "dev-keep"))["status"] == "active"
    shown = await api.get("/api/v1/mdm/jamf")
    assert shown["last_sync_outcome"].startswith("error:")


async def test_webhook_authentication_and_hostile_bodies(server, api, aiohttp_server, secret_env):
    _, secret = await server.runtime.mdm.configure("jamf", "jamf", {
        "url": "https://jamf.example", "client_id": CLIENT_ID, "client_secret": secret_env, "id_field": "udid"},
        actor="cli:admin")
    hook = f"{server.url}/hooks/jamf"
    for presented in (None, "wrong", secret + "x"):
        status, body = await jamf_webhook(api.session, hook, "MobileDeviceUnEnrolled", "d1", secret=presented)
        assert status == 401 and body["code"] == "unauthorized", body
    # an unknown source answers as a wrong secret does: nothing tells which sources exist
    status, _ = await jamf_webhook(api.session, f"{server.url}/hooks/nope", "MobileDeviceUnEnrolled", "d1",
                                   secret=secret)
    assert status == 401
    headers = {"X-Webhook-Secret": secret}
    for raw in (b"", b"[]", b"{", b'{"a":1,"a":2}', b"\xff" * 10):
        async with api.session.post(hook, data=raw, headers={**headers, "Content-Type": "application/json"}) as r:
            assert r.status == 400, (raw, r.status)
    async with api.session.post(hook, json={"webhook": {"webhookEvent": "MobileDeviceUnEnrolled"}, "event": {}},
                                headers=headers) as r:
        assert r.status == 400  # no device named
    for kind in ([], {"a": 1}, 7):  # an event name that is no string (a list is not even hashable)
        async with api.session.post(hook, json={"webhook": {"webhookEvent": kind}, "event": {"udid": "d1"}},
                                    headers=headers) as r:
            assert r.status == 202 and (await r.json())["accepted"] is False, kind
    status, body = await jamf_webhook(api.session, hook, "ComputerPolicyFinished", "d1", secret=secret)
    assert status == 202 and body["accepted"] is False
    status, body = await jamf_webhook(api.session, hook, "MobileDeviceUnEnrolled", "unknown-device", secret=secret)
    assert status == 202 and body["accepted"] is False


async def test_intune_and_entra_drive_the_lifecycle_with_delta_queries(server, api, aiohttp_server, clock,
                                                                       secret_env):
    graph = GraphPeer()
    peer = await aiohttp_server(graph.app(), host="127.0.0.1")
    base = f"http://127.0.0.1:{peer.port}"
    for i in range(5):  # more devices than one page
        graph.device(f"intune-{i}", f"aad-{i}")
        await api.add_device(f"intune-{i}")
    await server.runtime.mdm.configure("intune", "intune", {
        "tenant": graph.tenant, "client_id": CLIENT_ID, "client_secret": secret_env, "id_field": "device_id",
        "authority_url": base, "graph_url": base}, actor="cli:admin")

    first = await api.post("/api/v1/mdm/intune/sync", {}, admin=True)
    assert first["records"] == 5 and first["changes"] == []

    graph.set_enabled("aad-1", False)  # disabled in Entra ID
    report = await api.post("/api/v1/mdm/intune/sync", {}, admin=True)
    assert [(c["device_id"], c["action"]) for c in report["changes"]] == [("intune-1", "deactivate")]
    assert graph.delta_requests == ["full", "delta"]  # the second sync read only the directory's changes

    report = await api.post("/api/v1/mdm/intune/sync", {}, admin=True)
    assert report["changes"] == []  # still disabled: remembered across delta rounds, no repeated change

    graph.set_enabled("aad-1", True)
    report = await api.post("/api/v1/mdm/intune/sync", {}, admin=True)
    assert [(c["device_id"], c["action"]) for c in report["changes"]] == [("intune-1", "reactivate")]

    del graph.managed["intune-3"]  # deleted from Intune
    report = await api.post("/api/v1/mdm/intune/sync", {}, admin=True)
    assert [(c["device_id"], c["action"]) for c in report["changes"]] == [("intune-3", "deactivate")]
    clock.advance(timedelta(days=8))
    report = await api.post("/api/v1/mdm/intune/sync", {}, admin=True)
    assert [(c["device_id"], c["action"]) for c in report["changes"]] == [("intune-3", "delete")]


async def test_a_refused_client_secret_is_an_error_and_changes_nothing(aiohttp_server):
    jamf = JamfPeer()
    peer = await aiohttp_server(jamf.app(), host="127.0.0.1")
    read = make_reader(timeout=5)
    import os
    os.environ["MDM_TEST_WRONG"] = "not-the-secret"
    try:
        from scep_server.mdm.clients import MdmUnavailable
        with pytest.raises(MdmUnavailable, match="token request"):
            await read({"kind": "jamf", "url": f"http://127.0.0.1:{peer.port}", "client_id": CLIENT_ID,
                        "client_secret": {"env": "MDM_TEST_WRONG"}, "id_field": "udid"}, {})
        with pytest.raises(MdmUnavailable, match="not set"):
            await read({"kind": "jamf", "url": f"http://127.0.0.1:{peer.port}", "client_id": CLIENT_ID,
                        "client_secret": {"env": "MDM_TEST_UNSET_VARIABLE"}, "id_field": "udid"}, {})
    finally:
        del os.environ["MDM_TEST_WRONG"]


async def test_an_older_event_delivered_late_does_not_undo_a_newer_one(server, api, secret_env):
    """Jamf's eventTimestamp orders the events about one device: a check-in of before the unenrolment, delivered
    after it (or posted again), is not applied."""
    _, secret = await server.runtime.mdm.configure("jamf", "jamf", {
        "url": "https://jamf.example", "client_id": CLIENT_ID, "client_secret": secret_env, "id_field": "udid"},
        actor="cli:admin")
    await api.add_device("d1")
    await listed(server.runtime.mdm, "jamf", "d1")
    hook = f"{server.url}/hooks/jamf"

    async def post(event, ts):
        body = {"webhook": {"id": 7, "webhookEvent": event, "eventTimestamp": ts},
                "event": {"udid": "d1", "jssID": 4}}
        async with api.session.post(hook, json=body, headers={"X-Webhook-Secret": secret}) as r:
            return r.status, await r.json()

    status, body = await post("MobileDeviceUnEnrolled", 1764676800000)
    assert status == 200 and body["change"]["action"] == "deactivate"
    status, body = await post("MobileDeviceCheckIn", 1764676700000)  # older, delivered after it
    assert status == 202 and body["accepted"] is False
    assert (await api.get("/api/v1/devices/d1"))["status"] == "deactivated"
    status, body = await post("MobileDeviceCheckIn", 1764676900000)  # newer: applied
    assert status == 200 and body["change"]["action"] == "reactivate"


async def test_two_webhook_posts_for_one_device_at_once(server, api, secret_env):
    """Jamf posts MobileDeviceEnrolled and MobileDeviceCheckIn together when a device enrols: both are answered,
    and the device is tracked once."""
    _, secret = await server.runtime.mdm.configure("jamf", "jamf", {
        "url": "https://jamf.example", "client_id": CLIENT_ID, "client_secret": secret_env, "id_field": "udid"},
        actor="cli:admin")
    await api.add_device("d1")
    await listed(server.runtime.mdm, "jamf", "d1")
    hook = f"{server.url}/hooks/jamf"
    for _ in range(3):
        at_ms = int(time.time() * 1000)  # one moment: Jamf gives both events its time
        results = await asyncio.gather(*(jamf_webhook(api.session, hook, event, "d1", secret=secret, at_ms=at_ms)
                                         for event in ("MobileDeviceEnrolled", "MobileDeviceCheckIn")))
        assert [status for status, _ in results] == [200, 200], results
    import sqlalchemy as sa

    from scep_server.binding.tables import mdm_devices

    async with server.runtime.engine.connect() as conn:
        tracked = (await conn.execute(sa.select(mdm_devices.c.device_id, mdm_devices.c.state))).all()
    assert [tuple(r) for r in tracked] == [("d1", "managed")]
