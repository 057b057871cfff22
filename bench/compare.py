"""Before/after comparison of the benchmarks, interleaved on the same machine.

    python bench/compare.py --before <git-rev> [--after <git-rev>] [--bench scep_enroll,otp,attestation,crl]
                            [--rounds 3] [--quick]

The machine is a shared 2-core VM whose load drifts from minute to minute, so the two versions are never
measured in separate sittings: for each round, each benchmark variant (e.g. `scep_enroll` on SQLite) runs at
the BEFORE commit and then at the AFTER one, the order alternating from round to round. Each version runs from
its own temporary `git worktree` (detached, under a temporary directory, removed at the end), with PYTHONPATH
set to that tree and this interpreter. Without `--after`, the AFTER version is the working tree of the
repository holding this script, uncommitted changes included (it is only read).

The key figures are read from each script's `RESULT {json}` line, or, for a script from before that line
existed, from its human output. The table gives each figure's median over the rounds at both versions, their
ratio, and whether the AFTER version is no worse: ratio >= 1 - tolerance for a rate, <= 1 + tolerance for a
time or a cost, no more failures than before for a count. Figures of the machine itself (a durable commit
rate, the RSA ceiling) are shown without a verdict.

Exit status: 0 if every figure is no worse, 1 if some figure is worse, 2 if a run failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKTREE = "WORKTREE"

HIGHER, LOWER, COUNT, REF = "higher", "lower", "count", "ref"  # rate, time/cost, failures, reference

Figures = dict[str, float]


# ---------------------------------------------------------------- reading the scripts' output

def num(text: str) -> float:
    return float(text.strip().replace(",", "").rstrip("%"))


def result_line(out: str) -> dict | None:
    """The script's `RESULT {json}` line, if it printed one (the last one)."""
    lines = [line for line in out.splitlines() if line.startswith("RESULT {")]
    return json.loads(lines[-1][len("RESULT "):]) if lines else None


