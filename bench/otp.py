"""Benchmark of the YubiKey OTP factor; prints its figures.

    .venv/bin/python bench/otp.py [--backend sqlite|postgresql|both] [--duration 10] [--workers 2]

For each backend, in one run: the store's durable single-row commit rate on one connection
(SQLAlchemy, and raw asyncpg on PostgreSQL), then verifications/s through /wsapi/2.0/verify of the
full application (`scep-server serve --workers N`, every feature loaded, the access log off as in
production) driven by wrk with fresh, signed OTPs (every OK is a durably committed counter update),
then the import of `--import-keys` keys through the application's OTP service.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import free_port, server_pids, cpu_seconds, commit_rate  # noqa: E402  (bench/measure.py)

from sqlalchemy.engine import make_url  # noqa: E402

from otp import modhex, yubico  # noqa: E402
from otp.token import Token, encrypt_token  # noqa: E402
from scep_server.config import load_settings  # noqa: E402
from scep_server.runtime import initialise, open_runtime  # noqa: E402
from trustkit.db import create_engine  # noqa: E402
from scep_server.store.migrate import upgrade  # noqa: E402

PG_ADMIN_URL = os.environ.get("SCEP_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")

WRK_SCRIPT = r"""
local counter = 1
local threads = {}
function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end
function init(args)
  paths = {}
  for line in io.lines(args[1] .. "/paths_" .. id .. ".txt") do paths[#paths + 1] = line end
  idx = 0
  ok = 0
  other = 0
  exhausted = 0
end
function request()
  idx = idx + 1
  if idx > #paths then idx = 1; exhausted = 1 end
  return wrk.format("GET", paths[idx])
end
function response(status, headers, body)
  if string.find(body, "status=OK", 1, true) then ok = ok + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local tok, tother, tex = 0, 0, 0
  for _, t in ipairs(threads) do
    tok = tok + t:get("ok"); tother = tother + t:get("other"); tex = tex + t:get("exhausted")
  end
  io.write(string.format("RESULT ok=%d other=%d exhausted=%d duration_us=%d p50_us=%d p99_us=%d\n",
    tok, tother, tex, summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


async def pg_admin(sql: str) -> None:
    import asyncpg

    u = make_url(PG_ADMIN_URL)
    conn = await asyncpg.connect(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
                                 database=u.database or "postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Database:
    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.workdir = workdir
        self.name = f"otp_bench_{uuid.uuid4().hex[:10]}"
        self.server_comm = "postgres" if backend == "postgresql" else None
        if backend == "sqlite":
            self.url = f"sqlite+aiosqlite:///{workdir / (self.name + '.db')}"
        else:
            self.url = make_url(PG_ADMIN_URL).set(database=self.name).render_as_string(hide_password=False)

    async def create(self) -> None:
        if self.backend == "postgresql":
            await pg_admin(f'CREATE DATABASE "{self.name}"')
        engine = create_engine(self.url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    async def drop(self) -> None:
        if self.backend == "postgresql":
            await pg_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


async def raw_pg_commit_rate(url: str, seconds: float) -> float:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username, database=u.database)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id INTEGER PRIMARY KEY, n INTEGER)")
        await conn.execute("DELETE FROM bench_commit")
        await conn.execute("INSERT INTO bench_commit VALUES (1, 0)")
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            async with conn.transaction():
                await conn.execute("UPDATE bench_commit SET n = n + 1 WHERE id = 1")
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        await conn.close()


def key_lines(count: int, first_serial: int) -> tuple[list[tuple[int, str, bytes, bytes]], bytes]:
    keys = []
    lines = []
    for i in range(count):
        serial = first_serial + i
        public_id = modhex.encode(b"\xff\x00" + serial.to_bytes(4, "big"))
        private_id = secrets.token_bytes(6)
        aes_key = secrets.token_bytes(16)
        keys.append((serial, public_id, private_id, aes_key))
        lines.append(f"{serial},{public_id},{private_id.hex()},{aes_key.hex()},,2026-11-22T10:06:46,")
    return keys, ("\n".join(lines) + "\n").encode()


def write_paths(keys, client_id: int, api_key: bytes, total: int, threads: int, outdir: Path) -> None:
    """Per wrk thread, a list of signed verify requests with fresh OTPs; each key belongs to one thread."""
    per_key = total // len(keys) + 1
    for t in range(threads):
        mine = keys[t::threads]
        with open(outdir / f"paths_{t + 1}.txt", "w") as fh:
            for n in range(per_key):
                ctr, use = 1 + n // 250, n % 250 + 1
                for serial, public_id, private_id, aes_key in mine:
                    tok = Token.create(private_id=private_id, usage_ctr=ctr, timestamp=(n * 8) & 0xFFFFFF,
                                       session_use=use, random=n & 0xFFFF)
                    otp = public_id + modhex.encode(encrypt_token(tok, aes_key))
                    params = {"id": str(client_id), "otp": otp, "nonce": secrets.token_hex(10), "timestamp": "1"}
                    h = yubico.sign(params, api_key)
                    fh.write(f"/wsapi/2.0/verify?id={client_id}&otp={otp}&nonce={params['nonce']}&timestamp=1"
                             f"&h={quote(h, safe='')}\n")


def app_settings(url: str, data_dir: Path, port: int = 8080, workers: int = 1):
    return load_settings(None, data_dir=str(data_dir), database={"url": url}, ca={"key_size": 2048},
                         server={"listen": f"127.0.0.1:{port}", "workers": workers}, log={"level": "warning"})


def start_server(url: str, data_dir: Path, workers: int, port: int) -> subprocess.Popen:
    """`scep-server serve` with `workers` processes; returns once /healthz answers."""
    import urllib.request

    env = {**os.environ, "SCEP_SERVER_DATABASE__URL": url, "SCEP_SERVER_LOG__LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), "serve",
                             "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                pass
            # every worker must be up: give the others a moment after the first answers
            time.sleep(1.0)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def bench_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    db = Database(backend, workdir)
    await db.create()
    results: dict[str, float] = {}
    try:
        data_dir = workdir / f"data-{backend}"
        settings = app_settings(db.url, data_dir)
        await initialise(settings)
        keys, data = key_lines(args.keys, 10_000_000)
        async with open_runtime(settings) as rt:
            service = rt.otp
            res = await service.import_secrets(data)
            assert res.ok and res.imported == len(keys), res.errors[:3]
            info, key_b64 = await service.add_client("bench")
        results["commit_rate"] = await commit_rate(db.url, args.commit_seconds)
        if backend == "postgresql":
            results["raw_commit_rate"] = await raw_pg_commit_rate(db.url, args.commit_seconds)
        total = int(args.max_rate * args.duration)
        t0 = time.perf_counter()
        write_paths(keys, info.id, base64.b64decode(key_b64), total, args.threads, workdir)
        gen = time.perf_counter() - t0
        port = free_port()
        proc = start_server(db.url, data_dir, args.workers, port)
        try:
            script = workdir / "verify.lua"
            script.write_text(WRK_SCRIPT)
            pids = server_pids(proc)
            cpu0 = (cpu_seconds(pids), cpu_seconds(comm=db.server_comm), os.times())
            out = subprocess.run(
                [shutil.which("wrk") or "wrk", "-t", str(args.threads), "-c", str(args.connections),
                 "-d", f"{args.duration}s", "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}",
                 "--", str(workdir)],
                capture_output=True, text=True, check=True).stdout
            t = os.times()
            results["cpu_servers"] = cpu_seconds(pids) - cpu0[0]
            results["cpu_database"] = cpu_seconds(comm=db.server_comm) - cpu0[1] if db.server_comm else 0.0
            results["cpu_wrk"] = (t.children_user + t.children_system) - (cpu0[2].children_user
                                                                          + cpu0[2].children_system)
        finally:
            stop_server(proc)
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        fields = dict(kv.split("=") for kv in line.split()[1:])
        secs = int(fields["duration_us"]) / 1e6
        results.update(verify_rate=int(fields["ok"]) / secs, not_ok=int(fields["other"]),
                       exhausted=int(fields["exhausted"]), p50_ms=int(fields["p50_us"]) / 1000,
                       p99_ms=int(fields["p99_us"]) / 1000, gen_seconds=gen)
    finally:
        await db.drop()
    if args.import_keys:
        results["import_seconds"], results["import_cpu"], results["import_db_cpu"] = await bench_import(
            backend, args.import_keys, workdir)
    return results


async def bench_import(backend: str, count: int, workdir: Path) -> tuple[float, float, float]:
    """Wall seconds of importing `count` keys, CPU seconds of this process and of the database server."""
    db = Database(backend, workdir)
    await db.create()
    try:
        settings = app_settings(db.url, workdir / f"data-import-{backend}")
        await initialise(settings)
        _, data = key_lines(count, 20_000_000)
        async with open_runtime(settings) as rt:
            cpu0 = time.process_time(), cpu_seconds(comm=db.server_comm) if db.server_comm else 0.0
            t0 = time.perf_counter()
            res = await rt.otp.import_secrets(data)
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0[0]
            db_cpu = (cpu_seconds(comm=db.server_comm) - cpu0[1]) if db.server_comm else 0.0
            assert res.ok and res.imported == count, res.errors[:3]
        return elapsed, cpu, db_cpu
    finally:
        await db.drop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--keys", type=int, default=2000, help="keys taking part in the verify run")
    p.add_argument("--max-rate", type=int, default=12000, help="OTPs generated per second of run")
    p.add_argument("--commit-seconds", type=float, default=3.0)
    p.add_argument("--import-keys", type=int, default=100_000)
    args = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required (apt-get install wrk)")
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory(prefix="otp-bench-") as tmp:
        for backend in backends:
            r = asyncio.run(bench_backend(backend, args, Path(tmp)))
            print(f"== {backend} (scep-server serve --workers {args.workers}, wrk -t{args.threads} -c{args.connections}, "
                  f"{args.duration}s, {args.keys} keys)")
            print(f"durable single-row commits/s, one connection (SQLAlchemy): {r['commit_rate']:8.0f}")
            if "raw_commit_rate" in r:
                print(f"durable single-row commits/s, one connection (raw asyncpg): {r['raw_commit_rate']:6.0f}")
            print(f"verifications/s through /wsapi/2.0/verify (status=OK):      {r['verify_rate']:8.0f}"
                  f"   non-OK answers: {r['not_ok']}   OTP list wrapped: {bool(r['exhausted'])}")
            print(f"latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
            n = r["verify_rate"] * args.duration
            db_cpu = f", database {r['cpu_database'] / n * 1e6:.0f}" if r["cpu_database"] else ""
            print(f"CPU per verification: servers {r['cpu_servers'] / n * 1e6:.0f} us{db_cpu}, "
                  f"wrk {r['cpu_wrk'] / n * 1e6:.0f} us (machine: {os.cpu_count()} CPUs)")
            target = max(r["commit_rate"], r.get("raw_commit_rate", 0)) if backend == "postgresql" else 1000.0
            verdict = "met" if r["verify_rate"] >= target else "NOT met"
            print(f"target >= {target:.0f}/s: {verdict}")
            if "import_seconds" in r:
                ok = "met" if r["import_seconds"] < 10 else "NOT met"
                db_cpu = f", database {r['import_db_cpu']:.2f} s" if r["import_db_cpu"] else ""
                print(f"import of {args.import_keys} keys: {r['import_seconds']:.2f} s (target < 10 s: {ok}); "
                      f"CPU: importing process {r['import_cpu']:.2f} s{db_cpu}")
            # the figures above in one line for tools (bench/compare.py)
            print("RESULT " + json.dumps({"backend": backend, "workers": args.workers, "duration": args.duration,
                                          "import_keys": args.import_keys, **r}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
