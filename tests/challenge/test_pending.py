"""Pending enrolments: PKCSReq -> PENDING -> approve | reject -> CertPoll, with certmonger's scep-submit as the
transport and reply verifier of the device's messages, and the admin CLI and REST API deciding."""
from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.profiles import ProfileSettings
from scep_server.scep import MessageType, PKIStatus, algorithms, client, cms
from tests.challenge.conftest import build, enrol, pki
from tests.factories import rsa_key
from tests.helpers import require_tool
from tests.server import run

SCEP_SUBMIT = "/usr/lib/certmonger/scep-submit"
SECRET = "approval-secret"


async def approval_profile(srv, name="manual"):
    rt = srv.runtime
    await rt.profiles.create(name, ca=next(iter(rt.cas)), challenge_kind="static", static_secret=SECRET,
                             now=rt.clock(), settings=ProfileSettings(require_approval=True))


def pem(label: str, der: bytes) -> bytes:
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()


class Device:
    """A device whose pkiMessages go over the wire through scep-submit."""

    def __init__(self, srv, workdir: Path, profile: str, cn: str):
        self.srv, self.dir, self.profile, self.cn = srv, workdir, profile, cn
        self.key = rsa_key()
        self.txid = client.transaction_id_for(self.key.public_key())
        ca = next(iter(srv.runtime.cas.values()))
        self.ca = ca
        workdir.mkdir()
        (workdir / "ra.pem").write_bytes(pem("CERTIFICATE", ca.ra_cert_der))
        (workdir / "ca.pem").write_bytes(pem("CERTIFICATE", ca.cert_der))

    async def submit(self, message: bytes, mode: str) -> tuple[int, str]:
        tool = require_tool(SCEP_SUBMIT)
        path = self.dir / f"msg-{mode}.pem"
        path.write_bytes(pem("PKCS7", message))
        rc, out, err = await run(tool, "-u", f"{self.srv.url}/scep/{self.profile}", "-r", str(self.dir / "ra.pem"),
                                 "-N", str(self.dir / "ca.pem"), mode, str(path))
        return rc, out + err

    async def pkcs_req(self) -> tuple[int, str]:
        return await self.submit(build(self.srv, self.key, challenge=SECRET, cn=self.cn), "-p")

    async def cert_poll(self) -> tuple[int, str]:
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, self.cn)])
        content = client.issuer_and_subject(self.ca.cert.subject, subject)
        return await self.submit(build(self.srv, self.key, challenge=None, message_type=MessageType.CERT_POLL,
                                       content=content, transaction_id=self.txid), "-g")

    def open_envelope(self, output: str) -> list[x509.Certificate]:
        """scep-submit prints the verified reply's pkcsPKIEnvelope; only the device key opens it."""
        m = re.search(r"-----BEGIN PKCS7-----(.*?)-----END PKCS7-----", output, re.S)
        assert m, output
        env = cms.parse_enveloped_data(base64.b64decode("".join(m.group(1).split())))
        cek = self.key.decrypt(env.recipients[0].encrypted_key, algorithms.rsa_padding(env.recipients[0].scheme))
        certs, _ = cms.parse_degenerate(algorithms.decrypt_content(env.cipher, cek, env.iv, env.ciphertext))
        return [x509.load_der_x509_certificate(c) for c in certs]


def cli(srv, *args: str) -> list[str]:
    env_db = {"SCEP_SERVER_DATABASE__URL": srv.settings.database_url(), "SCEP_SERVER_LOG__LEVEL": "warning"}
    return [sys.executable, "-m", "scep_server.cli", "--data-dir", str(srv.data_dir), *args], env_db


