"""docs/jamf.md followed step by step against a real `scep-server serve`: its commands run as written (the
placeholders filled in), then the test plays Jamf Pro and the device with the values of the guide's tables. The
static profile's secret and the dynamic profile's NDES page each enrol a device with micromdm's scepclient; the
certificates carry what the guide says; a challenge is good once; the webhook Jamf Pro posts puts the device's
certificate on hold and releases it, and the periodic sync with the API client does the same from the
inventory."""
from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scep_server.scep import FailInfo, PKIStatus
from tests.factories import rsa_key
from tests.guides.guide import (Cli, Guide, basic, enrol_with_san, fast_env, fill, ndes_challenge, scepclient_enrol,
                                single_des, static_profile, trusted_ca)
from tests.mdm.peers import CLIENT_ID, CLIENT_SECRET, JamfPeer
from tests.server import serve_processes

pytestmark = pytest.mark.interop

GUIDE = Guide("jamf.md")
EXAMPLE_BASE = "https://scep.example.com"
STATIC, DYNAMIC, WEBHOOK = "Static challenge", "Dynamic challenge (NDES-compatible page)", \
    "The webhook and the periodic sync"
UDID_STATIC = "00008030-001A2B3C4D5E802E"  # an iPhone's
UDID_DYNAMIC = "564DA1B2-C3D4-E5F6-0718-293A4B5C6D7E"  # a Mac's
UDID_SAN = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"  # an older device's 40 digits


def _subject(value: str, udid: str) -> str:
    """The CN a device sends for the payload's Subject (`CN=$UDID`)."""
    m = re.fullmatch(r"CN=(.+)", value)
    assert m, value
    return m.group(1).replace("$UDID", udid)


def _check_certificate(cert: x509.Certificate, cn: str, ca: x509.Certificate) -> None:
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # cn_only: O, OU, C dropped
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.data_encipherment
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]


async def _crl_reason(session, url: str, serial: int):
    async with session.get(url) as resp:
        assert resp.status == 200
        crl = x509.load_der_x509_crl(await resp.read())
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    return None if entry is None else entry.extensions.get_extension_for_class(x509.CRLReason).value.reason


