"""How soon a status change made elsewhere is on every running instance's CRL: two `scep-server serve` processes
on one database, certificates revoked by the command line (`scep-server cert revoke`, a third process) and
through one instance's API (`DELETE /api/v1/devices/{id}`), each instance's `/crl/default.crl` polled every
10 ms until it lists the serial.

    .venv/bin/python bench/propagation.py                  # SQLite file, then PostgreSQL (a fresh database)
    .venv/bin/python bench/propagation.py --changes 20 --db sqlite
    .venv/bin/python bench/propagation.py --poll-interval 60   # the safety-net poll out of the way

Target: every instance serves the change within 1 s of the CRL carrying it being recorded (the process that
made the change records it after crl.coalesce_delay plus one re-sign).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from measure import PG_ADMIN, free_port, pg_admin  # noqa: E402  (bench/measure.py)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

TARGET = 1.0


# ---------------------------------------------------------------- preparation (in this process)

async def prepare(settings, count: int) -> dict:
    """CA and schema, `2 * count` issued and recorded certificates (profile `devices`, whose certificates attest),
    `count` devices, and API tokens."""
    from scep_server.ca import inventory
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from scep_server.runtime import initialise, open_runtime
    from scep_server.store.tables import certificates
    from trustkit.db import writer

    await initialise(settings)
    certs = []
    async with open_runtime(settings) as rt:
        ca = rt.cas[settings.ca.name]
        now = rt.clock()
        await rt.profiles.create("devices", ca=ca.name, challenge_kind="static", static_secret=os.urandom(24).hex(),
                                 now=now)
        for i in range(2 * count):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{i}")]))
                   .sign(key, hashes.SHA256()))
            cert = ca.issue(csr, IssuancePolicy(CertificateTemplate()), serial=x509.random_serial_number(), now=now)
            der = cert.public_bytes(serialization.Encoding.DER)
            async with writer(rt.engine).begin() as conn:
                await conn.execute(certificates.insert().values(inventory.certificate_row(
                    cert, der, ca.name, "devices", None, inventory.public_key_sha256(key.public_key()), now)))
            certs.append((cert, key))
        for i in range(count):
            await rt.binding.devices.create(f"dev-{i}", actor="bench")
        _, signin = await rt.tokens.create(scope="signin", name="bench", now=now)
        _, admin = await rt.tokens.create(scope="admin", name="bench", now=now)
    return {"certs": certs, "signin": signin, "admin": admin}


def _request(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, bytes]:
    import json

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def bind(url: str, signin: str, device: str, cert: x509.Certificate, key) -> None:
    """A successful attestation binds the certificate to the device (so deleting the device revokes it)."""
    import json

    from scep_server.binding.attestation import signed_bytes

    status, body = _request("POST", url + "/api/v1/attestation/challenge", signin, {"device_id": device})
    assert status == 200, body
    nonce = json.loads(body)["nonce"]
    sig = key.sign(signed_bytes(nonce, device), padding.PKCS1v15(), hashes.SHA256())
    status, body = _request("POST", url + "/api/v1/attestation/verify", signin, {
        "device_id": device, "nonce": nonce, "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "signature": base64.b64encode(sig).decode(), "algorithm": "rsa-pkcs1v15-sha256"})
    assert status == 200 and json.loads(body)["managed"], body


# ---------------------------------------------------------------- servers and measuring

class Instance:
    def __init__(self, data_dir: Path, env: dict, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), "serve", "--listen",
             f"127.0.0.1:{self.port}", "--workers", "1"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
            cwd=REPO)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/crl/default.crl", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start (see {log})")
            time.sleep(0.1)

    def lists(self, serial: int) -> bool:
        with urllib.request.urlopen(self.url + "/crl/default.crl", timeout=5) as resp:
            crl = x509.load_der_x509_crl(resp.read())
        return crl.get_revoked_certificate_by_serial_number(serial) is not None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def until_listed(instances: list[Instance], serial: int, started: float, timeout: float = 120,
                 proc: subprocess.Popen | None = None) -> tuple[list[float], list[float]]:
    """Seconds from `started` until each instance serves a CRL listing `serial` (polled every 10 ms), and the
    wall-clock times at which each did."""
    seen: list[float | None] = [None] * len(instances)
    wall: list[float | None] = [None] * len(instances)
    while None in seen:
        for i, inst in enumerate(instances):
            if seen[i] is None and inst.lists(serial):
                seen[i], wall[i] = time.monotonic() - started, time.time()
        if proc is not None and proc.poll() not in (None, 0):
            raise RuntimeError(f"the command failed: {proc.communicate()[0].decode(errors='replace')}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"serial {serial:x} not served by every instance within {timeout} s")
        time.sleep(0.01)
    return seen, wall


def recorded_at(db_url: str) -> float:
    """When the newest CRL was recorded (crl_state.published_at, written by the process that signed it)."""
    import sqlalchemy as sa

    from crl.tables import crl_state
    from trustkit.clock import aware
    from trustkit.db import create_engine

    async def go():
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                value = (await conn.execute(sa.select(crl_state.c.published_at)
                                            .where(crl_state.c.ca == "default"))).scalar_one()
        finally:
            await engine.dispose()
        return aware(value).timestamp()
    return asyncio.run(go())


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:6.0f} ms, max {max(values) * 1000:6.0f} ms"


def run_db(kind: str, db_url: str | None, args, root: Path) -> dict:
    from scep_server.config import load_settings

    data_dir = root / kind
    env = {**os.environ, "SCEP_SERVER_LOG__LEVEL": "warning", "SCEP_SERVER_CA__KEY_SIZE": "2048",
           "PYTHONPATH": str(REPO)}
    overrides = {"data_dir": str(data_dir), "ca": {"key_size": 2048}, "log": {"level": "warning"}}
    if db_url:
        env["SCEP_SERVER_DATABASE__URL"] = db_url
        overrides["database"] = {"url": db_url}
    if args.poll_interval:
        env["SCEP_SERVER_CRL__POLL_INTERVAL"] = str(args.poll_interval)
    if args.coalesce_delay is not None:
        env["SCEP_SERVER_CRL__COALESCE_DELAY"] = str(args.coalesce_delay)
    settings = load_settings(None, **overrides)
    prepared = asyncio.run(prepare(settings, args.changes))
    certs = prepared["certs"]
    instances = [Instance(data_dir, env, root / f"{kind}-{i}.log") for i in range(2)]
    try:
        a, b = instances
        for i in range(args.changes):  # devices bound beforehand, by attestation on instance A
            bind(a.url, prepared["signin"], f"dev-{i}", *certs[i])
        cli_recorded, cli_total, api_recorded, api_own, api_other = [], [], [], [], []
        for i in range(args.changes):
            # the command line: a process of its own, publishing as it ends
            cert = certs[args.changes + i][0]
            started = time.monotonic()
            cli = subprocess.Popen([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), "cert",
                                    "revoke", f"{cert.serial_number:X}", "--reason", "key-compromise"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
            # watched while the command runs: it records the CRL before its interpreter has ended
            seen, wall = until_listed(instances, cert.serial_number, started, proc=cli)
            out = cli.communicate(timeout=60)[0]
            assert cli.returncode == 0, out
            at = recorded_at(settings.database_url())
            cli_recorded.extend(w - at for w in wall)
            cli_total.extend(seen)
            time.sleep(0.2)
            # the API of instance B: deleting the device revokes its certificate (cessationOfOperation)
            cert = certs[i][0]
            started = time.monotonic()
            status, body = _request("DELETE", b.url + f"/api/v1/devices/dev-{i}", prepared["admin"])
            assert status == 200, body
            (on_b, on_a), wall = until_listed([b, a], cert.serial_number, started)
            at = recorded_at(settings.database_url())
            api_own.append(on_b)
            api_other.append(on_a)
            api_recorded.extend(w - at for w in wall)
            time.sleep(0.2)
            print(f"  {kind} change {i + 1}/{args.changes}: CLI: recorded +{max(cli_recorded[-2:]) * 1000:.0f} ms; "
                  f"API: on B {on_b * 1000:.0f} ms, on A {on_a * 1000:.0f} ms, recorded "
                  f"+{max(api_recorded[-2:]) * 1000:.0f} ms", file=sys.stderr, flush=True)
    finally:
        for inst in instances:
            inst.stop()
    return {"kind": kind, "cli_recorded": cli_recorded, "cli_total": cli_total, "api_own": api_own,
            "api_other": api_other, "api_recorded": api_recorded}



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--changes", type=int, default=10, help="changes per way (CLI, API) and database")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--poll-interval", type=float, default=None,
                    help="crl.poll_interval of the servers (default: the server's, 5 s)")
    ap.add_argument("--coalesce-delay", type=float, default=None,
                    help="crl.coalesce_delay of the servers (default: the server's, 1 s)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories and server logs")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="propagation-bench-"))
    results = []
    try:
        if args.db in ("sqlite", "both"):
            results.append(run_db("sqlite", None, args, root))
            report(results[-1], args)
        if args.db in ("postgresql", "both"):
            name = f"prop_bench_{uuid.uuid4().hex[:10]}"
            pg_admin(f'CREATE DATABASE "{name}"')
            try:
                url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
                results.append(run_db("postgresql", url, args, root))
                report(results[-1], args)
            finally:
                pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("  (recorded: crl_state.published_at, written by the process that signed the CRL; the command's start "
          "includes its interpreter start-up; B serves its own change after crl.coalesce_delay plus one re-sign)")
    if not all(r["met"] for r in results):
        sys.exit(1)


def report(r: dict, args) -> None:
    print(f"Propagation of a status change to 2 running instances, {r['kind']} ({args.changes} changes per way; "
          f"crl.poll_interval {args.poll_interval or 5:g} s, crl.coalesce_delay "
          f"{1 if args.coalesce_delay is None else args.coalesce_delay:g} s; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f})")
    print(f"  CLI `cert revoke`, each instance, from the CRL being recorded:    {summary(r['cli_recorded'])}")
    print(f"  CLI `cert revoke`, each instance, from the command's start:       {summary(r['cli_total'])}")
    print(f"  API on instance B, both instances, from the CRL being recorded:   {summary(r['api_recorded'])}")
    print(f"  API on instance B, served by B, from the request:                 {summary(r['api_own'])}")
    print(f"  API on instance B, served by A, from the request:                 {summary(r['api_other'])}")
    r["met"] = max(r["cli_recorded"] + r["api_recorded"]) <= TARGET
    print(f"  target: every instance within {TARGET:g} s of the CRL being recorded: "
          f"{'met' if r['met'] else 'MISSED'}", flush=True)


if __name__ == "__main__":
    main()
