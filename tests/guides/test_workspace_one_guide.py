"""docs/workspace-one.md followed step by step against a real `scep-server serve`: its commands run as written
(the placeholders filled in), then the test plays Workspace ONE UEM and the device with the values of the
guide's Certificate Authority and certificate template tables: the static secret and the NDES page (UTF-16LE)
each enrol a device with micromdm's scepclient, the certificates carry the template's subject and SAN, and a
challenge is good once."""
from __future__ import annotations

import re

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scep_server.scep import FailInfo, PKIStatus
from tests.factories import rsa_key
from tests.guides.guide import (Cli, Guide, basic, enrol_with_san, fast_env, fill, ndes_challenge, scepclient_enrol,
                                single_des, static_profile, trusted_ca)
from tests.server import serve_processes

pytestmark = pytest.mark.interop

GUIDE = Guide("workspace-one.md")
EXAMPLE_BASE = "https://scep.example.com"
STATIC, DYNAMIC, TEMPLATE = "Static challenge", "Dynamic challenge (NDES-compatible page)", "The certificate template"
DEVICE_UIDS = ("4C4C4544-0031-5A10-8047-B3C04F4D4E32", "a3f9e0c2b1d74e5f8a6b7c8d9e0f1a2b", "R58N12ABCDEF0123")


def _lookup(value: str, uid: str) -> str:
    return value.replace("{DeviceUid}", uid)


def _check_certificate(cert: x509.Certificate, cn: str, ca: x509.Certificate) -> None:
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # cn_only: O, OU, C dropped
    cert.verify_directly_issued_by(ca)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value  # "Signing" and "Encryption"
    assert ku.digital_signature and ku.key_encipherment
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]


async def _enrols(scepclient, scep_url: str, challenge: str, subject: str, uid: str, work, ca) -> None:
    """scepclient enrols the device `uid` with the template's subject; its certificate is as the guide says."""
    rc, log, cert = await scepclient_enrol(scepclient, scep_url, challenge, _lookup(subject, uid), work)
    assert rc == 0, log
    _check_certificate(cert, uid, ca)


async def test_the_workspace_one_guide(tmp_path, db_url, scepclient):
    data = tmp_path / "data"
    env = fast_env()
    template = GUIDE.table(TEMPLATE)
    assert template["Private Key Length"] == "2048"
    assert GUIDE.cells(TEMPLATE)["Private Key Type"][1] == ["Signing", "Encryption"]
    subject = re.fullmatch(r"CN=(.+)", template["Subject Name"]).group(1)
    assert template["SAN Type"] == "Uniform Resource Identifier"
    with serve_processes(data, db_url, env=env) as (url,):
        cli = Cli(data, db_url, env)
        values = {EXAMPLE_BASE: url}
        async with aiohttp.ClientSession() as session:
            _, ca = await trusted_ca(session, GUIDE, values)

            # --- Generic SCEP, static challenge
            secret = await static_profile(cli, GUIDE, "workspace-one-static", values)
            authority = GUIDE.table(STATIC)
            assert authority["Authority Type"] == "Generic SCEP" and authority["Challenge Type"] == "Static"
            await _enrols(scepclient, fill([authority["SCEP URL"]], values)[0], secret, subject, DEVICE_UIDS[0],
                          tmp_path / "static", ca)

            # --- NDES-compatible dynamic challenge
            await cli(fill(GUIDE.command("scep-server", "profile", "add", "workspace-one"), values))
            password = "guide-password-2"
            configure = GUIDE.command("scep-server", "challenge", "configure", "workspace-one")
            await cli(fill(configure, {**values, "<challenge password>": password}))
            await cli(single_des("workspace-one"))
            authority = GUIDE.table(DYNAMIC)
            assert authority["Challenge Type"] == "Dynamic" and authority["Version"] == "NDES 2008/2012"
            encoding = configure[configure.index("--page-encoding") + 1]
            challenge_url, user = fill([authority["SCEP Challenge URL"]], values)[0], authority["Challenge Username"]
            async with session.get(challenge_url, headers=basic(user, "wrong")) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic ")
            challenge = await ndes_challenge(session, challenge_url, user, password, encoding)
            assert len(challenge) == int(authority["SCEP Challenge Length"])
            scep_url = fill([authority["SCEP URL"]], values)[0]
            uid = DEVICE_UIDS[1]
            await _enrols(scepclient, scep_url, challenge, subject, uid, tmp_path / "dyn", ca)
            shown, _ = await cli(["scep-server", "device", "show", uid])  # registered by its enrolment
            assert '"status": "active"' in shown

            # a challenge is good once
            rc, log, cert = await scepclient_enrol(scepclient, scep_url, challenge, _lookup(subject, uid),
                                                   tmp_path / "again")
            assert rc != 0 and cert is None and "badRequest" in log

            # the template's SAN, in a request scepclient cannot make
            uid = DEVICE_UIDS[2]
            rep = await enrol_with_san(session, scep_url, rsa_key(), _lookup(subject, uid),
                                       _lookup(template["SAN Value"], uid),
                                       await ndes_challenge(session, challenge_url, user, password, encoding))
            assert rep.status is PKIStatus.SUCCESS, rep.fail_text
            issued = x509.load_der_x509_certificate(rep.certs[0])
            _check_certificate(issued, uid, ca)
            assert issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:device:{uid}")])
            # a subject outside the template, and the static profile's secret, are refused here
            rep = await enrol_with_san(session, scep_url, rsa_key(), "not a device uid!", f"urn:device:{uid}",
                                       await ndes_challenge(session, challenge_url, user, password, encoding))
            assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
            rep = await enrol_with_san(session, scep_url, rsa_key(), uid, f"urn:device:{uid}", secret)
            assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
    assert GUIDE.not_taken() == []  # every command of the guide was run
