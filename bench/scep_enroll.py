"""SCEP enrolment throughput of `scep-server serve --workers 2`, against the RSA-bound ceiling of the same machine.

    .venv/bin/python bench/scep_enroll.py              # SQLite (the embedded default), concurrency 1, 4, 16
    .venv/bin/python bench/scep_enroll.py --pg         # PostgreSQL at 127.0.0.1:5432 (a fresh database)
    .venv/bin/python bench/scep_enroll.py --compare-keys   # file vs SoftHSM keys, EC P-256 vs RSA-3072 CA
    .venv/bin/python bench/scep_enroll.py --compare-env 'kept:;placed:SCEP_SERVER_SERVER__CPU_AFFINITY=off'
    .venv/bin/python bench/scep_enroll.py --vs-micromdm    # beside micromdm's scepserver (root: a netns of its own)

Everything the client sends is built before timing: RSA-2048 client keys, a CSR per enrolment (distinct
subject, the profile's challenge), a self-signed signer certificate per key, and the PKCSReq bodies
(AES-128-CBC, SHA-256). The load comes from a separate client process (aiohttp, one session, `c` requests in
flight) so that it does not share the server's event loop; during the timed window it reads each reply and
checks the HTTP status only. Every reply is then verified and decrypted outside the window: each must be a
CertRep SUCCESS from the RA holding a certificate for the request's key, and every serial number must be new.

The ceiling is measured in the same run, with the server idle: RSA-2048 PKCS#1 v1.5 signatures per second on
two processes at once, divided by the three private-key operations an enrolment costs (the RA decrypts the
envelope key, the CA signs the certificate, the RA signs the CertRep).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pickle
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import PG_ADMIN, cpu_seconds, free_port, pg_admin  # noqa: E402  (bench/measure.py)

TARGET_RATIO = 0.30


# ---------------------------------------------------------------- the RSA-bound ceiling

def _rsa_worker(seconds: float, start, out, key_size: int = 2048) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    pad, h = padding.PKCS1v15(), hashes.SHA256()
    key.sign(b"warm-up", pad, h)
    start.wait()
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(20):
            key.sign(b"x" * 64, pad, h)
        n += 20
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    out.put(n / elapsed)


def rsa_ops_per_second(processes: int = 2, seconds: float = 3.0, key_size: int = 2048) -> float:
    """RSA private operations per second (of `key_size` bits), summed over `processes` processes at once."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_rsa_worker, args=(seconds, start, out, key_size)) for _ in range(processes)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let both generate their keys
    start.set()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


# ---------------------------------------------------------------- preparing requests (before timing)