def table(out: str, first: str) -> list[dict[str, str]]:
    """Rows of a `|`-separated table whose header's first column is `first`, as {column: text}."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[0] == first:
            rows = []
            for row in lines[i + 1:]:
                values = [c.strip() for c in row.split("|")]
                if len(values) < len(cells) or not values[0] or not values[0][0].isdigit():
                    break
                rows.append(dict(zip(cells, values)))
            return rows
    return []


def search(pattern: str, out: str) -> float | None:
    m = re.search(pattern, out, re.MULTILINE)
    return num(m.group(1)) if m else None


def put(figures: Figures, name: str, value: float | None) -> None:
    if value is not None:
        figures[name] = float(value)


# scep_enroll: the highest concurrency level of the run
SCEP_FIGURES = {"enrol/s": HIGHER, "ratio of RSA ceiling": HIGHER, "server CPU ms/enrol": LOWER, "p99 ms": LOWER,
                "failures": COUNT, "duplicate serials": COUNT, "ceiling enrol/s": REF}


def scep_result(res: dict) -> Figures:
    level = max(res["levels"], key=lambda x: x["conc"])
    return {"enrol/s": level["enrol_per_s"], "ratio of RSA ceiling": level["ratio"],
            "server CPU ms/enrol": level["server_cpu_ms_per_enrol"], "p99 ms": level["p99_ms"],
            "failures": level["failures"], "duplicate serials": res["duplicate_serials"],
            "ceiling enrol/s": statistics.mean(res["ceilings"])}


def scep_text(out: str) -> Figures:
    rows = table(out, "conc")
    if not rows:
        return {}
    row = max(rows, key=lambda r: num(r["conc"]))
    figures: Figures = {}
    for column, name in (("enrol/s", "enrol/s"), ("ratio", "ratio of RSA ceiling"),
                         ("server CPU ms/enrol", "server CPU ms/enrol"), ("p99 ms", "p99 ms"), ("failures", "failures")):
        if column in row:
            put(figures, name, num(row[column]))
    put(figures, "duplicate serials", search(r"^duplicate serials: (\d+)", out))
    m = re.search(r"^ceiling \(enrolments/s\) measured \d+ times: (.*)$", out, re.MULTILINE)
    if m:
        figures["ceiling enrol/s"] = statistics.mean(num(x) for x in re.findall(r"[\d,.]+", m.group(1)))
    return figures


# otp: one back end per run
OTP_FIGURES = {"verifications/s": HIGHER, "server CPU us/verification": LOWER,
               "p99 ms": LOWER, "import s": LOWER, "non-OK answers": COUNT, "commits/s (one connection)": REF}


def otp_result(res: dict) -> Figures:
    figures = {"verifications/s": res["verify_rate"],
               "server CPU us/verification": res["cpu_servers"] / (res["verify_rate"] * res["duration"]) * 1e6,
               "p99 ms": res["p99_ms"], "non-OK answers": res["not_ok"], "commits/s (one connection)": res["commit_rate"]}
    put(figures, "import s", res.get("import_seconds"))
    return figures


def otp_text(out: str) -> Figures:
    figures: Figures = {}
    put(figures, "verifications/s", search(r"^verifications/s through .*?:\s+([\d.]+)", out))
    put(figures, "non-OK answers", search(r"non-OK answers: (\d+)", out))
    put(figures, "commits/s (one connection)", search(r"one connection \(SQLAlchemy\):\s+([\d.]+)", out))
    put(figures, "server CPU us/verification", search(r"^CPU per verification: servers ([\d.]+) us", out))
    put(figures, "p99 ms", search(r"^latency p50 [\d.]+ ms, p99 ([\d.]+) ms", out))
    put(figures, "import s", search(r"^import of \d+ keys: ([\d.]+) s", out))
    return figures


# attestation
ATTESTATION_FIGURES = {"managed verifications/s": HIGHER, "verify/healthz": HIGHER,
                       "server CPU us/verification": LOWER, "answers other than managed": COUNT,
                       "commits/s (one connection)": REF}


def attestation_result(res: dict) -> Figures:
    return {"managed verifications/s": res["managed_per_s"], "verify/healthz": res["managed_per_s"] / res["healthz_rps"],
            "server CPU us/verification": res["server_cpu_us"], "answers other than managed": res["not_managed"],
            "commits/s (one connection)": res["commit_rate"]}


def attestation_text(out: str) -> Figures:
    figures: Figures = {}
    put(figures, "managed verifications/s", search(r"^verifications answered 'managed': \d+ in [\d.]+ s = ([\d,.]+)/s", out))
    put(figures, "answers other than managed", search(r"answers other than managed: (\d+)", out))
    put(figures, "verify/healthz", search(r"\(verify/healthz = ([\d.]+)\)", out))
    put(figures, "server CPU us/verification", search(r"^CPU per managed verification: servers ([\d,.]+) us", out))
    put(figures, "commits/s (one connection)", search(r"^reference, durable single-row commits/s on one connection: "
                                                      r"([\d,.]+)", out))
    return figures


# crl: per size built, and serving per CRL size
CRL_FIGURES = {"build+sign s": LOWER, "ours/openssl": LOWER, "peak RSS MB": LOWER, "re-sign s": LOWER,
               "checker parse s": LOWER, "lookups/s": HIGHER, "serving/bare": HIGHER, "serving req/s": HIGHER}


def _crl_size(n: float) -> str:
    n = int(n)
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))


def crl_result(res: dict) -> Figures:
    figures: Figures = {}
    for r in res["build"]:
        at = _crl_size(r["entries"])
        figures.update({f"build+sign s @{at}": r["build_s"], f"ours/openssl @{at}": r["build_s"] / r["openssl_s"],
                        f"peak RSS MB @{at}": r["peak_rss_mb"], f"re-sign s @{at}": r["resign_s"],
                        f"checker parse s @{at}": r["parse_s"], f"lookups/s @{at}": r["lookups_per_s"]})
    for r in res["serving"]:
        at = _crl_size(r["entries"])
        figures.update({f"serving/bare @{at}": r["ours"] / r["bare"], f"serving req/s @{at}": r["ours"]})
    return figures


def crl_text(out: str) -> Figures:
    figures: Figures = {}
    for r in table(out, "entries"):
        if "build+sign s" not in r:
            continue
        at = _crl_size(num(r["entries"]))
        for column in ("build+sign s", "ours/openssl", "peak RSS MB", "re-sign s", "checker parse s", "lookups/s"):
            if column in r:
                figures[f"{column} @{at}"] = num(r[column])
    serving = out[out.find("Serving ("):] if "Serving (" in out else ""
    for r in table(serving, "entries"):
        if "ratio" in r:
            at = _crl_size(num(r["entries"]))
            figures[f"serving/bare @{at}"] = num(r["ratio"])
            figures[f"serving req/s @{at}"] = num(r["/crl/{ca}.crl req/s"])
    return figures


# ---------------------------------------------------------------- what runs

@dataclass
class Variant:
    bench: str
    label: str
    quick: list[str]
    full: list[str]
    from_result: Callable[[dict], Figures]
    from_text: Callable[[str], Figures]
    kinds: dict[str, str]
    postgresql: bool = False

    @property
    def name(self) -> str:
        return f"{self.bench}[{self.label}]" if self.label else self.bench

    def kind(self, figure: str) -> str:
        return self.kinds[figure.split(" @")[0]]

    def figures(self, out: str) -> Figures:
        res = result_line(out)
        return self.from_result(res) if res is not None else self.from_text(out)


_SCEP_QUICK = ["--concurrency", "16", "--requests", "400", "--rounds", "1", "--keys", "8", "--ceiling-seconds", "2",
               "--workers", "2"]
_SCEP_FULL = ["--concurrency", "16", "--requests", "1500", "--rounds", "2", "--workers", "2"]
_OTP_QUICK = ["--duration", "3", "--workers", "2", "--keys", "500", "--commit-seconds", "1", "--import-keys", "20000"]
_OTP_FULL = ["--duration", "8", "--workers", "2", "--import-keys", "100000"]
_ATT_QUICK = ["--seconds", "3", "--nonces", "9000", "--lifecycle-rounds", "1", "--workers", "2"]
_ATT_FULL = ["--seconds", "5", "--nonces", "20000", "--lifecycle-rounds", "1", "--workers", "2"]

VARIANTS: dict[str, list[Variant]] = {
    "scep_enroll": [
        Variant("scep_enroll", "sqlite", _SCEP_QUICK, _SCEP_FULL, scep_result, scep_text, SCEP_FIGURES),
        Variant("scep_enroll", "postgresql", ["--pg", *_SCEP_QUICK], ["--pg", *_SCEP_FULL], scep_result, scep_text,
                SCEP_FIGURES, postgresql=True),
    ],
    "otp": [
        Variant("otp", "sqlite", ["--backend", "sqlite", *_OTP_QUICK], ["--backend", "sqlite", *_OTP_FULL],
                otp_result, otp_text, OTP_FIGURES),
        Variant("otp", "postgresql", ["--backend", "postgresql", *_OTP_QUICK], ["--backend", "postgresql", *_OTP_FULL],
                otp_result, otp_text, OTP_FIGURES, postgresql=True),
    ],
    "attestation": [
        Variant("attestation", "sqlite", ["--db", "sqlite", *_ATT_QUICK], ["--db", "sqlite", *_ATT_FULL],
                attestation_result, attestation_text, ATTESTATION_FIGURES),
        Variant("attestation", "postgresql", ["--db", "postgresql", *_ATT_QUICK], ["--db", "postgresql", *_ATT_FULL],
                attestation_result, attestation_text, ATTESTATION_FIGURES, postgresql=True),
    ],
    "crl": [
        Variant("crl", "", ["--sizes", "100000", "--wrk-seconds", "1"], ["--sizes", "100000,1000000", "--wrk-seconds", "2"],
                crl_result, crl_text, CRL_FIGURES),
    ],
}
QUICK_SKIPS = {"attestation[postgresql]"}  # --quick: attestation on SQLite only (the embedded default)
# databases the PostgreSQL benchmarks create for themselves (dropped by them; by us only after a failed run)
PG_PREFIXES = ("scep_bench_", "otp_bench_", "bench_attest_")


# ---------------------------------------------------------------- running

@dataclass
class Tree:
    label: str  # before / after
    rev: str  # as given
    sha: str | None  # None: the working tree
    path: Path
    options: dict[str, set[str]] = field(default_factory=dict)  # per script, the options its --help lists


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def add_worktree(label: str, rev: str, tmp: Path) -> Tree:
    sha = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    path = tmp / label
    git("worktree", "add", "--detach", "--quiet", str(path), sha)
    return Tree(label, rev, sha, path)


def remove_worktree(tree: Tree) -> None:
    if tree.sha is None:
        return
    try:
        git("worktree", "remove", "--force", str(tree.path))
    except subprocess.CalledProcessError as exc:
        print(f"warning: could not remove the worktree {tree.path}: {exc.stderr.strip()}", file=sys.stderr)


def env_for(tree: Tree) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(tree.path)}
    if tree.sha is None:  # the caller's working tree: nothing written into it
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def supported_args(tree: Tree, script: str, args: list[str]) -> tuple[list[str], list[str]]:
    """The arguments the script at this tree accepts (read from its --help), and the options dropped."""
    if script not in tree.options:
        out = subprocess.run([sys.executable, str(tree.path / "bench" / script), "--help"], cwd=tree.path,
                             env=env_for(tree), capture_output=True, text=True, timeout=120).stdout
        tree.options[script] = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", out))
    known = tree.options[script]
    kept, dropped = [], []
    i = 0
    while i < len(args):
        opt = args[i]
        takes_value = i + 1 < len(args) and not args[i + 1].startswith("--")
        chunk = args[i:i + 2] if takes_value else args[i:i + 1]
        if opt in known:
            kept += chunk
        else:
            dropped.append(opt)
        i += len(chunk)
    return kept, dropped


async def _pg(sql: str | None) -> set[str]:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        if sql:
            await conn.execute(sql)
        return {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


def pg_databases() -> set[str]:
    try:
        return asyncio.run(_pg(None))
    except Exception as exc:  # PostgreSQL down: the benchmark itself will say so
        print(f"warning: cannot list PostgreSQL databases: {exc}", file=sys.stderr)
        return set()


def drop_leftovers(before: set[str]) -> list[str]:
    """Databases a failed run created and left behind (by the benchmarks' own name prefixes)."""
    left = sorted(d for d in pg_databases() - before if d.startswith(PG_PREFIXES))
    for name in left:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return left


@dataclass
class Run:
    variant: Variant
    tree: Tree
    round: int
    seconds: float
    figures: Figures
    error: str | None = None


def stop_group(proc: subprocess.Popen) -> None:
    """End a run's session: the script and the servers it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(15)
            return
        except subprocess.TimeoutExpired:
            continue


def run_variant(variant: Variant, tree: Tree, rnd: int, quick: bool, timeout: float, log_dir: Path | None) -> Run:
    script = f"{variant.bench}.py"
    args, dropped = supported_args(tree, script, variant.quick if quick else variant.full)
    if dropped:
        print(f"    ({tree.label}: bench/{script} has no {', '.join(dropped)}; left out)", flush=True)
    databases = pg_databases() if variant.postgresql else set()
    cmd = [sys.executable, str(tree.path / "bench" / script), *args]
    started = time.perf_counter()
    # a session of its own, so that a timeout ends the servers the script started too
    proc = subprocess.Popen(cmd, cwd=tree.path, env=env_for(tree), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    error = None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        out, err = proc.communicate()
        error = f"timed out after {timeout:.0f} s"
    except BaseException:  # interrupted: nothing of the run may outlive its worktree
        stop_group(proc)
        raise
    seconds = time.perf_counter() - started
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{variant.name}-{tree.label}-{rnd}.log").write_text(
            f"$ {' '.join(cmd)}\n# exit {proc.returncode}, {seconds:.1f} s\n{out}\n--- stderr\n{err}")
    try:
        figures = variant.figures(out)
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        figures, error = {}, error or f"output not understood: {exc!r}"
    if not figures and error is None:
        tail = " | ".join((err or out).strip().splitlines()[-3:])
        error = f"exit {proc.returncode}, no figures: {tail[:300]}"
    if variant.postgresql and (error or proc.returncode not in (0, 1)):
        left = drop_leftovers(databases)
        if left:
            print(f"    dropped the databases the run left: {', '.join(left)}", flush=True)
    return Run(variant, tree, rnd, seconds, figures, error)


# ---------------------------------------------------------------- the comparison

def verdict(kind: str, before: list[float], after: list[float], tolerance: float) -> tuple[float | None, str]:
    b, a = statistics.median(before), statistics.median(after)
    ratio = a / b if b else None
    if kind == REF:
        return ratio, "-"
    if kind == COUNT:
        return ratio, "yes" if max(after) <= max(before) else "NO"
    if ratio is None:
        return None, "yes" if a <= b else "NO"
    ok = ratio >= 1 - tolerance if kind == HIGHER else ratio <= 1 + tolerance
    return ratio, "yes" if ok else "NO"


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def report(runs: list[Run], variants: list[Variant], tolerance: float) -> tuple[list[list[str]], bool]:
    rows = [["figure", "before median", "after median", "after/before", "no worse", "runs"]]
    all_ok = True
    for variant in variants:
        mine = [r for r in runs if r.variant is variant and not r.error]
        names: list[str] = []
        for r in mine:
            names += [n for n in r.figures if n not in names]
        order = list(variant.kinds)
        names.sort(key=lambda n: order.index(n.split(" @")[0]))  # stable: sizes stay in the order measured
        for name in names:
            before = [r.figures[name] for r in mine if r.tree.label == "before" and name in r.figures]
            after = [r.figures[name] for r in mine if r.tree.label == "after" and name in r.figures]
            label = f"{variant.name} {name}"
            if not before or not after:
                rows.append([label, fmt(statistics.median(before)) if before else "n/a",
                             fmt(statistics.median(after)) if after else "n/a", "-", "n/a", f"{len(before)}/{len(after)}"])
                continue
            kind = variant.kind(name)
            ratio, ok = verdict(kind, before, after, tolerance)
            all_ok &= ok != "NO"
            arrow = {HIGHER: " (higher is better)", LOWER: " (lower is better)", COUNT: "", REF: " (machine)"}[kind]
            rows.append([label + arrow, fmt(statistics.median(before)), fmt(statistics.median(after)),
                         "-" if ratio is None else f"{ratio:.3f}", ok, f"{len(before)}/{len(after)}"])
    return rows, all_ok


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("-+-".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision measured as BEFORE")
    ap.add_argument("--after", default=WORKTREE,
                    help=f"git revision measured as AFTER (default {WORKTREE}: this repository's working tree)")
    ap.add_argument("--bench", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the shortest runs that still say something")
    ap.add_argument("--tolerance", type=float, default=0.05, help="noise allowed in a ratio (default 0.05)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run (default 300, 900 without --quick)")
    ap.add_argument("--log-dir", type=Path, help="keep every run's output here")
    opts = ap.parse_args(argv)
    wanted = [b.strip() for b in opts.bench.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in VARIANTS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if opts.rounds < 1:
        ap.error("--rounds must be at least 1")
    variants = [v for b in wanted for v in VARIANTS[b] if not (opts.quick and v.name in QUICK_SKIPS)]
    timeout = opts.timeout or (300.0 if opts.quick else 900.0)
    for rev in (opts.before, opts.after):
        if rev != WORKTREE and subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=REPO,
                                              capture_output=True).returncode:
            ap.error(f"{rev!r} is not a commit of {REPO}")

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    trees: list[Tree] = []
    runs: list[Run] = []
    try:
        before = add_worktree("before", opts.before, tmp)
        trees.append(before)
        if opts.after == WORKTREE:
            after = Tree("after", "working tree", None, REPO)
        else:
            after = add_worktree("after", opts.after, tmp)
            trees.append(after)
        dirty = " (with uncommitted changes)" if after.sha is None and git("status", "--porcelain") else ""
        print(f"before: {opts.before} = {before.sha[:10]}; after: "
              + (f"{opts.after} = {after.sha[:10]}" if after.sha else f"working tree of {REPO}{dirty}"))
        print(f"{len(variants)} variant(s) x 2 versions x {opts.rounds} round(s), {'quick' if opts.quick else 'full'} "
              f"runs; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        for rnd in range(1, opts.rounds + 1):
            for i, variant in enumerate(variants):
                order = (before, after) if (rnd + i) % 2 else (after, before)
                for tree in order:
                    run = run_variant(variant, tree, rnd, opts.quick, timeout, opts.log_dir)
                    runs.append(run)
                    state = run.error or f"{len(run.figures)} figures"
                    print(f"  round {rnd}: {variant.name} at {tree.label}: {run.seconds:.0f} s, {state} "
                          f"(total {time.perf_counter() - started:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted: the table covers the runs made so far", file=sys.stderr)
    finally:
        for tree in trees:
            remove_worktree(tree)
        shutil.rmtree(tmp, ignore_errors=True)

    rows, all_ok = report(runs, variants, opts.tolerance)
    print()
    print_table(rows)
    failed = [r for r in runs if r.error]
    for r in failed:
        print(f"FAILED: {r.variant.name} at {r.tree.label}, round {r.round}: {r.error}")
    print(f"no worse means: after/before >= {1 - opts.tolerance:.2f} for a rate, <= {1 + opts.tolerance:.2f} for a "
          f"time or cost, at most as many failures as before; medians over the rounds")
    print(f"total {time.perf_counter() - started:.0f} s, load average now {os.getloadavg()[0]:.1f}")
    return 2 if failed else 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
