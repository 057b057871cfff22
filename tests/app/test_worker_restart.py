"""`serve --workers N` when a worker dies or cannot start: a worker that dies is restarted and serves again (a
restart closed the readiness pipe the supervisor had closed already, EBADF, so every restart failed and within
seconds the server stopped, exit code 0); a worker that cannot start stops the server at once with its error and
exit code 1 (it was restarted ten times, its error unsaid, and the server exited 0: a success to systemd's
Restart=on-failure)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from tests.app.test_reuse_port import ROOT, Served
from tests.server import _prepare_for_scepclient, child_pids, free_port


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_a_worker_that_dies_is_restarted_and_serves(tmp_path):
    served = Served(tmp_path, True)
    try:
        killed = served.workers[0]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            now = child_pids(served.proc.pid)
            if len(now) == 2 and killed not in now:
                time.sleep(2)  # the restarted worker stays up (a restart that failed died at once)
                if child_pids(served.proc.pid) == now:
                    break
            assert served.proc.poll() is None and time.monotonic() < deadline, "no worker came back"
            time.sleep(0.2)
        assert all(_healthy(served.port) for _ in range(8))  # both sockets accepted and answered
    finally:
        out = served.stop()  # exit code 0 on SIGTERM
    assert "Traceback" not in out and "workers keep exiting" not in out, out[-2000:]


def test_a_worker_that_cannot_start_stops_the_server_with_its_error(tmp_path):
    data = tmp_path / "data"
    _prepare_for_scepclient(data, None)
    (tmp_path / "empty.kek").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCEP_SERVER_")}
    env.update({"SCEP_SERVER_LOG__LEVEL": "warning", "PYTHONPATH": str(ROOT),
                "SCEP_SERVER_OTP__KEK_FILE": str(tmp_path / "empty.kek")})
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data), "serve", "--listen",
                           f"127.0.0.1:{free_port()}", "--workers", "2"], env=env, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-2000:]
    assert "Error: the OTP factor cannot start" in out and "a worker could not start; stopping" in out
    assert "Traceback" not in out and "workers keep exiting" not in out
    assert time.monotonic() - started < 60
