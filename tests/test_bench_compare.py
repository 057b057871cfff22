"""bench/compare.py: the figures read from a script's human output and from its RESULT line agree, the
verdicts, and the options kept for a script that does not know them all."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
sys.modules["bench_compare"] = compare
_spec.loader.exec_module(compare)

# trimmed outputs of real runs (the human part as the scripts print it, then their RESULT line)
SCEP = """\
python 3.11.7, 2 CPUs, database SQLite (WAL, synchronous FULL), 2 server workers
RSA-2048 private operations/s on two processes: 1,108 -> ceiling 369 enrolments/s
prepared 432 PKCSReq bodies in 8.5 s (not timed)

conc | enrolments |  enrol/s |  p50 ms |  p99 ms | failures |  ratio | client CPU | server CPU ms/enrol | ratio per round
  16 |        400 |     60.8 |  167.44 | 1433.18 |        0 |  0.186 |         4% |                4.56 | 0.186
ceiling (enrolments/s) measured 2 times: 369, 283
duplicate serials: 0; inventory rows 432 (432 distinct serials) for 432 successful replies
target at concurrency 16: zero failures, zero duplicate serials, ratio >= 0.30: NOT met (ratio 0.186)
""", {"database": "sqlite", "workers": 2, "levels": [
    {"conc": 16, "enrolments": 400, "enrol_per_s": 60.790494582338404, "p50_ms": 167.43648900001062,
     "p99_ms": 1433.1762299998445, "failures": 0, "ratio": 0.1863889868839716, "client_cpu": 0.035008099169264624,
     "server_cpu_ms_per_enrol": 4.560185185185185, "ratio_per_round": [0.1863889868839716]}],
    "ceilings": [369.3932610753798, 282.9038043105799], "duplicate_serials": 0, "inventory_rows": 432,
    "inventory_distinct_serials": 432, "successful_replies": 432, "target_met": False}

OTP = """\
== sqlite (scep-server serve --workers 2, wrk -t2 -c64, 3s, 500 keys)
durable single-row commits/s, one connection (SQLAlchemy):      166
verifications/s through /wsapi/2.0/verify (status=OK):          1321   non-OK answers: 0   OTP list wrapped: False
latency p50 40.4 ms, p99 368.9 ms
CPU per verification: servers 646 us, wrk 50 us (machine: 2 CPUs)
target >= 1000/s: met
import of 20000 keys: 1.50 s (target < 10 s: met); CPU: importing process 0.61 s
""", {"backend": "sqlite", "workers": 2, "duration": 3, "import_keys": 20000, "commit_rate": 165.67787909305693,
      "cpu_servers": 2.56, "cpu_database": 0.0, "cpu_wrk": 0.2, "verify_rate": 1320.8567542321496, "not_ok": 0,
      "exhausted": 0, "p50_ms": 40.404, "p99_ms": 368.856, "gen_seconds": 1.28, "import_seconds": 1.5031811070000458,
      "import_cpu": 0.613692532, "import_db_cpu": 0.0}

CRL = """\
CRL benchmark: RSA-2048 CA, sha256WithRSAEncryption; Python 3.11.7, 2 CPU(s); reasons mixed

  entries | build+sign s |   DER bytes | peak RSS MB | input MB | openssl ca s | ours/openssl | same | re-sign s | re-sign MB | checker parse s |  lookups/s | dict get/s | crypto miss ms
  100,000 |        0.155 |   4,622,391 |          82 |       55 |        0.893 |        0.174 |  yes |     0.053 |         95 |           0.158 |  1,403,568 |  2,129,384 |           16.7
  build+sign: entries -> signed DER (cold, no entry cache); peak RSS: whole process incl. the input list

Serving (wrk -t1 -c32 -d1s, best of 3 interleaved, server and wrk on the same host)
  entries |     bytes | bare handler req/s | /crl/{ca}.crl req/s |  ratio
      100 |     5,005 |             13,275 |               9,729 |   0.73
   20,000 |   923,660 |              1,222 |               1,102 |   0.90
  target: ratio >= 0.80 (MISSED)
