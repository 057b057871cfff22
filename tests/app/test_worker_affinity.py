"""server.cpu_affinity: with as many workers as usable CPUs, each worker process is kept on a CPU of its own."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scep_server.serve import worker_cpus
from tests.server import _prepare_for_scepclient, child_pids, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_auto_pins_only_when_workers_match_the_usable_cpus():
    assert worker_cpus("auto", 2, {3, 1}) == [1, 3]  # slot 0 on the lowest
    assert worker_cpus("auto", 4, range(4)) == [0, 1, 2, 3]
    assert worker_cpus("auto", 2, {0, 1, 2, 3}) is None  # fewer workers than CPUs: the kernel balances them
    assert worker_cpus("auto", 3, {0, 1}) is None  # more workers than CPUs
    assert worker_cpus("auto", 1, {0}) is None  # one process: nothing to separate
    assert worker_cpus("off", 2, {0, 1}) is None


def test_auto_reads_the_cpus_this_process_may_use():
    assert worker_cpus("auto", len(os.sched_getaffinity(0))) in (None, sorted(os.sched_getaffinity(0)))
    assert worker_cpus("auto", len(os.sched_getaffinity(0)) + 1) is None


def _allowed(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_serve_keeps_each_worker_on_a_cpu_of_its_own(tmp_path, mode):
    usable = sorted(os.sched_getaffinity(0))
    assert len(usable) >= 2, "this test needs two CPUs"
    two = set(usable[:2])
    data = tmp_path / "data"
    _prepare_for_scepclient(data, None)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCEP_SERVER_")}
    # the supervisor says READY=1 once both workers serve: the masks are read from a server that is up
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(90)
    env.update({"SCEP_SERVER_LOG__LEVEL": "warning", "SCEP_SERVER_SERVER__CPU_AFFINITY": mode,
                "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(tmp_path / "notify")})
    # the server may use exactly two CPUs, and runs two workers
    proc = subprocess.Popen([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data), "serve",
                             "--listen", f"127.0.0.1:{port}", "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, two))
    try:
        with notify:
            assert notify.recv(4096).startswith(b"READY=1"), "the server did not start"
        workers = child_pids(proc.pid)
        assert len(workers) == 2
        masks = [_allowed(pid) for pid in workers]
        assert _allowed(proc.pid) == two  # the supervisor itself is not moved
        if mode == "auto":
            assert sorted(m for mask in masks for m in mask) == sorted(two)  # one CPU each, both used
            assert all(len(mask) == 1 for mask in masks)
        else:
            assert masks == [two, two]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert ("each worker kept on a CPU of its own" in out.decode()) == (mode == "auto")