def _make_keys(n: int) -> list[bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    return [rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        for _ in range(n)]


def _build(job: tuple) -> list[tuple[int, bytes]]:
    """Build PKCSReq bodies: job = (key DER, [(index, common name, transaction id)], RA cert DER, challenge)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography import x509

    from scep_server.scep import client
    from scep_server.scep.types import ContentCipher, Digest, MessageType

    key_der, items, ra_der, challenge = job
    key = serialization.load_der_private_key(key_der, None)
    signer = client.make_self_signed_signer(key, cn="bench signer")
    ra_pub = x509.load_der_x509_certificate(ra_der).public_key()
    out = []
    for index, cn, txid in items:
        csr = client.make_csr(key, cn, challenge=challenge)
        body = client.build_request(
            MessageType.PKCS_REQ, content=csr, signer_cert_der=signer, signer_key=key, recipient_cert_der=ra_der,
            recipient_key=ra_pub, transaction_id=txid, sender_nonce=secrets.token_bytes(16),
            cipher=ContentCipher.AES128_CBC, digest=Digest.SHA256, cek=secrets.token_bytes(16),
            iv=secrets.token_bytes(16))
        out.append((index, body))
    return out


def make_keys(n_keys: int, pool, procs: int = 2) -> list[bytes]:
    per = [n_keys // procs + (1 if i < n_keys % procs else 0) for i in range(procs)]
    return [k for chunk in pool.map(_make_keys, [p for p in per if p]) for k in chunk]


def prepare(total: int, keys: list[bytes], ra_der: bytes, challenge: str, pool
            ) -> tuple[list[bytes], list[bytes], list[int]]:
    """`total` PKCSReq bodies over the client keys; returns (bodies, key DERs, key index per body)."""
    n_keys = len(keys)
    run_id = uuid.uuid4().hex[:8]
    key_of = [i % n_keys for i in range(total)]
    jobs = []
    for k in range(n_keys):
        items = [(i, f"bench-{run_id}-{i:06d}", f"BENCH-{run_id}-{i:06d}") for i in range(total) if key_of[i] == k]
        # split into chunks so both processes stay busy
        for j in range(0, len(items), 25):
            jobs.append((keys[k], items[j:j + 25], ra_der, challenge))
    bodies: list[bytes | None] = [None] * total
    for chunk in pool.map(_build, jobs):
        for index, body in chunk:
            bodies[index] = body
    return bodies, keys, key_of  # type: ignore[return-value]


# ---------------------------------------------------------------- the load client (its own process)

def _client(url: str, bodies_path: str, concurrency: int, warmup: int, result_path: str) -> None:
    import aiohttp

    with open(bodies_path, "rb") as fh:
        bodies: list[bytes] = pickle.load(fh)

    async def main():
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        headers = {"Content-Type": "application/x-pki-message"}
        results: list = [None] * len(bodies)
        async with aiohttp.ClientSession(connector=connector) as session:
            next_index = 0

            async def worker(stop: int):
                nonlocal next_index
                while next_index < stop:
                    i = next_index
                    next_index += 1
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url, data=bodies[i], headers=headers) as resp:
                            reply = await resp.read()
                            status = resp.status
                    except aiohttp.ClientError as exc:
                        reply, status = repr(exc).encode(), 0
                    results[i] = (status, time.perf_counter() - t0, reply)

            # warm-up: connections opened, server caches filled; not timed
            await asyncio.gather(*(worker(warmup) for _ in range(concurrency)))
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(len(bodies)) for _ in range(concurrency)))
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return results, wall, cpu

    results, wall, cpu = asyncio.run(main())
    with open(result_path, "wb") as fh:
        pickle.dump({"results": results, "wall": wall, "cpu": cpu}, fh)


def _check(job: tuple) -> list[tuple[int, str | None, str | None]]:
    """Verify replies outside the timed window: (index, serial hex or None, problem or None)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from scep_server.scep import client
    from scep_server.scep.types import PKIStatus

    key_der, items, ra_der = job
    key = serialization.load_der_private_key(key_der, None)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    out = []
    for index, status, reply in items:
        if status != 200:
            out.append((index, None, f"HTTP {status}: {reply[:200]!r}"))
            continue
        try:
            rep = client.parse_cert_rep(reply, key, ra_cert_der=ra_der)
        except client.CertRepError as exc:
            out.append((index, None, f"bad CertRep: {exc}"))
            continue
        if rep.status is not PKIStatus.SUCCESS:
            out.append((index, None, f"{rep.status.name} {rep.fail_info} {rep.fail_text}"))
            continue
        cert = x509.load_der_x509_certificate(rep.certs[0])
        if cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) != spki:
            out.append((index, None, "certificate for another key"))
            continue
        out.append((index, format(cert.serial_number, "x"), None))
    return out


# ---------------------------------------------------------------- the server

