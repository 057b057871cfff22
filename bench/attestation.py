"""Attestation benchmark: verifications/s through the HTTP API on a warm store, and the latency from a
device lifecycle change to our served CRL.

A `scep-server serve --workers 2` process runs on a fresh data directory; one device holds one RSA-2048
certificate of our CA, already bound (warm store). Signed verify requests (one pre-issued nonce each,
signed before the clock starts: the device's cost is not the server's) are replayed by wrk. Only
verifications that consumed their nonce and answered "managed" count: the figure is
managed verifications / wall time. Reference in the same run: wrk against /healthz on the same server.

    .venv/bin/python bench/attestation.py                        # SQLite (the default store)
    .venv/bin/python bench/attestation.py --db postgresql        # PostgreSQL at 127.0.0.1:5432 (user postgres)
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from measure import free_port, server_pids, cpu_seconds, commit_rate  # noqa: E402  (bench/measure.py)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
_KEY = None


def _init_signer(pem: bytes) -> None:
    global _KEY
    _KEY = serialization.load_pem_private_key(pem, None)


def _sign(args: tuple[str, str]) -> str:
    from scep_server.binding.attestation import signed_bytes

    nonce, device = args
    return base64.b64encode(_KEY.sign(signed_bytes(nonce, device), padding.PKCS1v15(), hashes.SHA256())).decode()


async def prepare(settings, count: int, device: str) -> tuple[str, bytes, bytes, list[str]]:
    """CA, schema, one issued + recorded certificate, tokens, a device and `count` fresh nonces."""
    from scep_server.ca import inventory
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from scep_server.runtime import initialise, open_runtime
    from trustkit.db import writer
    from scep_server.store.tables import certificates

    await initialise(settings)
    async with open_runtime(settings) as rt:
        ca = rt.cas[settings.ca.name]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)])).sign(key, hashes.SHA256()))
        now = rt.clock()
        cert = ca.issue(csr, IssuancePolicy(CertificateTemplate()), serial=x509.random_serial_number(), now=now)
        der = cert.public_bytes(serialization.Encoding.DER)
        # a profile whose certificates attest (device_trust; the `default` static profile's do not)
        await rt.profiles.create("devices", ca=ca.name, challenge_kind="static", static_secret=os.urandom(24).hex(),
                                 now=now)
        async with writer(rt.engine).begin() as conn:
            await conn.execute(certificates.insert().values(inventory.certificate_row(
                cert, der, ca.name, "devices", None, inventory.public_key_sha256(key.public_key()), now)))
        _, signin = await rt.tokens.create(scope="signin", name="bench", now=now)
        _, admin = await rt.tokens.create(scope="admin", name="bench", now=now)
        await rt.binding.devices.create(device, actor="bench")
        # nonces as POST /api/v1/attestation/challenge issues them (stateless: the HMAC key is in the database)
        att = rt.binding.attestation
        att.nonce_ttl = timedelta(hours=1)  # signing the bodies takes longer than the default lifetime
        nonces = [(await att.challenge(device))["nonce"] for _ in range(count)]
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    return signin + "\n" + admin, cert.public_bytes(serialization.Encoding.PEM), pem, nonces


def _post(url: str, body: dict | None, token: str) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


WRK_SCRIPT = r"""
local bodies = {}
local counter = 0
local thread_id = 0
local nthreads = 1
local threads = {}
setup = function(thread)
  thread:set("tid", counter); counter = counter + 1
  table.insert(threads, thread)
end
init = function(args)
  bad = 0
  nthreads = tonumber(args[2])
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  i = tid + 1
end
request = function()
  local body = bodies[i]
  if body == nil then body = bodies[1] end
  i = i + nthreads
  return wrk.format("POST", "/api/v1/attestation/verify", {["Content-Type"] = "application/json",
                    ["Authorization"] = "Bearer TOKEN"}, body)
end
response = function(status, headers, body)
  if not string.find(body, '"managed": true', 1, true) then bad = bad + 1 end
