"""Progress bars of long commands: drawn on stderr when it is a terminal (a pseudo-terminal here), and nothing
at all when stderr is a pipe; the command's own output on stdout is the same either way."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.otp.conftest import make_key, secrets_file

ROOT = Path(__file__).resolve().parents[2]
KEYS = 12_000  # enough for intermediate steps of every stage (the parser reports every 5,000 lines)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCEP_SERVER_")}
    return {**env, "PYTHONPATH": str(ROOT), "SCEP_SERVER_LOG__LEVEL": "warning", "SCEP_SERVER_CA__KEY_SIZE": "2048",
            "COLUMNS": "100", "TERM": "xterm"}


def run_cli(data_dir: Path, *args: str, stderr_tty: bool, timeout: float = 240) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `scep-server --data-dir DIR ARGS`, stderr on a pseudo-terminal or a pipe."""
    cmd = [sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), *args]
    if not stderr_tty:
        out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
        return out.returncode, out.stdout, out.stderr
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(cmd, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """An initialised data directory whose OTP key-encryption key exists (its creation is announced on stderr)."""
    data = tmp_path_factory.mktemp("progress") / "data"
    code, _, err = run_cli(data, "init", stderr_tty=False)
    assert code == 0, err
    first = data.parent / "first.csv"
    first.write_bytes(secrets_file([make_key(10_000_000)]))
    code, _, err = run_cli(data, "yubikey", "import", str(first), stderr_tty=False)
    assert code == 0 and "key-encryption key" in err, err
    return data


@pytest.fixture(scope="module")
def key_files(tmp_path_factory) -> list[Path]:
    """Two secrets files of KEYS keys each, with distinct serials and public IDs."""
    folder = tmp_path_factory.mktemp("keys")
    paths = []
    for n, first in enumerate((20_000_000, 30_000_000)):
        path = folder / f"keys-{n}.csv"
        path.write_bytes(secrets_file([make_key(first + i) for i in range(KEYS)]))
        paths.append(path)
    return paths


def test_yubikey_import_draws_its_stages_on_a_terminal(data_dir, key_files):
    code, out, err = run_cli(data_dir, "yubikey", "import", str(key_files[0]), stderr_tty=True)
    assert code == 0, err
    assert out.startswith(f"imported {KEYS} keys")
    for label in ("reading lines", "sealing keys", "writing keys"):
        assert f"{label}" in err, err
        assert f"{KEYS}/{KEYS}" in err and "100%" in err
    assert "5000/12000" in err  # an intermediate step, not only the start and the end
    assert err.index("reading lines") < err.index("sealing keys") < err.index("writing keys")


def test_yubikey_import_draws_nothing_when_stderr_is_not_a_terminal(data_dir, key_files):
    code, out, err = run_cli(data_dir, "yubikey", "import", str(key_files[1]), stderr_tty=False)
    assert code == 0, err
    assert out.startswith(f"imported {KEYS} keys")
    assert err == ""  # no bar, no label, no carriage return


def test_a_refused_import_ends_its_bar_and_says_why_on_a_terminal(data_dir, tmp_path):
    keys = tmp_path / "again.csv"
    keys.write_bytes(secrets_file([make_key(40_000_000 + i) for i in range(6000)]))
    assert run_cli(data_dir, "yubikey", "import", str(keys), stderr_tty=False)[0] == 0
    code, out, err = run_cli(data_dir, "yubikey", "import", str(keys), stderr_tty=True)
    assert code == 1 and out == ""
    assert "reading lines" in err and "sealing keys" not in err  # nothing sealed or written
    assert "already in the inventory" in err and "nothing was imported" in err


def test_crl_publish_draws_its_steps_on_a_terminal_only(data_dir):
    code, out, err = run_cli(data_dir, "crl", "publish", stderr_tty=True)
    assert code == 0, err
    assert "number: " in out and "entries: " in out
    for label in ("reading entries", "building, signing", "recording"):
        assert label in err, err
    assert err.index("reading entries") < err.index("building, signing") < err.index("recording")
    code, out, err = run_cli(data_dir, "crl", "publish", stderr_tty=False)
    assert code == 0 and "number: " in out and err == ""
