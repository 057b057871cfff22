"""OpenSSL as the relying party and pkilint as the linter, on CRLs this package builds and publishes."""
from __future__ import annotations

import random
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from crl.build import Issuer, Scope, build_crl
from crl.config import CrlSettings
from crl.parse import pem_from_der
from crl.publish import Publisher
from crl.signing import CrlSigner
from tests.crl.pki import NOW, issue, make_ca, openssl, pem

pytestmark = pytest.mark.interop
UTC = timezone.utc
CDP = "http://127.0.0.1:8080/crl/default.crl"


def verify(tmp: Path, ca_pem: bytes, crl_der: bytes, cert, *extra: str) -> tuple[bool, str]:
    """`openssl verify -crl_check`: (OK?, output)."""
    (tmp / "ca.pem").write_bytes(ca_pem)
    (tmp / "crl.pem").write_bytes(pem_from_der(crl_der))
    (tmp / "leaf.pem").write_bytes(pem(cert))
    proc = openssl("verify", "-crl_check", *extra, "-CAfile", "ca.pem", "-CRLfile", "crl.pem", "leaf.pem", cwd=tmp,
                   check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")


def crl_verifies(tmp: Path, ca_pem: bytes, crl_der: bytes) -> bool:
    (tmp / "ca.pem").write_bytes(ca_pem)
    (tmp / "check.der").write_bytes(crl_der)
    proc = openssl("crl", "-inform", "DER", "-in", "check.der", "-noout", "-verify", "-CAfile", "ca.pem", cwd=tmp,
                   check=False)
    return proc.returncode == 0 and b"verify OK" in proc.stdout + proc.stderr


async def test_openssl_follows_revoke_hold_release(engine, tmp_path):
    ca = make_ca("Interop CA", kind="rsa", slot=1)
    revoked, held, good = issue(ca, 0xA1, cdp=CDP), issue(ca, 0xA2, cdp=CDP), issue(ca, 0xA3, cdp=CDP)
    state: dict[int, tuple] = {0xA1: (NOW, 1, None), 0xA2: (NOW, 6, None)}

    async def source(now):
        return [(s, at, r, inv) for s, (at, r, inv) in state.items()]

    settings = CrlSettings(coalesce_delay=0.2, poll_interval=0.1)
    pub = Publisher("default", issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key),
                    source=source, engine=engine, settings=settings)
    crl = await pub.publish_now()
    assert crl_verifies(tmp_path, ca.pem, crl.der)
    ok, out = verify(tmp_path, ca.pem, crl.der, revoked)
    assert not ok and "certificate revoked" in out
    ok, out = verify(tmp_path, ca.pem, crl.der, held)
    assert not ok and "certificate revoked" in out  # on hold counts as revoked
    assert verify(tmp_path, ca.pem, crl.der, good)[0]

    del state[0xA2]  # hold released
    crl = await pub.publish_now()
    assert crl_verifies(tmp_path, ca.pem, crl.der)
    assert verify(tmp_path, ca.pem, crl.der, held)[0]
    assert not verify(tmp_path, ca.pem, crl.der, revoked)[0]

    # a revocation reaches the CRL within the promised bound: coalesce_delay plus one build
    await pub.start()
    try:
        started = time.monotonic()
        state[0xA3] = (datetime.now(UTC), 5, None)
        pub.notify_changed()
        crl = await pub.wait_newer(crl.number, timeout=5)
        latency = time.monotonic() - started
        assert latency < settings.coalesce_delay.total_seconds() + 1.0
        assert crl_verifies(tmp_path, ca.pem, crl.der)
        ok, out = verify(tmp_path, ca.pem, crl.der, good)
        assert not ok and "certificate revoked" in out
    finally:
        await pub.stop()

    # past nextUpdate OpenSSL calls the CRL expired (error 12)
    later = str(int((crl.next_update + timedelta(hours=1)).timestamp()))
    ok, out = verify(tmp_path, ca.pem, crl.der, held, "-attime", later)
    assert not ok and "CRL has expired" in out


def test_openssl_accepts_ecdsa_p256_crls(tmp_path):
    ca = make_ca("EC Interop CA", kind="ec", slot=2)
    entries = [(0xB1, NOW - timedelta(days=1), 9, None), (0xB2, NOW - timedelta(hours=2), 1, NOW - timedelta(days=3))]
    der = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=7,
                    this_update=NOW, next_update=NOW + timedelta(days=7), entries=entries)
    assert crl_verifies(tmp_path, ca.pem, der)
    ok, out = verify(tmp_path, ca.pem, der, issue(ca, 0xB2, cdp=CDP))
    assert not ok and "certificate revoked" in out
    assert verify(tmp_path, ca.pem, der, issue(ca, 0xB3, cdp=CDP))[0]
    text = openssl("crl", "-inform", "DER", "-in", str(tmp_path / "check.der"), "-noout", "-text").stdout.decode()
    assert "Privilege Withdrawn" in text and "Invalidity Date" in text and "X509v3 CRL Number" in text
    assert f"Last Update: {NOW.strftime('%b %e %H:%M:%S %Y')} GMT" in text


def test_openssl_enforces_the_partition_scope(tmp_path):
    ca = make_ca("Sharded CA", kind="ec", slot=3)
    shard1, shard2 = "http://127.0.0.1/crl/shard-1.crl", "http://127.0.0.1/crl/shard-2.crl"
    der = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=1,
                    this_update=NOW, next_update=NOW + timedelta(days=7), entries=[(0xC1, NOW, 5, None)],
                    scope=Scope((shard1,), only_user_certs=True))
    ok, out = verify(tmp_path, ca.pem, der, issue(ca, 0xC1, cdp=shard1))
    assert not ok and "certificate revoked" in out
    assert verify(tmp_path, ca.pem, der, issue(ca, 0xC2, cdp=shard1))[0]
    ok, out = verify(tmp_path, ca.pem, der, issue(ca, 0xC3, cdp=shard2))
    assert not ok and "different CRL scope" in out  # error 44: this shard's CRL says nothing about shard 2


def test_pkilint_pkix_profile_finds_nothing_on_empty_small_and_large_crls(tmp_path, lint_crl):
    ca = make_ca("Lint CA", kind="rsa", slot=1)
    issuer, signer = Issuer.from_certificate(ca.cert), CrlSigner.for_private_key(ca.key)
    rnd = random.Random(5280)
    small = [(0xD0 + r, NOW - timedelta(days=r + 1), r, NOW - timedelta(days=r + 2) if r == 1 else None)
             for r in (1, 2, 3, 4, 5, 6, 9, 10)] + [(0xDF, NOW, None, None)]
    large = [(rnd.getrandbits(127) | 1 << 120, NOW - timedelta(seconds=rnd.randrange(10**7)),
              rnd.choice([None, 1, 4, 5, 6, 9]), None) for _ in range(10_000)]
    files = []
    for name, entries in (("empty", []), ("small", small), ("large", large)):
        der = build_crl(issuer=issuer, signer=signer, number=len(entries) + 1, this_update=NOW,
                        next_update=NOW + timedelta(days=7), entries=entries)
        (tmp_path / f"{name}.der").write_bytes(der)
        files.append(tmp_path / f"{name}.der")
    procs = [subprocess.Popen([lint_crl, "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(f)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for f in files]
    for f, proc in zip(files, procs):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == b"", (f.name, out.decode())
