"""systemd: the readiness notification (sd_notify READY=1 on $NOTIFY_SOCKET) and deploy/scep-server.service,
checked by `systemd-analyze verify` and its offline security review."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from scep_server.config import CREDENTIALS
from scep_server.serve import sd_notify
from tests.helpers import require_tool
from tests.server import _prepare_for_scepclient, free_port

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "scep-server.service"
INSTALLED = "/opt/scep-server/bin/scep-server"


def _listener(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(60)
    return s


def test_notify_sends_one_datagram_to_a_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    with _listener(path) as s:
        assert sd_notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path})
        assert s.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_reaches_an_abstract_socket(tmp_path):
    name = f"scep-test-{os.getpid()}-{time.monotonic_ns()}"
    with _listener("\0" + name) as s:
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096) == b"READY=1"


def test_without_a_socket_nothing_is_sent_and_a_dead_one_is_logged(tmp_path):
    assert not sd_notify("READY=1", {})
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})
    with capture_logs() as logs:
        assert not sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert [e["event"] for e in logs] == ["systemd.notify_failed"]


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_says_ready_once_it_answers(tmp_path, workers):
    data = tmp_path / "data"
    _prepare_for_scepclient(data, None)  # the CA exists: the start is quick
    port = free_port()
    path = str(tmp_path / "notify")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCEP_SERVER_")}
    env.update({"NOTIFY_SOCKET": path, "SCEP_SERVER_LOG__LEVEL": "warning", "PYTHONPATH": str(ROOT)})
    with _listener(path) as s:
        proc = subprocess.Popen([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data), "serve",
                                 "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            message = s.recv(4096).decode()
            # told ready: it answers now, without a retry
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
                assert resp.status == 200
            assert message.splitlines()[0] == "READY=1"
            assert f"STATUS=listening on 127.0.0.1:{port}" in message
            s.settimeout(2)
            with pytest.raises(TimeoutError):  # once
                s.recv(4096)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]


def _unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_the_unit_runs_the_server_as_a_notify_service_with_its_credentials():
    unit = _unit()
    assert unit["Type"] == ["notify"] and unit["ExecStart"] == [f"{INSTALLED} serve"]
    assert unit["ExecStartPre"] == [f"{INSTALLED} db upgrade"]
    assert unit["User"] and unit["User"] != ["root"] and unit["StateDirectory"] == ["scep-server"]
    assert "SCEP_SERVER_DATA_DIR=/var/lib/scep-server" in unit["Environment"]
    credentials = {v.split(":")[0].lstrip("-") for v in unit["LoadCredential"]}
    assert credentials == set(CREDENTIALS), "every credential the server reads, and only those"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": ""}.items():
        assert unit[key] == [value], key


def _installable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart naming this checkout's scep-server (verify checks the program exists)."""
    program = Path(sys.executable).with_name("scep-server")
    if not program.exists():
        pytest.fail(f"{program} is missing: install the package (pip install -e .)")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(program)))
    return copy


def test_systemd_analyze_verifies_the_unit(tmp_path):
    tool = require_tool("systemd-analyze")
    out = subprocess.run([tool, "verify", str(_installable_copy(tmp_path))], capture_output=True, text=True,
                         timeout=120)
    # an unknown or misspelt key is only a warning: any output fails the test
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stderr + out.stdout


def test_the_unit_is_hardened(tmp_path):
    tool = require_tool("systemd-analyze")
    out = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(_installable_copy(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert level, out.stdout + out.stderr
    assert float(level.group(1)) <= 2.0, out.stdout