def _worker_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Server:
    def __init__(self, data_dir: Path, db_url: str | None, workers: int, log_path: Path, *,
                 env_extra: dict[str, str] | None = None, name: str = "the server"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SCEP_SERVER_CA__KEY_SIZE": "2048", "SCEP_SERVER_LOG__LEVEL": "info",
               "PYTHONUNBUFFERED": "1", **(env_extra or {})}
        if db_url:
            env["SCEP_SERVER_DATABASE__URL"] = db_url
        self.log = open(log_path, "wb")
        if db_url:  # on a shared (PostgreSQL) database, serve makes no CA: init does, once
            subprocess.run([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), "init",
                            "--no-input"], env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, check=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), "serve",
             "--listen", f"127.0.0.1:{self.port}", "--workers", str(workers)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with {self.proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start in 60 s")
                time.sleep(0.1)
        while len(_worker_pids(self.proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        self.workers = _worker_pids(self.proc.pid) or [self.proc.pid]

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return resp.read()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()



def _inventory_count(db_url: str) -> tuple[int, int]:
    import sqlalchemy as sa

    from trustkit.db import create_engine

    async def go():
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                n = (await conn.execute(sa.text("SELECT count(*), count(DISTINCT serial) FROM certificates"))).one()
                return int(n[0]), int(n[1])
        finally:
            await engine.dispose()
    return asyncio.run(go())


def run_turn(ctx, tmp: Path, tag: str, url: str, pids: list[int], bodies: list[bytes], keys: list[bytes],
             key_of: list[int], ra_der: bytes, level: int, warmup: int) -> tuple[dict, float, list]:
    """One timed turn from the client process, then every reply checked (not timed): (the client's figures,
    the server's CPU seconds during the turn, [(index, serial or None, problem or None)])."""
    path, result_path = tmp / f"bodies-{tag}.pkl", tmp / f"result-{tag}.pkl"
    path.write_bytes(pickle.dumps(bodies))
    cpu0 = cpu_seconds(pids)
    proc = ctx.Process(target=_client, args=(url, str(path), level, warmup, str(result_path)))
    proc.start()
    proc.join()
    server_cpu = cpu_seconds(pids) - cpu0
    out = pickle.loads(result_path.read_bytes())
    jobs: dict[int, list] = {}
    for i, r in enumerate(out["results"]):
        jobs.setdefault(key_of[i], []).append((i, r[0], r[2]))
    with ctx.Pool(2) as pool:
        checked = [x for chunk in pool.map(_check, [(keys[k], items, ra_der) for k, items in jobs.items()])
                   for x in chunk]
    return out, server_cpu, checked


# ---------------------------------------------------------------- main

def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


# ---------------------------------------------------------------- CA key set-ups compared (--compare-keys)

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
KEY_SETUPS = {  # name -> (key backend, CA key type); the RA is RSA-2048 in every set-up
    "file-rsa3072": ("file", "rsa"), "file-ec-p256": ("file", "ec-p256"),
    "softhsm-rsa3072": ("pkcs11", "rsa"), "softhsm-ec-p256": ("pkcs11", "ec-p256"),
}


def _softhsm_env(directory: Path) -> dict[str, str]:
    """A SoftHSM token of its own in `directory`, and the environment that points a server at it."""
    (directory / "tokens").mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_hex(4)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", pin, "--so-pin",
                    secrets.token_hex(4)], check=True, capture_output=True,
                   env={**os.environ, "SOFTHSM2_CONF": str(conf)})
    return {"SOFTHSM2_CONF": str(conf), "SCEP_SERVER_CA__PKCS11_MODULE": SOFTHSM_MODULE,
            "SCEP_SERVER_CA__PKCS11_TOKEN_LABEL": "bench", "SCEP_CA_PKCS11_PIN": pin}


def compare_keys(args, setups: list[str]) -> int:
    """Enrolments/s of one server per CA key set-up, the set-ups interleaved within each round."""
    tmp = Path(tempfile.mkdtemp(prefix="scep-bench-keys-"))
    envs = {}
    for name in setups:
        backend, key_type = KEY_SETUPS[name]
        env = {"SCEP_SERVER_CA__KEY_TYPE": key_type, "SCEP_SERVER_CA__KEY_SIZE": "3072",
               "SCEP_SERVER_CA__KEY_BACKEND": backend, "SCEP_SERVER_LOG__LEVEL": "warning"}
        if backend == "pkcs11":
            env.update(_softhsm_env(tmp / name / "softhsm"))
        envs[name] = env
    return compare_setups(args, envs, tmp, "compare_keys")


def parse_env_setups(spec: str) -> dict[str, dict[str, str]]:
    """'name:VAR=VALUE,VAR=VALUE;name2:' -> {name: {VAR: VALUE}} (a set-up with nothing: the defaults)."""
    setups: dict[str, dict[str, str]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, assignments = part.partition(":")
        if not sep or not name or name in setups:
            raise ValueError(f"set-up {part!r}: NAME:VAR=VALUE,... with a name of its own")
        env = {}
        for assignment in filter(None, assignments.split(",")):
            var, eq, value = assignment.partition("=")
            if not eq or not var.startswith("SCEP_SERVER_"):
                raise ValueError(f"set-up {name!r}: {assignment!r} is not SCEP_SERVER_...=VALUE")
            env[var] = value
        setups[name] = env
    if len(setups) < 2:
        raise ValueError("at least two set-ups to compare")
    return setups


def compare_setups(args, envs: dict[str, dict[str, str]], tmp: Path, label: str) -> int:
    """Enrolments/s of one server per set-up (its environment), the set-ups interleaved within each round and
    their order reversed every other round."""
    setups = list(envs)
    level, count = int(args.concurrency.split(",")[0]), int(args.requests.split(",")[0])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, SQLite, {args.workers} server workers, "
          f"concurrency {level}, {count} timed enrolments per set-up and round, {args.rounds} round(s)")
    servers: dict[str, Server] = {}
    rates: dict[str, list[float]] = {name: [] for name in setups}
    cpu: dict[str, list[float]] = {name: [] for name in setups}
    failures = 0
    ctx = mp.get_context("spawn")
    try:
        from scep_server.scep import client

        prepared: dict[str, list] = {}
        with ctx.Pool(2) as pool:
            keys = make_keys(args.keys, pool)
            for name in setups:
                server = servers[name] = Server(tmp / name / "data", None, args.workers, tmp / f"{name}.log",
                                                env_extra=envs[name], name=name)
                ra_der = client.certs_in_order(server.get("/scep/default?operation=GetCACert"))[0]
                challenge = (tmp / name / "data" / "default-challenge.txt").read_text().strip()
                warmup = max(2 * level, 8)
                prepared[name] = [(warmup, ra_der, prepare(warmup + count, keys, ra_der, challenge, pool))
                                  for _ in range(args.rounds)]
        for round_ in range(args.rounds):
            order = setups if round_ % 2 == 0 else setups[::-1]
            for name in order:
                server = servers[name]
                warmup, ra_der, (bodies, keys_, key_of) = prepared[name][round_]
                out, server_cpu, checked = run_turn(ctx, tmp, f"{name}-{round_}",
                                                    server.url + "/scep/default?operation=PKIOperation",
                                                    server.workers, bodies, keys_, key_of, ra_der, level, warmup)
                problems = [(i, p) for i, _, p in checked if p is not None]
                failures += len(problems)
                for i, p in problems[:3]:
                    print(f"  {name} failure #{i}: {p}")
                ok = sum(1 for i, _, p in checked if p is None and i >= warmup)
                rates[name].append(ok / out["wall"])
                cpu[name].append(server_cpu / len(bodies) * 1000)
                print(f"  round {round_ + 1} {name:<16} {ok / out['wall']:8.1f} enrolments/s")
    finally:
        for server in servers.values():
            server.stop()
    print()
    print(f"{'set-up':<16} | {'enrol/s':>8} | {'server CPU ms/enrol':>19} | per round")
    for name in setups:
        print(f"{name:<16} | {statistics.mean(rates[name]):>8.1f} | {statistics.mean(cpu[name]):>19.2f} | "
              f"{' '.join(f'{x:.1f}' for x in rates[name])}")
    print("RESULT " + json.dumps({label: {name: {"enrol_per_s": statistics.mean(rates[name]),
                                                          "server_cpu_ms_per_enrol": statistics.mean(cpu[name]),
                                                          "per_round": rates[name]} for name in setups},
                                  "concurrency": level, "workers": args.workers, "failures": failures}))
    if args.keep:
        print(f"data directories kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if failures == 0 else 1


# ---------------------------------------------------------------- side by side with micromdm's scepserver (--vs-micromdm)

NETNS_FLAG = "--inside-netns"


def _run_in_private_netns() -> int:
    """Run this script again inside a new network namespace whose only interface is loopback (micromdm's
    `scepserver` listens on every interface: there it can reach nothing and nothing can reach it), then remove
    the namespace."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        raise SystemExit("--vs-micromdm runs the servers in a network namespace of their own: it needs root and "
                         "iproute2's `ip`")
    name = f"scep-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return subprocess.call(["ip", "netns", "exec", name, sys.executable, __file__, *sys.argv[1:], NETNS_FLAG])
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _only_loopback() -> bool:
    return sorted(os.listdir("/sys/class/net")) == ["lo"]


class MicroMdm:
    """micromdm's `scepserver` with a fresh depot: CA of `key_size` bits, one static challenge."""

    def __init__(self, tmp: Path, key_size: int, challenge: str):
        self.depot = tmp / "micromdm-depot"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "micromdm.log", "wb")
        subprocess.run(["scepserver", "ca", "-init", "-depot", str(self.depot), "-keySize", str(key_size)],
                       stdout=self.log, stderr=subprocess.STDOUT, check=True)
        self.proc = subprocess.Popen(["scepserver", "-depot", str(self.depot), "-port", str(self.port),
                                      "-challenge", challenge], stdout=self.log, stderr=subprocess.STDOUT)
        self.workers = [self.proc.pid]
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/scep?operation=GetCACaps")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"micromdm's scepserver did not start; see {tmp / 'micromdm.log'}")
                time.sleep(0.1)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return resp.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def vs_micromdm(args) -> int:
    """This server (CA RSA-2048 as micromdm's, and the default RSA-3072) and micromdm's scepserver 2.1.0 in one
    run, interleaved round by round, at each concurrency level; the load and its checks as in the default mode."""
    if NETNS_FLAG not in sys.argv:
        return _run_in_private_netns()
    if not _only_loopback():
        raise SystemExit("refusing to start micromdm's scepserver: this network namespace has interfaces other "
                         "than loopback")
    if not shutil.which("scepserver"):
        raise SystemExit("micromdm's scepserver is required (Debian package scep)")
    levels = [int(c) for c in args.concurrency.split(",")]
    counts = [int(n) for n in args.requests.split(",")]
    counts = counts * len(levels) if len(counts) == 1 else counts
    tmp = Path(tempfile.mkdtemp(prefix="scep-bench-vs-"))
    version = subprocess.run(["scepserver", "-version"], capture_output=True, text=True).stdout.strip()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, in a network namespace with loopback only; "
          f"this server: SQLite, {args.workers} workers; micromdm scepserver {version} (file depot)")

    def measure_ceiling() -> dict[int, float]:
        """Enrolments/s if only the RSA private operations ran, on both CPUs, the servers idle."""
        r2048 = rsa_ops_per_second(2, args.ceiling_seconds, 2048)
        r3072 = rsa_ops_per_second(2, args.ceiling_seconds, 3072)
        # an enrolment costs two RA-2048 private operations (decrypt, sign the CertRep) and one CA signature
        c = {2048: 1 / (2 / r2048 + 1 / r2048), 3072: 1 / (2 / r2048 + 1 / r3072)}
        print(f"RSA private operations/s on two processes: 2048-bit {r2048:,.0f}, 3072-bit {r3072:,.0f}; ceilings "
              f"{c[2048]:,.0f} enrolments/s (CA 2048), {c[3072]:,.0f} (CA 3072)")
        return c

    # measured before every round and after the last: a round's ratio uses the mean of the two around it, and
    # the ratio printed is the mean of the rounds' (the load of other work on a shared machine drifts)
    ceilings: list[dict[int, float]] = []
    servers: dict[str, object] = {}
    ca_bits = {"this-ca2048": 2048, "this-ca3072": 3072, "micromdm": 2048}
    rows: dict[tuple[str, int], list[dict]] = {}
    serials: dict[str, list[str]] = {name: [] for name in ca_bits}
    ctx = mp.get_context("spawn")
    try:
        from scep_server.scep import client

        targets: dict[str, tuple[str, bytes, str]] = {}  # name -> (PKIOperation URL, recipient/signer, challenge)
        for name in ("this-ca2048", "this-ca3072"):
            server = servers[name] = Server(tmp / name, None, args.workers, tmp / f"{name}.log", name=name,
                                            env_extra={"SCEP_SERVER_CA__KEY_SIZE": str(ca_bits[name]),
                                                       "SCEP_SERVER_LOG__LEVEL": "info"})
            targets[name] = (server.url + "/scep/default?operation=PKIOperation",
                             client.certs_in_order(server.get("/scep/default?operation=GetCACert"))[0],
                             (tmp / name / "default-challenge.txt").read_text().strip())
        challenge = secrets.token_hex(16)
        mm = servers["micromdm"] = MicroMdm(tmp, 2048, challenge)
        # one CA certificate and no RA: GetCACert answers the certificate itself (application/x-x509-ca-cert)
        targets["micromdm"] = (mm.url + "/scep?operation=PKIOperation", mm.get("/scep?operation=GetCACert"), challenge)
        names = list(targets)
        with ctx.Pool(2) as pool:
            keys = make_keys(args.keys, pool)
            prepared = {(r, name, c): prepare(max(2 * c, 8) + n, keys, targets[name][1], targets[name][2], pool)
                        for r in range(args.rounds) for name in names for c, n in zip(levels, counts)}
        for r in range(args.rounds):
            ceilings.append(measure_ceiling())
            for name in (names if r % 2 == 0 else names[::-1]):
                url, recipient, _ = targets[name]
                for c in levels:
                    warmup = max(2 * c, 8)
                    bodies, keys_, key_of = prepared[(r, name, c)]
                    out, server_cpu, checked = run_turn(ctx, tmp, f"{name}-{r}-{c}", url, servers[name].workers,
                                                        bodies, keys_, key_of, recipient, c, warmup)
                    timed = range(warmup, len(bodies))
                    bad = {i for i, _, p in checked if p is not None}
                    ok = sum(1 for i in timed if i not in bad)
                    serials[name].extend(s for _, s, p in checked if s is not None)
                    rows.setdefault((name, c), []).append(dict(
                        ok=ok, failures=len(timed) - ok, wall=out["wall"], lat=[out["results"][i][1] for i in timed],
                        round=r))
                    first = next((p for _, _, p in checked if p is not None), None)
                    print(f"  round {r + 1} {name:<12} c={c:<3} {ok / out['wall']:8.1f} enrolments/s, "
                          f"{len(timed) - ok} failures" + (f" (e.g. {first[:120]})" if first else ""))
        ceilings.append(measure_ceiling())
    finally:
        for server in servers.values():
            server.stop()
    ceiling = {bits: statistics.mean(c[bits] for c in ceilings) for bits in (2048, 3072)}

    def of_ceiling(run: dict, bits: int) -> float:
        around = (ceilings[run["round"]][bits] + ceilings[run["round"] + 1][bits]) / 2
        return run["ok"] / run["wall"] / around
    table = {}
    print()
    print(f"{'server':<12} | {'conc':>4} | {'enrol/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'failures':>8} | "
          f"{'of ceiling':>10} | duplicate serials")
    for name in ca_bits:
        dup = len(serials[name]) - len(set(serials[name]))
        for c in levels:
            runs = rows[(name, c)]
            lat = [x for run in runs for x in run["lat"]]
            rate = sum(run["ok"] for run in runs) / sum(run["wall"] for run in runs)
            table[(name, c)] = t = dict(rate=rate, p50=statistics.median(lat) * 1000, p99=pct(lat, 0.99) * 1000,
                                        failures=sum(run["failures"] for run in runs),
                                        ceiling=statistics.mean(of_ceiling(run, ca_bits[name]) for run in runs),
                                        duplicates=dup)
            print(f"{name:<12} | {c:>4} | {rate:>8.1f} | {t['p50']:>7.2f} | {t['p99']:>7.2f} | {t['failures']:>8} | "
                  f"{t['ceiling']:>10.3f} | {dup}")
    lo, hi = min(levels), max(levels)
    ours, theirs = table[("this-ca2048", hi)], table[("micromdm", hi)]
    checks = [
        (f"c={hi}: successful enrolments/s >= 1.5x micromdm's",
         ours["rate"] / max(theirs["rate"], 1e-9), ours["rate"] >= 1.5 * theirs["rate"]),
        (f"c={hi}: zero failures", ours["failures"] + table[("this-ca3072", hi)]["failures"],
         ours["failures"] == table[("this-ca3072", hi)]["failures"] == 0),
        (f"c={lo}: p50 not above micromdm's (ms, ours / theirs)",
         table[("this-ca2048", lo)]["p50"] / table[("micromdm", lo)]["p50"],
         table[("this-ca2048", lo)]["p50"] <= table[("micromdm", lo)]["p50"]),
        (f"c={hi}: >= 0.45 of the RSA ceiling, CA 2048", ours["ceiling"], ours["ceiling"] >= 0.45),
        (f"c={hi}: >= 0.45 of the RSA ceiling, CA 3072 (the default)", table[("this-ca3072", hi)]["ceiling"],
         table[("this-ca3072", hi)]["ceiling"] >= 0.45),
        (f"c={hi}: p99 under 100 ms (CA 2048)", ours["p99"], ours["p99"] < 100),
        ("no duplicate serials (this server)", ours["duplicates"] + table[("this-ca3072", hi)]["duplicates"],
         ours["duplicates"] == table[("this-ca3072", hi)]["duplicates"] == 0),
    ]
    print()
    for text, figure, met in checks:
        print(f"target {text}: {figure:.3f} {'met' if met else 'NOT met'}")
    print("RESULT " + json.dumps({"vs_micromdm": {f"{name}@{c}": t for (name, c), t in table.items()},
                                  "ceilings": {str(k): v for k, v in ceiling.items()},
                                  "ceilings_by_round": [{str(k): v for k, v in c.items()} for c in ceilings],
                                  "targets": {text: met for text, _, met in checks}}))
    if args.keep:
        print(f"data directories kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(met for _, _, met in checks) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pg", action="store_true", help="PostgreSQL instead of the embedded SQLite")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", default="200,600,1000", help="timed enrolments per concurrency level and round")
    ap.add_argument("--rounds", type=int, default=2, help="the levels run this many times, interleaved")
    ap.add_argument("--keys", type=int, default=32, help="distinct client keys (each enrols many times)")
    ap.add_argument("--ceiling-seconds", type=float, default=3.0)
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--compare-keys", nargs="?", const=",".join(KEY_SETUPS), metavar="SETUPS",
                    help="enrolments/s per CA key set-up in one run instead (SQLite; the first --concurrency and "
                         f"--requests): comma-separated, of {', '.join(KEY_SETUPS)} (default: all)")
    ap.add_argument("--compare-env", metavar="SETUPS",
                    help="enrolments/s per server environment in one run instead (SQLite; the first --concurrency "
                         "and --requests): 'name:SCEP_SERVER_X=V,...;name2:...', interleaved per round")
    ap.add_argument("--vs-micromdm", action="store_true",
                    help="this server and micromdm's scepserver side by side, in a network namespace with loopback "
                         "only (needs root; SQLite; --concurrency and --requests as given, default 1,16 and 200,1000)")
    ap.add_argument(NETNS_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vs_micromdm:
        args.concurrency = "1,16" if args.concurrency == "1,4,16" else args.concurrency
        args.requests = "200,1000" if args.requests == "200,600,1000" else args.requests
        if len(args.requests.split(",")) not in (1, len(args.concurrency.split(","))):
            ap.error("--requests needs one count, or one per concurrency level")
        return vs_micromdm(args)
    if args.compare_keys:
        setups = [s.strip() for s in args.compare_keys.split(",") if s.strip()]
        unknown = [s for s in setups if s not in KEY_SETUPS]
        if unknown or not setups:
            ap.error(f"--compare-keys: unknown set-up {', '.join(unknown)} (one of {', '.join(KEY_SETUPS)})")
        return compare_keys(args, setups)
    if args.compare_env:
        try:
            envs = parse_env_setups(args.compare_env)
        except ValueError as exc:
            ap.error(f"--compare-env: {exc}")
        return compare_setups(args, envs, Path(tempfile.mkdtemp(prefix="scep-bench-env-")), "compare_env")
    levels = [int(c) for c in args.concurrency.split(",")]
    counts = [int(n) for n in args.requests.split(",")]
    if len(counts) == 1:
        counts *= len(levels)
    if len(counts) != len(levels):
        ap.error("--requests needs one count, or one per concurrency level")

    tmp = Path(tempfile.mkdtemp(prefix="scep-bench-"))
    db_url = None
    pg_name = None
    if args.pg:
        pg_name = f"scep_bench_{uuid.uuid4().hex[:10]}"
        pg_admin(f'CREATE DATABASE "{pg_name}"')
        db_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + pg_name
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, database "
          f"{'PostgreSQL' if args.pg else 'SQLite (WAL, synchronous FULL)'}, {args.workers} server workers")

    # The ceiling is measured with the server idle, before every level and after the last one; each level's
    # ratio uses the mean of the measurements around it, which follows other load on the machine.
    ceilings = [rsa_ops_per_second(2, args.ceiling_seconds) / 3]
    print(f"RSA-2048 private operations/s on two processes: {ceilings[0] * 3:,.0f} -> ceiling {ceilings[0]:,.0f} "
          f"enrolments/s")

    server = Server(tmp / "data", db_url, args.workers, tmp / "server.log")
    db_url = db_url or f"sqlite+aiosqlite:///{tmp / 'data' / 'scep.db'}"
    rows = []
    all_serials: list[str] = []
    failures_total = 0
    try:
        from cryptography import x509
        from scep_server.scep import client

        ra_der = client.certs_in_order(server.get("/scep/default?operation=GetCACert"))[0]
        assert x509.load_der_x509_certificate(ra_der)
        challenge = (tmp / "data" / "default-challenge.txt").read_text().strip()
        ctx = mp.get_context("spawn")
        t0 = time.perf_counter()
        with ctx.Pool(2) as pool:
            keys = make_keys(args.keys, pool)
            prepared = []
            for _round in range(args.rounds):
                for c, n in zip(levels, counts):
                    warmup = max(2 * c, 8)
                    prepared.append((c, warmup, prepare(warmup + n, keys, ra_der, challenge, pool)))
        print(f"prepared {sum(len(p[2][0]) for p in prepared)} PKCSReq bodies in {time.perf_counter() - t0:.1f} s "
              f"(not timed)")

        for level, (c, warmup, (bodies, keys, key_of)) in enumerate(prepared):
            if level:
                ceilings.append(rsa_ops_per_second(2, args.ceiling_seconds) / 3)
            # server CPU includes the warm-up; verification (not timed): every reply decrypted, every serial new
            out, server_cpu, checked = run_turn(ctx, tmp, str(level), server.url + "/scep/default?operation=PKIOperation",
                                                server.workers, bodies, keys, key_of, ra_der, c, warmup)
            results, wall, client_cpu = out["results"], out["wall"], out["cpu"]
            timed = {i for i in range(warmup, len(bodies))}
            problems = [(i, p) for i, s, p in checked if p is not None]
            failures = sum(1 for i, _ in problems if i in timed)
            failures_total += len(problems)
            serials = [s for _, s, p in checked if s is not None]
            all_serials.extend(serials)
            lat = [results[i][1] for i in sorted(timed)]
            n = len(timed)
            rate = (n - failures) / wall
            rows.append(dict(c=c, n=n, ok=n - failures, wall=wall, lat=lat, failures=failures, client_cpu=client_cpu,
                             server_cpu=server_cpu, sent=len(bodies)))
            for i, p in problems[:3]:
                print(f"  failure #{i}: {p}")
        ceilings.append(rsa_ops_per_second(2, args.ceiling_seconds) / 3)
    finally:
        server.stop()
    for i, row in enumerate(rows):
        row["ratio"] = row["ok"] / row["wall"] / ((ceilings[i] + ceilings[i + 1]) / 2)
    table = []
    for c in levels:  # the rounds of one level together: ratio is the mean of the rounds' ratios
        runs = [r for r in rows if r["c"] == c]
        if not runs:
            continue
        wall = sum(r["wall"] for r in runs)
        lat = [x for r in runs for x in r["lat"]]
        table.append((c, sum(r["n"] for r in runs), sum(r["ok"] for r in runs) / wall, statistics.median(lat) * 1000,
                      pct(lat, 0.99) * 1000, sum(r["failures"] for r in runs),
                      statistics.mean(r["ratio"] for r in runs), sum(r["client_cpu"] for r in runs) / wall,
                      sum(r["server_cpu"] for r in runs) / sum(r["sent"] for r in runs) * 1000,
                      [r["ratio"] for r in runs]))

    dup = len(all_serials) - len(set(all_serials))
    inv_rows, inv_distinct = _inventory_count(db_url)
    print()
    print(f"{'conc':>4} | {'enrolments':>10} | {'enrol/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'failures':>8} | "
          f"{'ratio':>6} | {'client CPU':>10} | {'server CPU ms/enrol':>19} | ratio per round")
    for c, n, rate, p50, p99, failures, ratio, ccpu, scpu, per_round in table:
        print(f"{c:>4} | {n:>10,} | {rate:>8,.1f} | {p50:>7.2f} | {p99:>7.2f} | {failures:>8} | {ratio:>6.3f} | "
              f"{ccpu * 100:>9.0f}% | {scpu:>19.2f} | {' '.join(f'{x:.3f}' for x in per_round)}")
    print(f"ceiling (enrolments/s) measured {len(ceilings)} times: {', '.join(f'{x:,.0f}' for x in ceilings)}")
    print(f"duplicate serials: {dup}; inventory rows {inv_rows} "
          f"({inv_distinct} distinct serials) for {len(all_serials)} successful replies")
    last = table[-1]
    ok = last[5] == 0 and dup == 0 and failures_total == 0 and last[6] >= TARGET_RATIO \
        and inv_rows == inv_distinct == len(all_serials)
    print(f"target at concurrency {last[0]}: zero failures, zero duplicate serials, ratio >= {TARGET_RATIO:.2f}: "
          f"{'met' if ok else 'NOT met'} (ratio {last[6]:.3f})")
    # the figures above in one line for tools (bench/compare.py)
    print("RESULT " + json.dumps({
        "database": "postgresql" if args.pg else "sqlite", "workers": args.workers,
        "levels": [dict(zip(("conc", "enrolments", "enrol_per_s", "p50_ms", "p99_ms", "failures", "ratio", "client_cpu",
                             "server_cpu_ms_per_enrol", "ratio_per_round"), row)) for row in table],
        "ceilings": ceilings, "duplicate_serials": dup, "inventory_rows": inv_rows,
        "inventory_distinct_serials": inv_distinct, "successful_replies": len(all_serials), "target_met": ok}))
    if pg_name:
        pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    if args.keep:
        print(f"data directory kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
