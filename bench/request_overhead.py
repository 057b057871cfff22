"""What observability adds to one request, measured inside a serving worker: server CPU per request of one-worker
`scep-server serve` instances that differ only in their observability settings, under wrk on a cheap route.

    PYTHONPATH=. .venv/bin/python bench/request_overhead.py                 # off, metrics, access, both; 4 rounds
    PYTHONPATH=. .venv/bin/python bench/request_overhead.py --modes off,access --rounds 6

Each instance has a data directory of its own (embedded SQLite) and one worker; each round runs `--seconds` of wrk
(one thread, `--connections`) against each instance in turn, the order reversed every other round, and reads the
instance's CPU time (supervisor and worker, from /proc) before and after. GetCACaps is the default route: it
touches no database and signs nothing, so the observability's share of it is as large as it gets. Printed: each
turn's rate and CPU per request, then per mode the mean and its difference to "off" in microseconds.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scep_enroll  # noqa: E402  (bench/scep_enroll.py: the server under test)
from measure import cpu_seconds, server_pids  # noqa: E402

MODES = {  # mode -> (metrics, access log)
    "off": (False, False),
    "metrics": (True, False),
    "access": (False, True),
    "both": (True, True),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, among {', '.join(MODES)}")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=4, help="seconds of wrk per turn")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--path", default="/scep/default?operation=GetCACaps")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: choose among {', '.join(MODES)}")
    if not shutil.which("wrk"):
        sys.exit("wrk is required (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="request-overhead-"))
    servers = {}
    try:
        for mode in modes:
            metrics, access = MODES[mode]
            env = {"SCEP_SERVER_METRICS__ENABLED": str(metrics).lower(), "SCEP_SERVER_LOG__ACCESS": str(access).lower()}
            servers[mode] = scep_enroll.Server(tmp / f"data-{mode}", None, 1, tmp / f"server-{mode}.log",
                                               env_extra=env, name=f"the {mode} server")
        per_request: dict[str, list[float]] = {m: [] for m in modes}
        print("round | mode    |  requests/s | CPU us/request")
        for r in range(args.rounds):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                server = servers[mode]
                pids = server_pids(server.proc)
                cpu0 = cpu_seconds(pids)
                out = subprocess.run(["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}",
                                      server.url + args.path], capture_output=True, text=True, check=True).stdout
                cpu = cpu_seconds(pids) - cpu0
                done = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
                per_request[mode].append(cpu / done * 1e6)
                print(f"{r:5d} | {mode:<7} | {done / args.seconds:11.0f} | {per_request[mode][-1]:14.1f}", flush=True)
        base = sum(per_request["off"]) / len(per_request["off"]) if "off" in per_request else None
        for mode in modes:
            mean = sum(per_request[mode]) / len(per_request[mode])
            extra = f"   {mean - base:+.1f} us vs off ({100 * (mean / base - 1):+.1f} %)" if base else ""
            print(f"{mode:<8} {mean:7.1f} us/request{extra}")
    finally:
        for server in servers.values():
            server.proc.terminate()
            server.proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
