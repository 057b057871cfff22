"""server.reuse_port: with several workers, each listens on a socket of its own on the same port, and new
connections are spread across the workers, not all taken by the one that woke first."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.server import _prepare_for_scepclient, child_pids, free_port

ROOT = Path(__file__).resolve().parents[2]
LISTEN, ESTABLISHED = "0A", "01"


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp(port: int, state: str) -> set[int]:
    """Inodes of this host's IPv4 TCP sockets on local `port` in `state`."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            found.add(int(fields[9]))
    return found


class Served:
    def __init__(self, tmp_path: Path, reuse_port: bool):
        data = tmp_path / "data"
        _prepare_for_scepclient(data, None)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCEP_SERVER_")}
        env.update({"SCEP_SERVER_LOG__LEVEL": "warning", "PYTHONPATH": str(ROOT),
                    "SCEP_SERVER_SERVER__REUSE_PORT": "true" if reuse_port else "false"})
        self.proc = subprocess.Popen([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data), "serve",
                                      "--listen", f"127.0.0.1:{self.port}", "--workers", "2"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    pass
                if len(child_pids(self.proc.pid)) == 2:
                    break
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        time.sleep(0.5)  # both workers serving (each says so before its first request)
        self.workers = child_pids(self.proc.pid)

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, out.decode()[-2000:]
        return out.decode()


@pytest.mark.parametrize("reuse_port", [True, False])
def test_each_worker_listens_on_a_socket_of_its_own(tmp_path, reuse_port):
    served = Served(tmp_path, reuse_port)
    try:
        listening = _tcp(served.port, LISTEN)
        per_worker = [_socket_inodes(pid) & listening for pid in served.workers]
        supervisor = _socket_inodes(served.proc.pid) & listening
    finally:
        out = served.stop()
    assert all(len(inodes) == 1 for inodes in per_worker)
    if reuse_port:
        assert len(listening) == 2 and per_worker[0] != per_worker[1]
        assert supervisor == listening  # kept open: a restarted worker finds its queued connections
        assert "each worker listens on a socket of its own" in out
    else:
        assert len(listening) == 1 and per_worker[0] == per_worker[1] == supervisor


def test_connections_opened_at_once_are_spread_across_the_workers(tmp_path):
    """32 connections opened together, as a proxy's keep-alive pool does: with one shared socket the first
    worker awake accepted them all; each socket of its own takes its share (binomial: fewer than 4 of 32 on one
    worker happens about once in 400,000 runs)."""
    served = Served(tmp_path, True)
    try:
        with ExitStack() as stack:
            clients = [stack.enter_context(socket.create_connection(("127.0.0.1", served.port), timeout=10))
                       for _ in range(32)]
            for c in clients:  # one request each: every connection accepted and served by a worker
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            for c in clients:
                assert c.recv(64).startswith(b"HTTP/1.1 200")
            established = _tcp(served.port, ESTABLISHED)
            held = [len(_socket_inodes(pid) & established) for pid in served.workers]
    finally:
        served.stop()
    assert sum(held) == 32 and min(held) >= 4, held
