"""The listing commands on a database this process may only read: a SQLite database in a directory it cannot
write (SQLite needs the -wal and -shm files beside a WAL database even to read it), and a PostgreSQL role with
SELECT rights only. They list, or end in one line naming the database and why with exit code 1; never a
traceback."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from scep_server.cli import main
from tests.app.test_start_errors import _logging_as_it_was  # noqa: F401  (autouse fixture)
from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ROOT / "fixtures" / "otp" / "yubico-format.csv"

LISTINGS = [["audit", "list"], ["audit", "verify"], ["ca", "list"], ["ca", "list-external"], ["cert", "list"],
            ["cert", "show", "01"], ["challenge", "status", "dyn"], ["crl", "show"], ["device", "list"],
            ["device", "show", "dev-1"], ["enrolment", "list"], ["mdm", "list"], ["mdm", "show", "jamf"],
            ["otp-client", "list"], ["profile", "list"], ["profile", "show", "dyn"], ["token", "list"],
            ["yubikey", "report"]]

# each command in a fresh CliRunner, in one interpreter: how it ended
DRIVER = """
import json, sys
from click.testing import CliRunner
from scep_server.cli import main
ended = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(main, args)
    ended.append({"args": args, "code": r.exit_code, "output": r.output,
                  "exception": None if r.exception is None else type(r.exception).__name__})
print("ENDED " + json.dumps(ended))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCEP_SERVER_")}
    return {**env, "SCEP_SERVER_LOG__LEVEL": "warning", "SCEP_SERVER_CA__KEY_SIZE": "2048", **extra}


def _seed(data: Path, env: dict[str, str]) -> None:
    """An initialised data directory with a row or more in each listing."""
    runner = CliRunner()
    (data.parent / "jamf-secret").write_text("s3cret\n")
    for args in (["init", "--no-input"], ["device", "add", "dev-1"], ["profile", "add", "dyn", "--challenge", "dynamic"],
                 ["challenge", "new", "dyn"], ["token", "create", "--scope", "admin"], ["otp-client", "add"],
                 ["yubikey", "import", str(SECRETS)],
                 ["mdm", "configure", "jamf", "--url", "https://jamf.example.com", "--client-id", "c",
                  "--client-secret-file", str(data.parent / "jamf-secret")]):
        result = runner.invoke(main, ["--data-dir", str(data), *args], env=env)
        assert result.exit_code == 0, (args, result.output, result.exception)