end
done = function(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("not managed: %d\n", total))
end
"""


def machine_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def wrk(url: str, seconds: float, connections: int, threads: int, script: Path | None = None,
        args: list[str] = ()) -> float:
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{int(seconds)}s"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url] + (["--", *args] if args else []), capture_output=True, text=True,
                         check=True).stdout
    return float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1]), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--nonces", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lifecycle-rounds", type=int, default=5)
    opts = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required (apt install wrk)")

    from scep_server.config import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-attest-"))
    port = free_port()
    db_url, pg_name = None, None
    if opts.db == "postgresql":
        import asyncpg

        pg_name = f"bench_attest_{uuid.uuid4().hex[:8]}"

        async def create():
            c = await asyncpg.connect(PG_ADMIN)
            await c.execute(f'CREATE DATABASE "{pg_name}"')
            await c.close()

        asyncio.run(create())
        db_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
    overrides = {"data_dir": str(tmp / "data"), "server": {"listen": f"127.0.0.1:{port}"}, "ca": {"key_size": 2048},
                 "log": {"level": "warning"}}
    if db_url:
        overrides["database"] = {"url": db_url}
    settings = load_settings(None, **overrides)
    device = "bench-device"
    tokens, cert_pem, key_pem, nonces = asyncio.run(prepare(settings, opts.nonces + 10, device))
    signin, admin = tokens.split("\n")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(initializer=_init_signer, initargs=(key_pem,)) as pool:
        sigs = list(pool.map(_sign, [(n, device) for n in nonces], chunksize=500))
    sign_s = time.perf_counter() - t0
    bodies = tmp / "bodies.jsonl"
    cert_text = cert_pem.decode()
    with bodies.open("w") as fh:
        for n, s in zip(nonces[10:], sigs[10:]):
            fh.write(json.dumps({"device_id": device, "nonce": n, "certificate": cert_text, "signature": s}) + "\n")
    script = tmp / "verify.lua"
    script.write_text(WRK_SCRIPT.replace("TOKEN", signin))

    env = {**os.environ, "SCEP_SERVER_LOG__LEVEL": "warning"}
    if db_url:
        env["SCEP_SERVER_DATABASE__URL"] = db_url
    proc = subprocess.Popen([sys.executable, "-m", "scep_server.cli", "--data-dir", str(tmp / "data"), "serve",
                             "--listen", f"127.0.0.1:{port}", "--workers", str(opts.workers)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                _get(base + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        # warm: the first verification binds; the next ones warm both workers' caches
        for n, s in zip(nonces[:10], sigs[:10]):
            res = _post(base + "/api/v1/attestation/verify", {"device_id": device, "nonce": n, "certificate": cert_text,
                                                             "signature": s}, signin)
            assert res["managed"], res
        health_rps, _ = wrk(base + "/healthz", min(opts.seconds, 3), opts.connections, 2)
        commits = asyncio.run(commit_rate(settings.database_url(), 2.0))

        async def used() -> int:
            import sqlalchemy as sa

            from scep_server.binding.tables import attestation_spent_nonces
            from trustkit.db import create_engine

            engine = create_engine(settings.database_url())
            try:
                async with engine.connect() as conn:
                    return (await conn.execute(sa.select(sa.func.count())
                                               .select_from(attestation_spent_nonces))).scalar()
            finally:
                await engine.dispose()

        before = asyncio.run(used())
        pids = server_pids(proc)
        cpu0, db0, m0 = cpu_seconds(pids), cpu_seconds(comm="postgres") if pg_name else 0.0, machine_times()
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        raw_rps, out = wrk(base + "/", opts.seconds, opts.connections, 2, script, [str(bodies), "2"])
        elapsed = time.perf_counter() - t0
        cpu1, db1, m1 = cpu_seconds(pids), cpu_seconds(comm="postgres") if pg_name else 0.0, machine_times()
        load1 = os.getloadavg()[0]
        managed = asyncio.run(used()) - before
        not_managed = int(next(l for l in out.splitlines() if l.startswith("not managed:")).split()[-1])
        if managed >= opts.nonces - 10:
            print("warning: every pre-issued nonce was used; raise --nonces", file=sys.stderr)

        # lifecycle change -> our CRL: deactivate (hold listed), reactivate (hold dropped)
        serial = x509.load_pem_x509_certificate(cert_pem).serial_number
        lat = {"deactivate": [], "reactivate": []}
        for _ in range(opts.lifecycle_rounds):
            for action, want in (("deactivate", True), ("reactivate", False)):
                t = time.perf_counter()
                _post(f"{base}/api/v1/devices/{device}/{action}", {"reason": "bench"}, admin)
                while True:
                    crl = x509.load_der_x509_crl(_get(base + "/crl/default.crl"))
                    if (crl.get_revoked_certificate_by_serial_number(serial) is not None) == want:
                        break
                    time.sleep(0.005)
                lat[action].append(time.perf_counter() - t)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if pg_name:
            import asyncpg

            async def drop():
                c = await asyncpg.connect(PG_ADMIN)
                await c.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
                await c.close()

            asyncio.run(drop())
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"store: {opts.db}, {opts.workers} workers, {opts.connections} connections, wrk 2 threads, "
          f"{os.cpu_count()} CPUs")
    print(f"signing {len(sigs)} request bodies (client side, before timing): {sign_s:.1f} s")
    print(f"verifications answered 'managed': {managed} in {elapsed:.1f} s = {managed / elapsed:,.0f}/s "
          f"(wrk saw {raw_rps:,.0f} requests/s; answers other than managed: {not_managed})")
    print(f"reference, GET /healthz on the same server: {health_rps:,.0f} requests/s "
          f"(verify/healthz = {managed / elapsed / health_rps:.2f})")
    busy = (m1[0] - m0[0]) / (m1[1] - m0[1])
    print(f"CPU per managed verification: servers {(cpu1 - cpu0) / max(managed, 1) * 1e6:,.0f} us"
          + (f", PostgreSQL {(db1 - db0) / max(managed, 1) * 1e6:,.0f} us" if pg_name else "")
          + f"; machine busy {busy:.0%} of {os.cpu_count()} CPUs during the run, load average {load0:.1f} -> {load1:.1f}")
    print(f"reference, durable single-row commits/s on one connection: {commits:,.0f} "
          f"(verify/commit = {managed / elapsed / commits:.1f})")
    for action, values in lat.items():
        print(f"{action} -> CRL served: median {statistics.median(values) * 1000:.0f} ms, "
              f"max {max(values) * 1000:.0f} ms over {len(values)} changes")
    # the figures above in one line for tools (bench/compare.py)
    print("RESULT " + json.dumps({
        "db": opts.db, "workers": opts.workers, "connections": opts.connections, "managed": managed,
        "seconds": elapsed, "managed_per_s": managed / elapsed, "wrk_rps": raw_rps, "not_managed": not_managed,
        "healthz_rps": health_rps, "server_cpu_us": (cpu1 - cpu0) / max(managed, 1) * 1e6,
        "postgresql_cpu_us": (db1 - db0) / max(managed, 1) * 1e6 if pg_name else None, "machine_busy": busy,
        "commit_rate": commits, **{f"{action}_ms": [v * 1000 for v in values] for action, values in lat.items()}}))


if __name__ == "__main__":
    main()
