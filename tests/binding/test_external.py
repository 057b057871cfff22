"""Customers' own CAs: a CA made with OpenSSL, registered with `scep-server ca add-external`, its CRL served
by a local aiohttp server and checked with crl.check.CrlChecker (RSA and ECDSA device keys)."""
from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.server import free_port, run

pytestmark = pytest.mark.interop

UTC = timezone.utc


class CrlServer:
    """Serves whatever CRL bytes a test sets, per path; a missing path answers 404."""

    def __init__(self):
        self.port = free_port()
        self.crls: dict[str, bytes] = {}
        self.hits = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = self.crls.get(request.match_info["name"])
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="application/pkix-crl")


@pytest.fixture
async def crl_server(aiohttp_server):
    srv = CrlServer()
    app = web.Application()
    app.router.add_get("/{name}", srv.handle)
    await aiohttp_server(app, host="127.0.0.1", port=srv.port)
    return srv


class OpensslCa:
    """A customer CA made with the openssl command line."""

    def __init__(self, openssl: str, directory: Path, name: str, cdp: str):
        self.openssl, self.dir, self.name, self.cdp = openssl, directory, name, cdp
        directory.mkdir(parents=True)
        self.number = 0

    async def create(self) -> None:
        rc, out, err = await run(
            self.openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.dir / "ca.key"),
            "-out", str(self.dir / "ca.pem"), "-days", "30", "-subj", f"/O=Customer/CN={self.name} Device CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash", "-addext", f"crlDistributionPoints=URI:{self.cdp}")
        assert rc == 0, out + err
        self.cert = x509.load_pem_x509_certificate((self.dir / "ca.pem").read_bytes())
        self.key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), None)

    async def leaf(self, cn: str, serial: int, *, ec: bool = False, cdp: bool = True):
        key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if ec else ["-newkey", "rsa:2048"]
        d = self.dir
        rc, out, err = await run(self.openssl, "req", "-new", *key_args, "-nodes", "-keyout", str(d / f"{cn}.key"),
                                 "-out", str(d / f"{cn}.csr"), "-subj", f"/CN={cn}")
        assert rc == 0, out + err
        ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature", "authorityKeyIdentifier=keyid"]
        if cdp:
            ext.append(f"crlDistributionPoints=URI:{self.cdp}")
        (d / f"{cn}.ext").write_text("\n".join(ext) + "\n")
        rc, out, err = await run(self.openssl, "x509", "-req", "-in", str(d / f"{cn}.csr"), "-CA", str(d / "ca.pem"),
                                 "-CAkey", str(d / "ca.key"), "-set_serial", str(serial), "-days", "10",
                                 "-extfile", str(d / f"{cn}.ext"), "-out", str(d / f"{cn}.pem"))
        assert rc == 0, out + err
        key = serialization.load_pem_private_key((d / f"{cn}.key").read_bytes(), None)
        return (d / f"{cn}.pem").read_bytes(), key

    def crl(self, revoked: dict[int, x509.ReasonFlags] | None = None) -> bytes:
        self.number += 1
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5) + timedelta(seconds=self.number)
        entries = [x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now)
                   .add_extension(x509.CRLReason(r), critical=False).build()
                   for s, r in (revoked or {}).items()]
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject).last_update(now)
             .next_update(now + timedelta(days=1))
             .add_extension(x509.CRLNumber(self.number), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        for e in entries:
            b = b.add_revoked_certificate(e)
        return b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


async def add_external(server, name: str, cert_path: Path, policy: str) -> tuple[int, str]:
    rc, out, err = await run(sys.executable, "-m", "scep_server.cli", "--data-dir", str(server.data_dir),
                             "ca", "add-external", name, "--cert", str(cert_path), "--policy", policy)
    if rc == 0:
        # the server re-reads the registrations on an unknown issuer at most once a second
        # (ExternalCas.maybe_reload): a CA added by another process is seen once that second has passed
        await asyncio.sleep(1.0)
    return rc, out + err


async def test_customer_ca_judged_by_its_crl(server, api, openssl, crl_server, tmp_path, clock):
    acme = OpensslCa(openssl, tmp_path / "acme", "Acme", crl_server.url("acme.crl"))
    await acme.create()
    rc, out = await add_external(server, "acme", acme.dir / "ca.pem", "fail-closed")
    assert rc == 0 and "external CA 'acme' added" in out, out
    rc, out = await add_external(server, "acme", acme.dir / "ca.pem", "fail-closed")
    assert rc == 1 and "exists" in out
    rsa_pem, rsa_key = await acme.leaf("laptop-rsa", 1001)
    ec_pem, ec_key = await acme.leaf("laptop-ec", 1002, ec=True)
    bare_pem, bare_key = await acme.leaf("laptop-bare", 1003, cdp=False)
    for d in ("ext-rsa", "ext-ec", "ext-bare"):
        await api.add_device(d)
    clock.now = datetime.now(UTC) + timedelta(seconds=5)  # openssl issued on the real clock

    # no CRL published yet: fail-closed
    res = await api.attest("ext-rsa", rsa_pem, rsa_key)
    assert (res["managed"], res["reason"]) == (False, "crl_unavailable"), res
    crl_server.crls["acme.crl"] = acme.crl()
    checker = server.runtime.binding.external.checker
    await checker.refresh("acme")
    res = await api.attest("ext-rsa", rsa_pem, rsa_key)
    assert (res["managed"], res["reason"]) == (True, "managed"), res
    assert res["certificate"]["external"] is True and res["crl"]["status"] == "good"
    res = await api.attest("ext-ec", ec_pem, ec_key, algorithm="ecdsa-sha256")
    assert res["managed"] is True, res
    res = await api.attest("ext-bare", bare_pem, bare_key)
    assert res["reason"] == "certificate_no_cdp", res
    # our inventory knows nothing of these certificates; bound all the same
    shown = await api.get("/api/v1/devices/ext-rsa")
    assert [(c["serial"], c["ca"], c["external"]) for c in shown["certificates"]] == [(format(1001, "x"), "acme", True)]
    # the same certificate from another device
    await api.add_device("ext-clone")
    assert (await api.attest("ext-clone", rsa_pem, rsa_key))["reason"] == "bound_to_other_device"

    # on hold on the customer's CRL, then released
    crl_server.crls["acme.crl"] = acme.crl({1001: x509.ReasonFlags.certificate_hold})
    await checker.refresh("acme")
    assert (await api.attest("ext-rsa", rsa_pem, rsa_key))["reason"] == "certificate_on_hold"
    crl_server.crls["acme.crl"] = acme.crl()
    await checker.refresh("acme")
    assert (await api.attest("ext-rsa", rsa_pem, rsa_key))["managed"] is True
    # revoked: refused, and never accepted again even if a later CRL no longer lists it
    crl_server.crls["acme.crl"] = acme.crl({1001: x509.ReasonFlags.key_compromise})
    await checker.refresh("acme")
    assert (await api.attest("ext-rsa", rsa_pem, rsa_key))["reason"] == "certificate_revoked"
    crl_server.crls["acme.crl"] = acme.crl()
    await checker.refresh("acme")
    assert (await api.attest("ext-rsa", rsa_pem, rsa_key))["reason"] == "certificate_retired"
    # deleting the device retires its external certificate too
    await api.action("ext-ec", "delete")
    await api.add_device("ext-ec2")
    assert (await api.attest("ext-ec2", ec_pem, ec_key, algorithm="ecdsa-sha256"))["reason"] == \
        "certificate_retired"


@pytest.mark.parametrize("policy,managed,reason", [("fail-closed", False, "crl_unavailable"),
                                                   ("fail-open", True, "managed")])
async def test_crl_unavailable_policy(server, api, openssl, crl_server, tmp_path, clock, policy, managed, reason):
    ca = OpensslCa(openssl, tmp_path / "ca", "Nowhere", crl_server.url("missing.crl"))
    await ca.create()
    rc, out = await add_external(server, "nowhere", ca.dir / "ca.pem", policy)
    assert rc == 0, out
    pem, key = await ca.leaf("dev", 7)
    await api.add_device("dev-1")
    clock.now = datetime.now(UTC) + timedelta(seconds=5)
    res = await api.attest("dev-1", pem, key)
    assert (res["managed"], res["reason"]) == (managed, reason), res
    assert crl_server.hits >= 1  # the CRL was looked for (404)
    assert res["crl"]["status"] == "unknown"


async def test_add_external_refuses_a_ca_without_cdp(server, openssl, tmp_path):
    d = tmp_path / "nocdp"
    d.mkdir()
    rc, out, err = await run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "k"),
                             "-out", str(d / "ca.pem"), "-days", "3", "-subj", "/CN=No CDP CA",
                             "-addext", "basicConstraints=critical,CA:TRUE",
                             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    assert rc == 0, out + err
    rc, out = await add_external(server, "nocdp", d / "ca.pem", "fail-closed")
    assert rc == 1 and "CRL Distribution Points" in out, out