async def _await_crl(session, url: str, serial: int, reason, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (got := await _crl_reason(session, url, serial)) is not reason:
        assert time.monotonic() < deadline, f"the CRL shows {got}, not {reason}"
        await asyncio.sleep(0.2)


async def test_the_jamf_guide(tmp_path, db_url, scepclient, aiohttp_server):
    data = tmp_path / "data"
    env = fast_env()
    with serve_processes(data, db_url, env=env) as (url,):
        cli = Cli(data, db_url, env)
        values = {EXAMPLE_BASE: url}
        async with aiohttp.ClientSession() as session:
            # the trusted CA certificate, from where the guide downloads it
            ca_url, ca = await trusted_ca(session, GUIDE, values)
            assert ca_url == f"{url}/ca/default.crt"

            # --- static challenge
            secret = await static_profile(cli, GUIDE, "jamf-static", values)
            payload = GUIDE.table(STATIC)
            assert payload["Challenge Type"] == "Static" and payload["Key Size"] == "2048"
            scep_url = fill([payload["URL"]], values)[0]
            cn = _subject(payload["Subject"], UDID_STATIC)
            rc, log, static_cert = await scepclient_enrol(scepclient, scep_url, secret, cn, tmp_path / "static")
            assert rc == 0, log
            _check_certificate(static_cert, UDID_STATIC, ca)
            rc, log, cert = await scepclient_enrol(scepclient, scep_url, "not-the-secret", cn, tmp_path / "wrong")
            assert rc != 0 and cert is None

            # --- dynamic challenge: the profile, its NDES page's credentials
            await cli(fill(GUIDE.command("scep-server", "profile", "add", "jamf"), values))
            password = "guide-password-1"
            await cli(fill(GUIDE.command("scep-server", "challenge", "configure", "jamf"),
                           {**values, "<challenge password>": password}))
            await cli(single_des("jamf"))
            dyn = {**payload, **GUIDE.table(DYNAMIC)}
            assert dyn["Challenge Type"] == "Dynamic-Microsoft CA"
            admin_url, user = fill([dyn["URL To SCEP Admin"]], values)[0], dyn["Username"]
            async with session.get(admin_url, headers=basic(user, "wrong")) as resp:
                assert resp.status == 401
            challenge = await ndes_challenge(session, admin_url, user, password, "utf-8")
            assert re.fullmatch(r"[0-9A-F]{40}", challenge)
            scep_url = fill([dyn["URL"]], values)[0]
            cn = _subject(dyn["Subject"], UDID_DYNAMIC)
            rc, log, device_cert = await scepclient_enrol(scepclient, scep_url, challenge, cn, tmp_path / "dyn")
            assert rc == 0, log
            _check_certificate(device_cert, UDID_DYNAMIC, ca)
            # the device is registered by its enrolment, its certificate enrolled for it
            shown, _ = await cli(["scep-server", "device", "show", UDID_DYNAMIC])
            assert '"status": "active"' in shown

            # a challenge is good once
            rc, log, cert = await scepclient_enrol(scepclient, scep_url, challenge, cn, tmp_path / "again")
            assert rc != 0 and cert is None and "badRequest" in log

            # the payload's Subject Alternative Name, in a request scepclient cannot make
            assert dyn["Subject Alternative Name Type"] == "Uniform Resource Identifier"
            san = dyn["Subject Alternative Name Value"].replace("$UDID", UDID_SAN)
            rep = await enrol_with_san(session, scep_url, rsa_key(), _subject(dyn["Subject"], UDID_SAN), san,
                                       await ndes_challenge(session, admin_url, user, password, "utf-8"))
            assert rep.status is PKIStatus.SUCCESS, rep.fail_text
            issued = x509.load_der_x509_certificate(rep.certs[0])
            assert issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:udid:{UDID_SAN}")])
            # a SAN the template does not take
            rep = await enrol_with_san(session, scep_url, rsa_key(), UDID_SAN, "https://evil.example/",
                                       await ndes_challenge(session, admin_url, user, password, "utf-8"))
            assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST

            # Jamf Pro's SCEPChallenge webhook event on the same URL gets a challenge as plain text
            async with session.post(admin_url, headers=basic(user, password), json={
                    "webhook": {"webhookEvent": "SCEPChallenge", "id": 1, "name": ""},
                    "event": {"scepServerUrl": scep_url, "payloadIdentifier": "com.example.scep"}}) as resp:
                assert resp.status == 200 and resp.content_type == "text/plain"
                assert re.fullmatch(r"[0-9A-F]{40}", await resp.text())

            # --- the webhook and the periodic sync
            jamf = JamfPeer()
            peer = await aiohttp_server(jamf.app(), host="127.0.0.1")
            secret_file = tmp_path / "jamf-secret"
            secret_file.write_text(CLIENT_SECRET + "\n")
            configure = GUIDE.command("scep-server", "mdm", "configure", "jamf")
            _, err = await cli(fill(configure, {**values, "https://example.jamfcloud.com":
                                                f"http://127.0.0.1:{peer.port}", "<client-id>": CLIENT_ID,
                                                "/etc/scep-server/jamf-secret": str(secret_file)}))
            hook_secret = re.search(r"webhook secret \(shown once\): (\S+)", err).group(1)
            hook = GUIDE.cells(WEBHOOK)
            hook_url = fill([hook["Webhook URL"][1][0]], values)[0]
            events = hook["Webhook Event"][1]
            assert {"MobileDeviceUnEnrolled", "MobileDeviceEnrolled"} <= set(events)
            assert hook["Content Type"][1] == ["JSON"] and hook["Authentication Type"][1] == ["Basic Authentication"]
            crl_url = f"{url}/crl/default.crl"
            serial = device_cert.serial_number

            async def post(event: str, password: str, udid: str = UDID_DYNAMIC) -> tuple[int, dict]:
                """One webhook as Jamf Pro posts it: Basic authentication, a JSON body."""
                body = {"webhook": {"id": 7, "name": "scep-server " + event, "webhookEvent": event,
                                    "eventTimestamp": int(time.time() * 1000)},
                        "event": {"udid": udid, "serialNumber": "C02XYZ", "jssID": 42, "deviceName": "Mac"}}
                async with session.post(hook_url, json=body, headers=basic(hook["Username"][1][0], password)) as r:
                    return r.status, await r.json(content_type=None)

            assert (await post("MobileDeviceUnEnrolled", "not-the-secret"))[0] == 401
            # the webhook follows the devices the source's inventory listed: a first sync reads them
            jamf.computer(UDID_DYNAMIC, managed=True)
            _, err = await cli(["scep-server", "mdm", "sync", "jamf"])
            assert "1 records, 0 changes" in err, err
            # the static profile's device is known to nobody here: the webhook leaves its certificate alone
            status, body = await post("MobileDeviceUnEnrolled", hook_secret, UDID_STATIC)
            assert status == 202 and body["accepted"] is False, body
            status, body = await post("MobileDeviceUnEnrolled", hook_secret)
            assert status == 200 and body["change"]["action"] == "deactivate", body
            await _await_crl(session, crl_url, serial, x509.ReasonFlags.certificate_hold)
            status, body = await post("MobileDeviceEnrolled", hook_secret)
            assert status == 200 and body["change"]["action"] == "reactivate", body
            await _await_crl(session, crl_url, serial, None)

            # the periodic sync reads the inventory with the API client: unmanaged there, on hold here
            jamf.computer(UDID_DYNAMIC, managed=False)
            out, _ = await cli(["scep-server", "mdm", "sync", "jamf"])
            assert f"deactivate\t{UDID_DYNAMIC}" in out, out
            await _await_crl(session, crl_url, serial, x509.ReasonFlags.certificate_hold)
            jamf.computer(UDID_DYNAMIC, managed=True)
            out, _ = await cli(["scep-server", "mdm", "sync", "jamf"])
            assert f"reactivate\t{UDID_DYNAMIC}" in out, out
            await _await_crl(session, crl_url, serial, None)
            assert await _crl_reason(session, crl_url, static_cert.serial_number) is None
    assert GUIDE.not_taken() == []  # every command of the guide was run