""", {"build": [{"build_s": 0.15514547299994774, "der_bytes": 4622391, "input_rss_mb": 54.75390625,
                 "peak_rss_mb": 81.87890625, "resign_s": 0.05295249699997839, "resign_peak_rss_mb": 95.3203125,
                 "entries": 100000, "openssl_s": 0.8925681069999882, "openssl_bytes": 4622391, "same_entries": True,
                 "parse_s": 0.15844730300000265, "lookups_per_s": 1403568.2635258744,
                 "raw_lookups_per_s": 2129383.58, "crypto_lookup_ms": 16.7}],
      "serving": [{"entries": 100, "bytes": 5005, "bare": 13275.2, "ours": 9728.51},
                  {"entries": 20000, "bytes": 923660, "bare": 1222.1, "ours": 1101.63}]}

ATTESTATION = """\
store: sqlite, 2 workers, 32 connections, wrk 2 threads, 2 CPUs
signing 9010 request bodies (client side, before timing): 13.9 s
verifications answered 'managed': 3461 in 3.3 s = 1,035/s (wrk saw 1,123 requests/s; answers other than managed: 0)
reference, GET /healthz on the same server: 7,290 requests/s (verify/healthz = 0.14)
CPU per managed verification: servers 514 us; machine busy 100% of 2 CPUs during the run, load average 24.2 -> 23.8
reference, durable single-row commits/s on one connection: 221 (verify/commit = 4.7)
deactivate -> CRL served: median 1385 ms, max 1385 ms over 1 changes
reactivate -> CRL served: median 31 ms, max 31 ms over 1 changes
""", {"db": "sqlite", "workers": 2, "connections": 32, "managed": 3461, "seconds": 3.3453722860003836,
      "managed_per_s": 1034.5634817635969, "wrk_rps": 1123.39, "not_managed": 0, "healthz_rps": 7289.87,
      "server_cpu_us": 514.3022247905229, "postgresql_cpu_us": None, "machine_busy": 1.0,
      "commit_rate": 221.4419010634624, "deactivate_ms": [1384.6213030001309], "reactivate_ms": [30.959310999605805]}

SAMPLES = {"scep_enroll": SCEP, "otp": OTP, "crl": CRL, "attestation": ATTESTATION}


@pytest.mark.parametrize("bench", sorted(SAMPLES))
def test_human_output_and_result_line_give_the_same_figures(bench):
    text, result = SAMPLES[bench]
    variant = compare.VARIANTS[bench][0]
    from_text = variant.from_text(text)
    from_result = variant.from_result(result)
    assert from_text.keys() == from_result.keys()
    assert len(from_text) >= 5
    for name, value in from_result.items():
        assert from_text[name] == pytest.approx(value, rel=0.01, abs=0.006), name
        variant.kind(name)  # every figure has a direction
    # the RESULT line, when present, wins over the text around it
    assert variant.figures(text + "RESULT " + json.dumps(result) + "\n") == from_result


def test_output_without_figures_gives_none():
    for variants in compare.VARIANTS.values():
        for variant in variants:
            assert variant.figures("Traceback (most recent call last):\nRuntimeError: server exited\n") == {}


def test_scep_takes_the_highest_concurrency_level():
    row16 = next(line for line in SCEP[0].splitlines() if line.startswith("  16 |"))
    row4 = row16.replace("  16 |", "   4 |").replace("60.8", "99.9")
    text = SCEP[0].replace(row16, row4 + "\n" + row16)
    assert compare.scep_text(text)["enrol/s"] == 60.8


@pytest.mark.parametrize("kind, before, after, ok", [
    (compare.HIGHER, [100, 90, 110], [96, 95, 200], "yes"),  # medians 100 -> 96
    (compare.HIGHER, [100], [94], "NO"),
    (compare.LOWER, [10.0], [10.4], "yes"),
    (compare.LOWER, [10.0], [10.6], "NO"),
    (compare.COUNT, [0], [0], "yes"),
    (compare.COUNT, [0, 0], [0, 1], "NO"),
    (compare.REF, [300], [100], "-"),
])
def test_verdict(kind, before, after, ok):
    assert compare.verdict(kind, before, after, 0.05)[1] == ok


def test_report_medians_and_missing_figures():
    variant = compare.VARIANTS["otp"][0]
    b, a = compare.Tree("before", "x", "0" * 40, ROOT), compare.Tree("after", "y", None, ROOT)
    runs = [compare.Run(variant, b, 1, 1.0, {"verifications/s": 100.0, "import s": 2.0}),
            compare.Run(variant, a, 1, 1.0, {"verifications/s": 80.0}),
            compare.Run(variant, a, 2, 1.0, {"verifications/s": 120.0}),
            compare.Run(variant, b, 2, 1.0, {}, error="timed out")]
    rows, ok = compare.report(runs, [variant], 0.05)
    by_name = {r[0].split(" (")[0]: r for r in rows[1:]}
    assert by_name["otp[sqlite] verifications/s"][1:5] == ["100.0", "100.0", "1.000", "yes"]
    assert by_name["otp[sqlite] import s"][2:5] == ["n/a", "-", "n/a"]
    assert ok


def test_options_a_script_does_not_list_are_left_out(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "old.py").write_text(textwrap.dedent("""\
        import argparse
        ap = argparse.ArgumentParser()
        ap.add_argument("--pg", action="store_true")
        ap.add_argument("--rounds", type=int)
        ap.parse_args()
    """))
    tree = compare.Tree("before", "x", "0" * 40, tmp_path)
    kept, dropped = compare.supported_args(tree, "old.py", ["--pg", "--keys", "8", "--rounds", "1", "--quiet"])
    assert kept == ["--pg", "--rounds", "1"]
    assert dropped == ["--keys", "--quiet"]


def test_bad_arguments_are_refused():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "--before", "HEAD", "--bench", "nope"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown benchmark" in out.stderr


def test_an_unknown_revision_is_refused_before_anything_runs():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "--before", "no-such-rev-xyz"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "is not a commit" in out.stderr


def test_a_run_over_its_time_is_stopped_with_the_processes_it_started(tmp_path):
    (tmp_path / "bench").mkdir()
    pid_file = tmp_path / "child.pid"
    (tmp_path / "bench" / "slow.py").write_text(textwrap.dedent(f"""\
        import argparse, subprocess, time
        argparse.ArgumentParser().parse_args()
        child = subprocess.Popen(["sleep", "120"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """))
    variant = compare.Variant("slow", "", [], [], lambda res: {}, lambda out: {}, {})
    tree = compare.Tree("after", "x", "0" * 40, tmp_path)
    run = compare.run_variant(variant, tree, 1, True, timeout=3, log_dir=None)
    assert run.error == "timed out after 3 s" and run.figures == {}
    assert run.seconds < 30  # not held until the child ends on its own (it keeps the output pipes open)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # killed; its parent is gone, so init reaps it
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split(")")[1][:3]


def test_scep_enroll_reads_the_environments_it_compares(monkeypatch):
    """bench/scep_enroll.py --compare-env: set-ups of SCEP_SERVER_ variables, at least two, named once."""
    monkeypatch.setattr(sys, "path", [*sys.path, str(ROOT / "bench")])  # its helpers (measure.py), after ours
    spec = importlib.util.spec_from_file_location("bench_scep_enroll", ROOT / "bench" / "scep_enroll.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parse = module.parse_env_setups
    assert parse("kept:;placed:SCEP_SERVER_SERVER__CPU_AFFINITY=off") == {
        "kept": {}, "placed": {"SCEP_SERVER_SERVER__CPU_AFFINITY": "off"}}
    assert parse("a:SCEP_SERVER_X=1,SCEP_SERVER_Y=a=b; b:") == {"a": {"SCEP_SERVER_X": "1", "SCEP_SERVER_Y": "a=b"},
                                                             "b": {}}
    for bad in ("a:", "a:;a:", "a:PATH=/x;b:", "a;b:", ":;b:"):
        with pytest.raises(ValueError):
            parse(bad)