def _as_reader(data: Path, commands: list[list[str]]) -> list[dict]:
    """The commands run by a process that cannot write where the permissions say so: root, which ignores them,
    runs them without the capabilities that let it."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = [require_tool("setpriv"), "--bounding-set=-dac_override,-dac_read_search,-fowner",
                  "--inh-caps=-all"]
    argv = json.dumps([["--data-dir", str(data), *args] for args in commands])
    out = subprocess.run([*prefix, sys.executable, "-c", DRIVER, argv], env={**_env(), "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ENDED " in out.stdout, out.stderr
    return json.loads(out.stdout.rpartition("ENDED ")[2])


def test_listing_commands_on_sqlite_in_a_directory_they_cannot_write(tmp_path):
    """A WAL database whose directory cannot be written cannot be read either: the listing commands ended in
    sqlite3's or SQLAlchemy's traceback ("attempt to write a readonly database")."""
    data = tmp_path / "data"
    _seed(data, _env())
    assert not (data / "scep.db-wal").exists()  # no connection left open: nothing to read the database through
    (data / "scep.db").chmod(0o444)
    data.chmod(0o555)
    try:
        ended = _as_reader(data, LISTINGS)
    finally:
        data.chmod(0o755)
        (data / "scep.db").chmod(0o644)
    for run in ended:
        assert run["code"] == 1 and run["exception"] == "SystemExit", run
        (line,) = run["output"].splitlines()
        assert "attempt to write a readonly database" in line, run
        if run["args"][2] != "yubikey":  # otp's own command group says "database error"
            assert line.startswith(f"Error: cannot use the database sqlite+aiosqlite:///{data / 'scep.db'}: "), run
            assert f"({data} is not writable: SQLite keeps the database's -wal and -shm files there" in line, run


def test_listing_commands_on_sqlite_work_with_a_read_only_file(tmp_path):
    """A database file that cannot be written, in a directory that can: the listings need no write."""
    data = tmp_path / "data"
    _seed(data, _env())
    (data / "scep.db").chmod(0o444)
    try:
        ended = _as_reader(data, LISTINGS)
    finally:
        (data / "scep.db").chmod(0o644)
    for run in ended:
        assert run["exception"] in (None, "SystemExit"), run
        assert run["code"] == (1 if run["args"][2:] in (["cert", "show", "01"], ["crl", "show"]) else 0), run


async def _pg(url: str, *statements: str) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 database=u.database, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def readonly_pg(pg_url, tmp_path):
    """A data directory on a PostgreSQL database of its own (seeded by its owner), and the URL of a role that may
    only SELECT from it."""
    name, role = f"scep_ro_{uuid.uuid4().hex[:10]}", f"scep_reader_{uuid.uuid4().hex[:10]}"
    admin = make_url(pg_url)
    asyncio.run(_pg(pg_url, f'CREATE DATABASE "{name}"', f'CREATE ROLE "{role}" LOGIN'))
    owner = admin.set(database=name).render_as_string(hide_password=False)
    try:
        data = tmp_path / "data"
        _seed(data, _env(SCEP_SERVER_DATABASE__URL=owner))
        asyncio.run(_pg(owner, f'GRANT USAGE ON SCHEMA public TO "{role}"',
                        f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
        yield data, admin.set(database=name, username=role, password=None).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'DROP ROLE IF EXISTS "{role}"'))


def test_listing_commands_on_postgresql_with_select_rights_only(readonly_pg):
    """The listings read only; a command that writes ends in one line (it ended in asyncpg's traceback)."""
    data, url = readonly_pg
    runner = CliRunner()
    env = _env(SCEP_SERVER_DATABASE__URL=url)
    for args in LISTINGS:
        result = runner.invoke(main, ["--data-dir", str(data), *args], env=env)
        expected = 1 if args in (["cert", "show", "01"], ["crl", "show"]) else 0
        assert result.exit_code == expected, (args, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        assert "Traceback" not in result.output and "permission denied" not in result.output, (args, result.output)
    for args in (["device", "add", "dev-2"], ["otp-client", "add"]):
        result = runner.invoke(main, ["--data-dir", str(data), *args], env=env)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
        (line,) = result.output.splitlines()
        assert line.startswith(f"Error: cannot use the database {url}: ProgrammingError: permission denied for "
                               "table "), line


def test_a_listing_on_a_select_only_role_with_the_audit_chain_on_logs_no_failure(readonly_pg):
    """With `[audit] chain` on, a command seals the events written since the last seal when it ends. A listing on a
    SELECT-only role cannot, and logged an error (`audit.seal.failed`, permission denied) after every listing; it
    now says at info that it did not seal (`audit.seal.skipped`), and the events wait for a process that may."""
    data, url = readonly_pg
    result = CliRunner().invoke(main, ["--data-dir", str(data), "device", "list"],
                                env=_env(SCEP_SERVER_DATABASE__URL=url, SCEP_SERVER_AUDIT__CHAIN="true"))
    assert result.exit_code == 0 and "dev-1" in result.output, (result.output, result.exception)
    assert "audit.seal.failed" not in result.output and "error" not in result.output, result.output
    verbose = CliRunner().invoke(main, ["--data-dir", str(data), "device", "list"],
                                 env=_env(SCEP_SERVER_DATABASE__URL=url, SCEP_SERVER_AUDIT__CHAIN="true",
                                          SCEP_SERVER_LOG__LEVEL="info"))
    assert "audit.seal.skipped" in verbose.output and "permission denied" in verbose.output, verbose.output


def test_commands_on_a_database_that_does_not_answer(tmp_path):
    """The driver's own connection errors (refused, a host name that does not resolve) ended in a traceback."""
    from tests.server import free_port

    data = tmp_path / "data"
    runner = CliRunner()
    assert runner.invoke(main, ["--data-dir", str(data), "init", "--no-input"], env=_env()).exit_code == 0
    for url in (f"postgresql://scep:s3cret@127.0.0.1:{free_port()}/scep",
                "postgresql://scep:s3cret@no-such-host.invalid:5432/scep"):
        for args in (["device", "list"], ["token", "list"], ["profile", "list"], ["otp-client", "list"],
                     ["device", "add", "dev-2"]):
            result = runner.invoke(main, ["--data-dir", str(data), *args], env=_env(SCEP_SERVER_DATABASE__URL=url))
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, result.exception)
            (line,) = result.output.splitlines()
            assert line.startswith("Error: cannot use the database postgresql://scep:***@"), line
            assert "s3cret" not in line


def test_commands_on_a_database_the_system_cannot_reach(tmp_path):
    """The system's own errors on the way to the database (no route to its host, no PostgreSQL socket in the
    `?host=` directory) ended in a traceback, or in "[Errno 2] No such file or directory" naming nothing."""
    import socket

    data = tmp_path / "data"
    runner = CliRunner()
    assert runner.invoke(main, ["--data-dir", str(data), "init", "--no-input"], env=_env()).exit_code == 0
    (tmp_path / "sockets").mkdir()
    real_connect = socket.socket.connect

    def no_route(sock, address):  # the kernel's answer for an address no route leads to
        if isinstance(address, tuple) and address[0] == "192.0.2.1":
            raise OSError(113, "No route to host")
        return real_connect(sock, address)

    for url, reason in ((f"postgresql://scep:s3cret@/scep?host={tmp_path}/sockets", "No such file or directory"),
                        ("postgresql://scep:s3cret@192.0.2.1:5432/scep", "No route to host")):
        for args in (["device", "list"], ["profile", "list"], ["device", "add", "dev-2"]):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(socket.socket, "connect", no_route)
                result = runner.invoke(main, ["--data-dir", str(data), *args],
                                       env=_env(SCEP_SERVER_DATABASE__URL=url))
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, result.exception)
            (line,) = result.output.splitlines()
            assert line.startswith("Error: cannot use the database postgresql://scep:***@"), line
            assert reason in line and "s3cret" not in line, line
