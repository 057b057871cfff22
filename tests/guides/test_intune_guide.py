"""docs/intune.md followed step by step: the guide's own `scep-server` commands configure a server, a stand-in
for Entra ID, Microsoft Graph and Intune on 127.0.0.1 plays Intune, micromdm's scepclient enrols devices with
Intune-style challenges, and the Graph sync takes a device disabled in Entra ID down."""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess

import aiohttp
import pytest
import structlog
from aiohttp import web
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.challenge.peers import CLIENT_ID, CLIENT_SECRET as INTUNE_SECRET, TENANT, FakeIntune
from tests.guides.guide import blocks, commands, split
from tests.helpers import require_tool
from tests.mdm.peers import CLIENT_SECRET as GRAPH_SECRET, GraphPeer
from tests.server import run, start_app

pytestmark = pytest.mark.interop

DOC = "intune.md"
DEVICE_1 = "5c4f8a2e-1b3d-4e6f-9a0b-7c8d9e0f1a2b"
DEVICE_2 = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


class PlayedIntune(FakeIntune):
    """Intune that allows only the challenges it handed out (read from the CSR it is asked about)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.handed_out: set[str] = set()

    async def action(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["action"] == "validateRequest":
            body = await request.json()
            csr = x509.load_der_x509_csr(base64.b64decode(body["request"]["certificateRequest"]))
            challenge = csr.attributes.get_attribute_for_oid(x509.oid.AttributeOID.CHALLENGE_PASSWORD).value
            challenge = challenge.decode() if isinstance(challenge, bytes) else challenge
            self.codes["validateRequest"] = "Success" if challenge in self.handed_out else "ChallengeExpired"
        return await super().action(request)

    def challenge(self) -> str:
        """An opaque challenge as Intune hands one to a device (an encrypted blob, base64)."""
        value = base64.b64encode(secrets.token_bytes(150)).decode()
        self.handed_out.add(value)
        return value


def cli(server, *args: str, code: int = 0) -> str:
    from scep_server.cli import main

    with structlog.testing.capture_logs():  # the in-process server's lines stay out of the command's output
        result = CliRunner().invoke(main, ["--data-dir", str(server.data_dir), *args],
                                    env={"SCEP_SERVER_LOG__LEVEL": "warning"})
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.stdout


async def scepclient_enrol(scepclient: str, url: str, workdir, cn: str, challenge: str):
    workdir.mkdir()
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(workdir / "k.pem"), "2048"], check=True,
                   capture_output=True)
    return await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-challenge", challenge, "-cn", cn,
                     cwd=workdir)


def test_the_guide_shows_each_step():
    lines = commands(DOC)
    assert [split(line)[:2] for line in lines] == [
        ["profile", "add"], ["challenge", "configure"], ["profile", "update"], ["mdm", "configure"],
        ["mdm", "sync"], ["mdm", "sync"]]
    assert any("/ca/" in b and "curl" in b for b in blocks(DOC, "sh"))


async def test_intune_guide_end_to_end(aiohttp_server, tmp_path):
    scepclient = require_tool("scepclient")
    server = await start_app(aiohttp_server, tmp_path)
    intune_secret, graph_secret = tmp_path / "intune-secret", tmp_path / "graph-secret"
    intune_secret.write_text(INTUNE_SECRET + "\n")
    graph_secret.write_text(GRAPH_SECRET + "\n")
    values = {"<tenant id>": TENANT, "<application id>": CLIENT_ID,
              "/etc/scep-server/intune-secret": str(intune_secret),
              "/etc/scep-server/graph-secret": str(graph_secret)}
    lines = iter(commands(DOC))
    graph = GraphPeer(tenant=TENANT)
    graph_server = await aiohttp_server(graph.app(), host="127.0.0.1")
    graph_url = f"http://127.0.0.1:{graph_server.port}"

    async with PlayedIntune() as intune, aiohttp.ClientSession() as session:
        # step 2: the profile, its delegated challenge and its template, with the guide's commands (the
        # stand-in's URLs in place of Microsoft's)
        out = await asyncio.to_thread(cli, server, *split(next(lines), values))
        assert "/scep/intune" in out
        await asyncio.to_thread(cli, server, *split(next(lines), values), "--intune-authority-url", intune.url,
                                "--intune-graph-url", intune.url)
        shown = json.loads(await asyncio.to_thread(cli, server, *split(next(lines), values)))
        assert shown["settings"]["challenge"]["provider"] == "intune"
        assert shown["settings"]["challenge"]["intune"]["client_secret"]["file"] == str(intune_secret)
        # not a guide step: micromdm's scepclient encrypts with single DES, which new profiles refuse
        await asyncio.to_thread(cli, server, "profile", "update", "intune", "--settings-json",
                                '{"allow_single_des": true}')

        # step 3: the CA certificate for the trusted certificate profile, at the URL the guide shows
        curl = next(b for b in blocks(DOC, "sh") if "curl" in b).split()
        url = next(a for a in curl if "/ca/" in a).replace("https://scep.example.com", server.url)
        async with session.get(url) as resp:
            assert resp.status == 200 and resp.content_type == "application/pkix-cert"
            ca = x509.load_der_x509_certificate(await resp.read())
        assert ca == server.runtime.cas["default"].cert

        # step 4: a device enrols with the challenge Intune handed it; Intune validates, then learns the result
        rc, out, err = await scepclient_enrol(scepclient, f"{server.url}/scep/intune", tmp_path / "dev1", DEVICE_1,
                                              intune.challenge())
        assert rc == 0, out + err
        cert = x509.load_pem_x509_certificate((tmp_path / "dev1" / "client.pem").read_bytes())
        assert cert.issuer == ca.subject
        assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE_1)])
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and usage.key_encipherment
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.CLIENT_AUTH]
        assert intune.actions() == ["validateRequest", "successNotification"]
        note = intune.calls[1][1]["notification"]
        assert note["transactionId"] == intune.calls[0][1]["request"]["transactionId"]
        assert note["certificateSerialNumber"] == f"{cert.serial_number:x}"
        assert note["callerInfo"] == "scep-server" and note["certificateAuthority"] == "default"

        # a challenge Intune never handed out: Intune refuses, the device gets no certificate
        rc, out, err = await scepclient_enrol(scepclient, f"{server.url}/scep/intune", tmp_path / "dev2", DEVICE_2,
                                              base64.b64encode(secrets.token_bytes(150)).decode())
        assert rc != 0 and not (tmp_path / "dev2" / "client.pem").exists()
        assert intune.actions()[2:] == ["validateRequest"]  # no notification for a request Intune rejected
        listed = await asyncio.to_thread(cli, server, "cert", "list", "--profile", "intune", "--format", "json")
        assert [c["serial"] for c in json.loads(listed)] == [f"{cert.serial_number:x}"]

        # step 5: the MDM source reads Intune and Entra ID; a device disabled in Entra ID is taken down
        device = json.loads(await asyncio.to_thread(cli, server, "device", "show", DEVICE_1))
        assert device["status"] == "active"  # registered by its enrolment
        graph.device(DEVICE_1, "aad-" + DEVICE_1)
        await asyncio.to_thread(cli, server, *split(next(lines), values), "--authority-url", graph_url,
                                "--graph-url", graph_url)
        dry = await asyncio.to_thread(cli, server, *split(next(lines), values))
        assert dry.strip() == ""  # managed and enabled: nothing to change
        graph.set_enabled("aad-" + DEVICE_1, False)
        out = await asyncio.to_thread(cli, server, *split(next(lines), values))
        assert out.split()[:2] == ["deactivate", DEVICE_1], out
        device = json.loads(await asyncio.to_thread(cli, server, "device", "show", DEVICE_1))
        assert device["status"] == "deactivated"
        shown = json.loads(await asyncio.to_thread(cli, server, "cert", "show", f"{cert.serial_number:x}"))
        assert shown["status"] == "hold"
