"""The container image (Dockerfile) and the two-instance deployment (compose.yaml): their promises checked from
the files, the health check run against a real server, and the image built where a Docker daemon runs."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.server import free_port, run, start_app

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    starts = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    return steps[starts[-1]:]


def test_the_image_is_built_in_stages_on_a_slim_python():
    froms = [args for word, args in _instructions() if word == "FROM"]
    assert len(froms) >= 2, "a build stage and a run stage"
    assert all("-slim" in f for f in froms)
    assert any(word == "COPY" and args.startswith("--from=build") for word, args in _final_stage())


def test_every_package_is_copied_into_the_build():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {args.split()[0] for word, args in _instructions() if word == "COPY" and not args.startswith("--")}
    assert {p.rstrip("*") for p in packages} <= copied
    assert {"pyproject.toml"} <= copied


def test_the_run_stage_is_unprivileged_with_a_data_volume_and_a_health_check():
    final = _final_stage()
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(word == "VOLUME" and "/data" in args for word, args in final)
    env = " ".join(args for word, args in final if word == "ENV")
    assert "SCEP_SERVER_DATA_DIR=/data" in env and "SCEP_SERVER_SERVER__LISTEN=0.0.0.0:8080" in env
    assert "SCEP_SERVER_SERVER__BASE_URL" not in env  # the deployment's public URL, never a baked-in guess
    assert any(word == "EXPOSE" and args.split()[0] == "8080" for word, args in final)
    assert any(word == "HEALTHCHECK" and "/healthz" in args for word, args in final)
    assert ("ENTRYPOINT", '["scep-server"]') in final and ("CMD", '["serve"]') in final


def _healthcheck_argv() -> list[str]:
    args = next(args for word, args in _final_stage() if word == "HEALTHCHECK")
    return json.loads(args[args.index("CMD") + 3:].strip())


async def test_the_health_check_passes_against_a_server_and_fails_without_one(aiohttp_server, tmp_path):
    argv = _healthcheck_argv()
    assert argv[0] == "python"
    srv = await start_app(aiohttp_server, tmp_path, single_des_on_default=False)
    port = srv.url.rpartition(":")[2]
    env = {"PATH": "/usr/bin:/bin", "SCEP_SERVER_SERVER__LISTEN": f"0.0.0.0:{port}"}
    code, out, err = await run(sys.executable, *argv[1:], env=env, timeout=30)
    assert code == 0, (out, err)
    env["SCEP_SERVER_SERVER__LISTEN"] = f"0.0.0.0:{free_port()}"  # nothing listens there
    code, _, _ = await run(sys.executable, *argv[1:], env=env, timeout=30)
    assert code != 0


def test_compose_runs_two_instances_on_postgresql_after_one_init():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert "postgres" in services and services["postgres"]["image"].startswith("postgres:")
    init = services["init"]
    assert init["command"][:1] == ["init"] and "--no-input" in init["command"]
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    servers = {name: s for name, s in services.items() if s.get("command", [None])[0] == "serve"}
    assert len(servers) >= 2
    ports = set()
    for name, s in servers.items():
        assert s["depends_on"] == {"init": {"condition": "service_completed_successfully"}}, name
        assert s["image"] == init["image"] and s["volumes"] == init["volumes"] == ["data:/data"]
        env = s["environment"]
        assert env["SCEP_SERVER_SERVER__BASE_URL"] and "SCEP_SERVER_DATABASE__URL" not in env
        for key in ("SCEP_SERVER_DATABASE__URL_FILE", "SCEP_SERVER_CA__PASSPHRASE_FILE", "SCEP_SERVER_OTP__KEK_FILE"):
            secret = env[key].removeprefix("/run/secrets/")
            assert secret in s["secrets"] and secret in doc["secrets"], key
        ports |= {p.split(":")[0] for p in s["ports"]}
    assert len(ports) == len(servers)


def _preparation() -> str:
    """The shell commands compose.yaml's header gives for creating ./secrets."""
    return "\n".join(line[4:] for line in COMPOSE.read_text().splitlines() if line.startswith("#   "))


def _image_uid() -> int:
    return int(re.search(r"useradd [^\n]*--uid (\d+)", DOCKERFILE.read_text()).group(1))


def test_compose_secrets_are_readable_only_by_the_container_that_reads_them(tmp_path):
    """Compose bind-mounts file secrets with their host owner and mode: the recipe leaves none readable by other
    users of the host, and gives each to the uid of the container that reads it."""
    doc = yaml.safe_load(COMPOSE.read_text())
    script = _preparation()
    root = subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() == "0"
    if not root:  # chown needs root; the modes are still checked
        script = re.sub(r"(?m)^chown .*$", ":", script)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    readers = {}
    for name, service in doc["services"].items():
        uid = 999 if service.get("image", "").startswith("postgres:") else _image_uid()
        for secret in service.get("secrets", []):
            readers.setdefault(secret, set()).add(uid)
    assert (tmp_path / "secrets").stat().st_mode & 0o077 == 0
    for secret, spec in doc["secrets"].items():
        path = tmp_path / spec["file"]
        st = path.stat()
        assert path.read_text().strip(), secret
        assert st.st_mode & 0o077 == 0, (secret, oct(st.st_mode))
        assert len(readers[secret]) == 1, secret
        if root:
            assert st.st_uid == next(iter(readers[secret])), secret


def _docker_daemon() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
def test_the_image_builds_and_runs_as_configured():
    if not _docker_daemon():
        pytest.skip("no Docker daemon (`docker info` fails): the image is not built here")
    tag = "scep-server:ci"
    built = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stderr[-4000:]
    user = subprocess.run(["docker", "image", "inspect", "-f", "{{.Config.User}}", tag], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert user and not user.startswith(("root", "0"))
    shown = subprocess.run(["docker", "run", "--rm", "-e", "SCEP_SERVER_SERVER__BASE_URL=https://scep.example",
                            tag, "config", "show"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    config = tomllib.loads(shown.stdout)
    assert config["data_dir"] == "/data" and config["server"]["listen"] == "0.0.0.0:8080"
    assert config["server"]["base_url"] == "https://scep.example"
