"""Command-line start-up and run times: wall time of `scep-server` subprocesses against their targets.

A temporary data directory (embedded SQLite, the default store) is initialised first (`init`), one
certificate is recorded in its inventory, then each command runs N times as a separate process, the way
an operator runs it. Printed: best and median wall time of the N runs, the median CPU time (user + system)
of the process, the target, and whether the median wall time meets it. The CPU time shows what a command
costs when the machine is loaded by something else (wall time then mostly measures the wait for a CPU).

    .venv/bin/python bench/cli.py                 # 7 runs per command
    .venv/bin/python bench/cli.py --runs 15 --keep
    .venv/bin/python bench/cli.py --before HEAD~3 # the same commands at that commit too, runs interleaved

With `--before REV`, the tree of that commit (`git archive`, in the temporary directory) runs each command too,
alternating with this tree run by run on the same data directory, and both are printed: on this shared
machine two sittings minutes apart differ more than most changes do.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, arguments, target seconds); `{serial}` is a certificate of the inventory (a fresh one per run). The
# targets: under 0.3 s for --help, 0.5 s for a command that only reads, 1 s for one that changes state (a
# durable write, an audit event)
COMMANDS: list[tuple[str, list[str], float]] = [
    ("--help", ["--help"], 0.3),
    ("profile list", ["profile", "list"], 0.5),
    ("cert list", ["cert", "list"], 0.5),
    ("yubikey report", ["yubikey", "report"], 0.5),
    ("token create", ["token", "create", "--scope", "admin"], 1.0),
    ("cert revoke", ["cert", "revoke", "{serial}"], 1.0),
]


async def _record_certificates(data_dir: Path, count: int) -> list[str]:
    """Issue `count` certificates with the deployment's CA and record them, as enrolments would."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from cryptography.hazmat.primitives import serialization

    from scep_server.ca.authority import random_serial
    from scep_server.ca.inventory import certificate_row, public_key_sha256
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from scep_server.config import load_settings
    from scep_server.runtime import load_cas
    from scep_server.store.tables import certificates
    from trustkit.clock import utcnow
    from trustkit.db import create_engine, writer

    settings = load_settings(None, data_dir=str(data_dir))
    [ca] = load_cas(settings).values()
    engine = create_engine(settings.database_url())
    serials = []
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        for i in range(count):
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{i}")]))
                   .sign(key, hashes.SHA256()))
            now = utcnow()
            cert = ca.issue(csr, IssuancePolicy(CertificateTemplate()), serial=random_serial(), now=now)
            row = certificate_row(cert, cert.public_bytes(serialization.Encoding.DER), ca.name, "default",
                                  f"bench-{i}", public_key_sha256(cert.public_key()), now)
            async with writer(engine).begin() as conn:
                await conn.execute(certificates.insert().values(row))
            serials.append(row["serial"])
    finally:
        await engine.dispose()
    return serials


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(env: dict, data_dir: Path, args: list[str], tree: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `scep-server` process run from `tree`."""
    cpu = _cpu()
    started = time.perf_counter()
    # run from the tree: `python -m` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), *args],
                         env={**env, "PYTHONPATH": str(tree)}, cwd=tree, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"`scep-server {' '.join(args)}` failed ({out.returncode}):\n{out.stderr}")
    return elapsed, _cpu() - cpu


def _figures(runs: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(best wall, median wall, median CPU) of some runs."""
    walls = [wall for wall, _ in runs]
    return min(walls), statistics.median(walls), statistics.median(c for _, c in runs)


def _export(rev: str, into: Path) -> Path:
    """The tree of commit `rev` of this repository, written under `into` (no git worktree is made)."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True, check=True)
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(into, filter="data")
    # compiled now, as an installed tree is: the first run must not pay for writing __pycache__
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into)], check=True, stdout=subprocess.DEVNULL)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--before", metavar="REV", help="also run the commands at this commit, interleaved")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    data_dir = work / "data"
    before = _export(args.before, work / "before") if args.before else None
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCEP_SERVER_LOG__LEVEL": "warning",
           "SCEP_SERVER_CA__KEY_SIZE": "3072"}
    env.pop("SCEP_SERVER_CONFIG", None)
    try:
        _run(env, data_dir, ["init"])
        serials = asyncio.run(_record_certificates(data_dir, args.runs * (2 if before else 1)))
        print(f"scep-server commands, {args.runs} runs each, embedded SQLite, data directory {data_dir}")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        header = f"{'command':<16} {'best':>8} {'median':>8} {'cpu':>8} {'target':>8}  verdict"
        if before is not None:
            print(f"before = {args.before}; each command runs at before and at this tree in turn")
            header += f"  | {'before':>8} {'median':>8} {'cpu':>8}"
        print(header)
        failed = 0
        for label, argv, target in COMMANDS:
            runs, previous = [], []
            for i in range(args.runs):
                def once(tree: Path, n: int) -> tuple[float, float]:
                    return _run(env, data_dir, [a.replace("{serial}", serials[n]) for a in argv], tree)

                if before is None:
                    runs.append(once(ROOT, i))
                elif i % 2:  # the order alternates from run to run
                    runs.append(once(ROOT, 2 * i))
                    previous.append(once(before, 2 * i + 1))
                else:
                    previous.append(once(before, 2 * i + 1))
                    runs.append(once(ROOT, 2 * i))
            best, median, cpu = _figures(runs)
            ok = median <= target
            failed += not ok
            line = f"{label:<16} {best:>7.3f}s {median:>7.3f}s {cpu:>7.3f}s {target:>7.2f}s  {'ok' if ok else 'OVER':<7}"
            if before is not None:
                b_best, b_median, b_cpu = _figures(previous)
                line += f"  | {b_best:>7.3f}s {b_median:>7.3f}s {b_cpu:>7.3f}s"
            print(line)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