async def run_cli(srv, *args: str) -> tuple[int, str]:
    import asyncio
    import subprocess

    cmd, env = cli(srv, *args)
    proc = await asyncio.create_subprocess_exec(*cmd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


async def test_pending_approve_with_scep_submit_and_cli(server, tmp_path):
    await approval_profile(server)
    dev = Device(server, tmp_path / "dev", "manual", "printer-1")
    rc, out = await dev.pkcs_req()
    assert rc in (1, 5), out  # "the CA is still thinking"
    rc, out = await dev.cert_poll()
    assert rc in (1, 5), out

    rc, listing = await run_cli(server, "enrolment", "list", "--format", "json")
    assert rc == 0, listing
    rows = json.loads(listing)
    assert [(r["profile"], r["transaction_id"], r["subject"]) for r in rows] == [
        ("manual", dev.txid, "CN=printer-1")]
    rc, out = await run_cli(server, "enrolment", "approve", "manual", dev.txid)
    assert rc == 0 and "approved" in out, out
    rc, out = await run_cli(server, "enrolment", "approve", "manual", dev.txid)
    assert rc == 1 and "no pending enrolment" in out

    rc, out = await dev.cert_poll()
    assert rc == 0, out
    certs = dev.open_envelope(out)
    assert certs[0].subject.rfc4514_string() == "CN=printer-1"
    assert certs[0].public_key().public_numbers() == dev.key.public_key().public_numbers()


async def test_pending_reject_with_scep_submit_and_api(server, tmp_path):
    await approval_profile(server)
    token_id, token = await server.runtime.tokens.create(scope="admin", name="t", now=server.runtime.clock())
    _, signin = await server.runtime.tokens.create(scope="signin", name="s", now=server.runtime.clock())
    admin = {"Authorization": f"Bearer {token}"}
    dev = Device(server, tmp_path / "dev", "manual", "camera-1")
    rc, out = await dev.pkcs_req()
    assert rc in (1, 5), out
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{server.url}/api/v1/enrolments") as resp:
            assert resp.status == 401
        async with s.get(f"{server.url}/api/v1/enrolments", headers={"Authorization": f"Bearer {signin}"}) as resp:
            assert resp.status == 403
        async with s.get(f"{server.url}/api/v1/enrolments?state=pending", headers=admin) as resp:
            assert resp.status == 200
            rows = (await resp.json())["enrolments"]
        assert [r["transaction_id"] for r in rows] == [dev.txid] and rows[0]["subject"] == "CN=camera-1"
        async with s.get(f"{server.url}/api/v1/enrolments?state=bogus", headers=admin) as resp:
            assert resp.status == 400
        async with s.post(f"{server.url}/api/v1/enrolments/manual/reject", headers=admin, data=b"{") as resp:
            assert resp.status == 400
        async with s.post(f"{server.url}/api/v1/enrolments/manual/reject", headers=admin,
                          json={"transaction_id": "nope"}) as resp:
            assert resp.status == 404
        async with s.post(f"{server.url}/api/v1/enrolments/nope/reject", headers=admin,
                          json={"transaction_id": dev.txid}) as resp:
            assert resp.status == 404
        async with s.post(f"{server.url}/api/v1/enrolments/manual/reject", headers=admin,
                          json={"transaction_id": dev.txid, "reason": "unknown camera"}) as resp:
            assert resp.status == 200 and (await resp.json())["result"] == "rejected"
        async with s.get(f"{server.url}/api/v1/enrolments?state=rejected", headers=admin) as resp:
            rows = (await resp.json())["enrolments"]
        assert rows[0]["decided_by"] == f"token:{token_id}:t" and rows[0]["fail_text"] == "unknown camera"
    rc, out = await dev.cert_poll()
    assert rc == 2, out  # "the CA rejected the request"
    # what the device's CertPoll got back, read with the project's codec: FAILURE with the reason
    async with aiohttp.ClientSession() as s:
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "camera-1")])
        body = build(server, dev.key, challenge=None, message_type=MessageType.CERT_POLL, transaction_id=dev.txid,
                     content=client.issuer_and_subject(dev.ca.cert.subject, subject))
        rep = await pki(s, server, "manual", body, dev.key)
    assert rep.status is PKIStatus.FAILURE and rep.fail_text == "unknown camera"


