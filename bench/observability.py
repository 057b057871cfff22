"""What observability costs: SCEP enrolments/s and OTP verifications/s with metrics and the access log on, and off.

    .venv/bin/python bench/observability.py                 # SQLite, 3 interleaved rounds
    .venv/bin/python bench/observability.py --pg --rounds 4 # PostgreSQL at 127.0.0.1:5432 (a fresh database)

Two `scep-server serve --workers N` instances of one deployment (one data directory, one database) run side by
side: "on" with `[metrics] enabled = true`, the access log (`[log] access = true`, when this version of the
server has that setting) and a scraper reading `/metrics` every `--scrape-interval` seconds during its turns;
"off" with `[metrics] enabled = false` and no access log. Both log at info (the production default).

With `--anchor` (the default) a third instance of the deployment, observability off, starts before the two
and runs throughout without being measured: what the instance started first does more than the others (on a
shared PostgreSQL database it was the slower one, whichever it was, by more than the effect) falls on it, so
both measured instances start in the same position. `--no-anchor` runs the two alone. `--observe metrics` or
`--observe access` turns on only one of the two in the "on" instance (the scraper runs with the metrics), to
split the cost.

Each round measures, in an order that alternates between rounds (on then off, then off then on):
- SCEP: `--enrolments` PKCSReq enrolments at concurrency `--concurrency`, the load and its bodies as in
  bench/scep_enroll.py (built before timing, sent from a process of their own, every reply checked after);
- OTP: `--duration` seconds of wrk against /wsapi/2.0/verify with fresh, signed OTPs, as in bench/otp.py
  (each turn has keys of its own, so no OTP is ever replayed).

It prints each turn's rate and the server's CPU per operation (its supervisor and workers, from /proc; the
enrolment figure includes the turn's warm-up requests, the OTP figure counts every answer), the means per mode
and the ratios on/off per workload; the target is a cost below 5 % (throughput ratio >= 0.95). On a machine
shared with other work the CPU per operation is the steadier of the two figures. The machine's load (`uptime`) is printed before and after: other work on it
shows up as a spread between rounds of one mode.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import multiprocessing as mp
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(BENCH))

import otp  # noqa: E402,F401  (the package, before bench/otp.py is loaded under another name)

from measure import PG_ADMIN, cpu_seconds, free_port, pg_admin, server_pids  # noqa: E402  (bench/measure.py)
import scep_enroll  # noqa: E402  (bench/scep_enroll.py: the enrolment load)


def _load_otp_bench():
    spec = importlib.util.spec_from_file_location("otp_bench", BENCH / "otp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


otp_bench = _load_otp_bench()

TARGET = 0.95
OBSERVE = ("metrics", "access")  # what the "on" instance turns on (`--observe`)


def access_log_setting() -> bool:
    from scep_server.config import LogSettings

    return "access" in LogSettings.model_fields


class Server(scep_enroll.Server):
    """One `scep-server serve` instance with the observability of `mode`."""

    def __init__(self, mode: str, data_dir: Path, db_url: str | None, workers: int, log_path: Path, *,
                 observe: frozenset[str] = frozenset(OBSERVE)):
        self.mode = mode
        on = observe if mode == "on" else frozenset()
        env = {"SCEP_SERVER_METRICS__ENABLED": "true" if "metrics" in on else "false"}
        if access_log_setting():
            env["SCEP_SERVER_LOG__ACCESS"] = "true" if "access" in on else "false"
        super().__init__(data_dir, db_url, workers, log_path, env_extra=env, name=f"the {mode} server")
        self.pids = server_pids(self.proc)

    def cpu(self) -> float:
        """CPU seconds used so far by the supervisor and its workers."""
        return cpu_seconds(self.pids)


class Scraper:
    """Reads /metrics every `interval` seconds while running (the "on" turns), as Prometheus would."""

    def __init__(self, url: str, interval: float):
        self.url, self.interval = url + "/metrics", interval
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                resp.read()
            self.count += 1

    def __enter__(self) -> "Scraper":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def enrol_turn(ctx, server: Server, bodies, keys, key_of, ra_der: bytes, concurrency: int, warmup: int,
               tmp: Path, tag: str) -> tuple[float, float]:
    """Enrolments/s of one turn and the server's CPU seconds per enrolment (warm-up included; every reply
    checked afterwards)."""
    bodies_path, result_path = tmp / f"bodies-{tag}.pkl", tmp / f"result-{tag}.pkl"
    bodies_path.write_bytes(pickle.dumps(bodies))
    cpu0 = server.cpu()
    proc = ctx.Process(target=scep_enroll._client, args=(server.url + "/scep/default?operation=PKIOperation",
                                                         str(bodies_path), concurrency, warmup, str(result_path)))
    proc.start()
    proc.join()
    cpu = server.cpu() - cpu0
    out = pickle.loads(result_path.read_bytes())
    results, wall = out["results"], out["wall"]
    jobs: dict[int, list] = {}
    for i, r in enumerate(results):
        jobs.setdefault(key_of[i], []).append((i, r[0], r[2]))
    with ctx.Pool(2) as pool:
        checked = [x for chunk in pool.map(scep_enroll._check, [(keys[k], items, ra_der) for k, items in jobs.items()])
                   for x in chunk]
    problems = [p for _, _, p in checked if p is not None]
    if problems:
        raise SystemExit(f"{len(problems)} enrolments failed in turn {tag}, e.g. {problems[0]}")
    return (len(bodies) - warmup) / wall, cpu / len(bodies)


def otp_turn(server: Server, paths_dir: Path, args) -> tuple[float, int, float]:
    """OTP verifications/s (status=OK) of one wrk turn, the non-OK answers, and the server's CPU seconds per
    answer."""
    script = paths_dir / "verify.lua"
    script.write_text(otp_bench.WRK_SCRIPT)
    cpu0 = server.cpu()
    out = subprocess.run(
        [shutil.which("wrk") or "wrk", "-t", str(args.threads), "-c", str(args.connections), "-d",
         f"{args.duration}s", "--timeout", "10s", "-s", str(script), server.url, "--", str(paths_dir)],
        capture_output=True, text=True, check=True).stdout
    cpu = server.cpu() - cpu0
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    fields = dict(kv.split("=") for kv in line.split()[1:])
    if int(fields["exhausted"]):
        raise SystemExit("the OTP list wrapped (replays): raise --max-rate")
    answered = int(fields["ok"]) + int(fields["other"])
    return int(fields["ok"]) / (int(fields["duration_us"]) / 1e6), int(fields["other"]), cpu / max(1, answered)


async def import_otp_keys(data_dir: Path, db_url: str | None, count: int):
    from scep_server.config import load_settings
    from scep_server.runtime import open_runtime

    overrides = {"data_dir": str(data_dir), "ca": {"key_size": 2048}, "log": {"level": "warning"}}
    if db_url:
        overrides["database"] = {"url": db_url}
    settings = load_settings(None, **overrides)
    keys, data = otp_bench.key_lines(count, 30_000_000)
    async with open_runtime(settings) as rt:
        res = await rt.otp.import_secrets(data)
        assert res.ok and res.imported == count, res.errors[:3]
        info, key_b64 = await rt.otp.add_client("observability bench")
    return keys, info.id, base64.b64decode(key_b64)


def uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pg", action="store_true", help="PostgreSQL instead of the embedded SQLite")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--enrolments", type=int, default=300, help="timed enrolments per turn")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--keys", type=int, default=16, help="distinct SCEP client keys")
    ap.add_argument("--duration", type=int, default=8, help="seconds of wrk per OTP turn")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--otp-keys", type=int, default=200, help="YubiKeys per OTP turn")
    ap.add_argument("--max-rate", type=int, default=6000, help="OTPs generated per second of an OTP turn")
    ap.add_argument("--aa", action="store_true", help="A/A check: both instances without observability (what "
                    "the instances differ by when nothing differs)")
    ap.add_argument("--start-order", choices=("on,off", "off,on"), default="on,off",
                    help="which instance starts first")
    ap.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=True,
                    help="start a third instance of the deployment first (observability off, not measured, left "
                    "running): whatever the instance started first does more falls on it, not on one of the two "
                    "measured ones")
    ap.add_argument("--observe", default=",".join(OBSERVE),
                    help="what the \"on\" instance turns on, comma-separated: metrics (and the scraper), access "
                    "(the access log); both by default, one of them to split the cost")
    ap.add_argument("--scrape-interval", type=float, default=5.0, help="seconds between scrapes (Prometheus: 15-60)")
    args = ap.parse_args()
    observe = frozenset(x for x in args.observe.split(",") if x)
    if not observe <= set(OBSERVE):
        ap.error(f"--observe: choose among {', '.join(OBSERVE)}")
    if not shutil.which("wrk"):
        sys.exit("wrk is required (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="observability-bench-"))
    db_url = pg_name = None
    if args.pg:
        pg_name = f"obs_bench_{uuid.uuid4().hex[:10]}"
        pg_admin(f'CREATE DATABASE "{pg_name}"')
        db_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + pg_name
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, database "
          f"{'PostgreSQL' if args.pg else 'SQLite'}, {args.workers} workers per server"
          f"{', a third instance started first' if args.anchor else ''}; access log setting "
          f"{'present' if access_log_setting() else 'absent (metrics only)'}; load average before {uptime()}")
    data_dir = tmp / "data"
    servers: dict[str, Server] = {}
    rates: dict[str, dict[str, list[float]]] = {"enrol": {"on": [], "off": []}, "otp": {"on": [], "off": []}}
    cpus: dict[str, dict[str, list[float]]] = {"enrol": {"on": [], "off": []}, "otp": {"on": [], "off": []}}
    scrapes = 0
    try:
        if args.anchor:
            servers["anchor"] = Server("anchor", data_dir, db_url, args.workers, tmp / "server-anchor.log",
                                       observe=frozenset())
        for mode in args.start_order.split(","):  # the first instance may differ (A/A runs show it on PostgreSQL)
            servers[mode] = Server(mode, data_dir, db_url, args.workers, tmp / f"server-{mode}.log",
                                   observe=frozenset() if args.aa else observe)
        turns = [(r, mode) for r in range(args.rounds) for mode in (("on", "off") if r % 2 == 0 else ("off", "on"))]
        # everything a turn sends is made before the timing starts
        from scep_server.scep import client

        ra_der = client.certs_in_order(servers["on"].get("/scep/default?operation=GetCACert"))[0]
        challenge = (data_dir / "default-challenge.txt").read_text().strip()
        ctx = mp.get_context("spawn")
        warmup = max(2 * args.concurrency, 8)
        t0 = time.perf_counter()
        with ctx.Pool(2) as pool:
            keys = scep_enroll.make_keys(args.keys, pool)
            prepared = [scep_enroll.prepare(warmup + args.enrolments, keys, ra_der, challenge, pool) for _ in turns]
        otp_keys, client_id, api_key = asyncio.run(import_otp_keys(data_dir, db_url, args.otp_keys * len(turns)))
        otp_dirs = []
        for i, _ in enumerate(turns):
            d = tmp / f"otp-{i}"
            d.mkdir()
            otp_bench.write_paths(otp_keys[i * args.otp_keys:(i + 1) * args.otp_keys], client_id, api_key,
                                  args.max_rate * args.duration, args.threads, d)
            otp_dirs.append(d)
        print(f"prepared {len(turns)} turns in {time.perf_counter() - t0:.1f} s (not timed)")

        print(f"{'round':>5} | {'mode':>4} | {'enrol/s':>8} | {'CPU ms/enrol':>12} | {'OTP verify/s':>12} | "
              f"{'CPU us/OTP':>10} | non-OK OTP")
        for i, (r, mode) in enumerate(turns):
            server = servers[mode]
            bodies, keys_, key_of = prepared[i]
            scrape = mode == "on" and not args.aa and "metrics" in observe
            scraper = Scraper(server.url, args.scrape_interval) if scrape else None
            if scraper:
                scraper.__enter__()
            try:
                enrol_rate, enrol_cpu = enrol_turn(ctx, server, bodies, keys_, key_of, ra_der, args.concurrency,
                                                   warmup, tmp, f"{i}")
                otp_rate, not_ok, otp_cpu = otp_turn(server, otp_dirs[i], args)
            finally:
                if scraper:
                    scraper.__exit__()
                    scrapes += scraper.count
            rates["enrol"][mode].append(enrol_rate)
            rates["otp"][mode].append(otp_rate)
            cpus["enrol"][mode].append(enrol_cpu)
            cpus["otp"][mode].append(otp_cpu)
            print(f"{r:>5} | {mode:>4} | {enrol_rate:>8.1f} | {enrol_cpu * 1e3:>12.2f} | {otp_rate:>12.0f} | "
                  f"{otp_cpu * 1e6:>10.0f} | {not_ok}")
            sys.stdout.flush()
    finally:
        for server in servers.values():
            server.stop()
        if pg_name:
            pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    summary = {}
    print()
    for workload, label in (("enrol", "SCEP enrolments/s"), ("otp", "OTP verifications/s")):
        on, off = mean(rates[workload]["on"]), mean(rates[workload]["off"])
        summary[workload] = {"on": on, "off": off, "ratio": on / off, "rounds_on": rates[workload]["on"],
                             "rounds_off": rates[workload]["off"]}
        cpu_on, cpu_off = mean(cpus[workload]["on"]), mean(cpus[workload]["off"])
        summary[workload].update(cpu_on=cpu_on, cpu_off=cpu_off, cpu_ratio=cpu_on / cpu_off)
        print(f"{label:<22} on {on:9.1f}   off {off:9.1f}   ratio on/off {on / off:.3f}   "
              f"(cost {100 * (1 - on / off):+.1f} %);  server CPU per operation on/off {cpu_on / cpu_off:.3f}")
    ok = all(s["ratio"] >= TARGET for s in summary.values())
    print(f"scrapes of /metrics during the on turns: {scrapes}; load average after {uptime()}")
    print(f"target: cost < {100 * (1 - TARGET):.0f} % (ratio >= {TARGET}): {'met' if ok else 'NOT met'}")
    print("RESULT " + json.dumps({"database": "postgresql" if args.pg else "sqlite", "workers": args.workers,
                                  "aa": args.aa, "start_order": args.start_order, "anchor": args.anchor,
                                  "rounds": args.rounds, "access_log": access_log_setting(),
                                  "observe": sorted(observe), **summary,
                                  "target_met": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