async def test_api_approve(server, tmp_path):
    await approval_profile(server)
    _, token = await server.runtime.tokens.create(scope="admin", name="t", now=server.runtime.clock())
    key = rsa_key()
    async with aiohttp.ClientSession() as s:
        rep = await enrol(s, server, "manual", key, SECRET, cn="tv-1")
        assert rep.status is PKIStatus.PENDING
        async with s.post(f"{server.url}/api/v1/enrolments/manual/approve", headers={"Authorization": f"Bearer {token}"},
                          json={"transaction_id": rep.transaction_id}) as resp:
            assert resp.status == 200
            serial = (await resp.json())["serial"]
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "tv-1")])
        ca = next(iter(server.runtime.cas.values()))
        body = build(server, key, challenge=None, message_type=MessageType.CERT_POLL, transaction_id=rep.transaction_id,
                     content=client.issuer_and_subject(ca.cert.subject, subject))
        polled = await pki(s, server, "manual", body, key)
    assert polled.status is PKIStatus.SUCCESS
    assert f"{x509.load_der_x509_certificate(polled.certs[0]).serial_number:x}" == serial


def test_delegated_profiles_cannot_require_approval():
    from scep_server.profiles import ProfileError, ProfileStore

    store = ProfileStore(engine=None)  # the check happens before any database access
    with pytest.raises(ProfileError, match="Intune has no pending state"):
        import asyncio

        asyncio.run(store.create("x", ca="default", challenge_kind="delegated", now=None,
                                 settings=ProfileSettings(require_approval=True)))


async def test_approving_what_the_template_now_refuses_rejects_it_with_a_4xx(server):
    """The template tightened while an enrolment waited: approval is refused with the template's words (never a
    500), the enrolment is rejected, and the device's CertPoll learns it."""
    await approval_profile(server)
    rt = server.runtime
    _, token = await rt.tokens.create(scope="admin", name="t", now=rt.clock())
    key = rsa_key()
    async with aiohttp.ClientSession() as s:
        rep = await enrol(s, server, "manual", key, SECRET, cn="tv-2")
        assert rep.status is PKIStatus.PENDING
        current = await rt.profiles.get("manual")
        await rt.profiles.update("manual", now=rt.clock(), settings=current.settings.model_copy(update={
            "template": current.settings.template.model_copy(update={"subject_patterns": {"CN": "kiosk-[0-9]+"}})}))
        async with s.post(f"{server.url}/api/v1/enrolments/manual/approve", headers={"Authorization": f"Bearer {token}"},
                          json={"transaction_id": rep.transaction_id}) as resp:
            assert resp.status == 422, await resp.text()
            assert "template" in (await resp.json())["detail"]
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "tv-2")])
        ca = next(iter(rt.cas.values()))
        body = build(server, key, challenge=None, message_type=MessageType.CERT_POLL, transaction_id=rep.transaction_id,
                     content=client.issuer_and_subject(ca.cert.subject, subject))
        polled = await pki(s, server, "manual", body, key)
    assert polled.status is PKIStatus.FAILURE and "template" in polled.fail_text
    async with rt.engine.connect() as conn:
        import sqlalchemy as sa
        assert (await conn.execute(sa.text("SELECT count(*) FROM certificates"))).scalar() == 0


async def test_a_decided_enrolment_keeps_no_challenge_password(server):
    """A transaction's stored CSR keeps the challengePassword only while it waits: a static secret (or any
    challenge) is not left in the database, nor in its backups, once the enrolment is decided."""
    import sqlalchemy as sa

    from scep_server.enrolment.model import challenge_password
    from scep_server.store.tables import scep_transactions

    async def stored(txid: str) -> x509.CertificateSigningRequest:
        async with server.runtime.engine.connect() as conn:
            der = (await conn.execute(sa.select(scep_transactions.c.csr_der).where(
                scep_transactions.c.transaction_id == txid))).scalar_one()
        assert SECRET.encode() not in der or challenge_password(x509.load_der_x509_csr(der)) == SECRET
        return x509.load_der_x509_csr(der)

    await approval_profile(server)
    await server.runtime.profiles.create("open", ca=next(iter(server.runtime.cas)), challenge_kind="static",
                                         static_secret=SECRET, now=server.runtime.clock())
    async with aiohttp.ClientSession() as s:
        issued_key, approved_key, rejected_key = rsa_key(), rsa_key(), rsa_key()
        rep = await pki(s, server, "open", build(server, issued_key, challenge=SECRET, cn="at-once"), issued_key)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        for key, cn in ((approved_key, "approved"), (rejected_key, "rejected")):
            rep = await pki(s, server, "manual", build(server, key, challenge=SECRET, cn=cn), key)
            assert rep.status is PKIStatus.PENDING
        waiting = client.transaction_id_for(approved_key.public_key())
        assert challenge_password(await stored(waiting)) == SECRET  # an approval checks the CSR's signature again
        await server.runtime.scep.decide("manual", waiting, approve=True, actor="admin")
        await server.runtime.scep.decide("manual", client.transaction_id_for(rejected_key.public_key()),
                                         approve=False, actor="admin")
        for key, cn in ((issued_key, "at-once"), (approved_key, "approved"), (rejected_key, "rejected")):
            csr = await stored(client.transaction_id_for(key.public_key()))
            assert challenge_password(csr) != SECRET and SECRET.encode() not in csr.public_bytes(
                serialization.Encoding.DER)
            assert csr.subject.rfc4514_string() == f"CN={cn}"  # what is shown of it stays
            assert csr.public_key().public_numbers() == key.public_key().public_numbers()
        # a retry of a decided transaction is answered as before
        rep = await pki(s, server, "open", build(server, issued_key, challenge=SECRET, cn="at-once"), issued_key)
        assert rep.status is PKIStatus.SUCCESS



async def test_the_enrolments_a_deleted_profile_rejects_keep_no_challenge_password(server):
    import sqlalchemy as sa

    from scep_server.store.tables import scep_transactions

    await approval_profile(server)
    key = rsa_key()
    async with aiohttp.ClientSession() as s:
        rep = await pki(s, server, "manual", build(server, key, challenge=SECRET, cn="waits"), key)
        assert rep.status is PKIStatus.PENDING
    await server.runtime.profiles.delete("manual", now=server.runtime.clock(), actor="admin")
    async with server.runtime.engine.connect() as conn:
        state, der = (await conn.execute(sa.select(scep_transactions.c.state, scep_transactions.c.csr_der).where(
            scep_transactions.c.transaction_id == client.transaction_id_for(key.public_key())))).one()
    assert state == "rejected" and SECRET.encode() not in der
    assert x509.load_der_x509_csr(der).subject.rfc4514_string() == "CN=waits"


async def test_an_unknown_transaction_id_of_any_length_is_a_short_404(server):
    """The transaction_id an administrator's call names is echoed bounded: a 100 KiB one is not sent back whole."""
    await approval_profile(server)
    _, token = await server.runtime.tokens.create(scope="admin", name="t", now=server.runtime.clock())
    long_id = "x" * 100_000
    async with aiohttp.ClientSession() as s:
        for action in ("approve", "reject"):
            async with s.post(f"{server.url}/api/v1/enrolments/manual/{action}",
                              headers={"Authorization": f"Bearer {token}"}, json={"transaction_id": long_id}) as resp:
                body = await resp.read()
                assert resp.status == 404 and len(body) < 1024, (action, resp.status, body[:200])
                assert "(100000 characters)" in (await resp.json())["detail"]
