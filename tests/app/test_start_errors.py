"""`init` and `serve` on a data directory, database or CA they cannot use: one line naming what and why, exit
code 1, never a traceback; and nothing left that the next start would take for done."""
from __future__ import annotations

import errno
import shutil

import pytest
from click.testing import CliRunner

from scep_server import runtime
from scep_server.cli import main
from tests.factories import settings_for

INIT = ["init", "--no-input", "--key-size", "2048"]


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """`serve` run in this process configures logging (the root handler, its level): later tests of this process
    must not see its lines in what they capture."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("SCEP_CA_PASSPHRASE", "pw")
    monkeypatch.delenv("SCEP_SERVER_DATABASE__URL", raising=False)

    def invoke(*args: str, env: dict | None = None):
        result = CliRunner().invoke(main, list(args), env=env)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
        assert "Traceback" not in result.output
        (line,) = [line for line in result.output.splitlines() if line.startswith("Error: ")]  # `serve` logs too
        return line
    return invoke


def test_a_data_directory_that_cannot_be_made(tmp_path, cli):
    (tmp_path / "file").write_text("x")
    line = cli("--data-dir", str(tmp_path / "file" / "data"), *INIT)
    assert f"cannot create the data directory {tmp_path / 'file' / 'data'}: NotADirectoryError" in line


def test_a_file_that_is_not_a_database(tmp_path, cli):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scep.db").write_bytes(b"not a database" * 500)
    line = cli("--data-dir", str(tmp_path / "data"), *INIT)
    assert "cannot use the database sqlite+aiosqlite:///" in line and "file is not a database" in line
    assert not (tmp_path / "data" / "ca").exists()


def test_a_database_that_does_not_answer_is_named_without_its_password(tmp_path, cli):
    from tests.server import free_port

    url = f"postgresql://scep:s3cret@127.0.0.1:{free_port()}/scep"
    line = cli("--data-dir", str(tmp_path / "data"), *INIT, env={"SCEP_SERVER_DATABASE__URL": url})
    assert "cannot use the database postgresql://scep:***@127.0.0.1:" in line and "s3cret" not in line
    assert not (tmp_path / "data" / "ca").exists()


@pytest.mark.parametrize("command", [INIT, ["db", "upgrade"]])
def test_a_password_in_the_query_of_the_database_url_is_not_shown_either(tmp_path, cli, command):
    """libpq's `?password=` (which asyncpg takes as well) was named in clear: SQLAlchemy hides the user part's only."""
    from tests.server import free_port

    url = f"postgresql://scep@127.0.0.1:{free_port()}/scep?password=s3cret"
    line = cli("--data-dir", str(tmp_path / "data"), *command, env={"SCEP_SERVER_DATABASE__URL": url})
    assert "cannot use the database postgresql://scep@127.0.0.1:" in line and "password=***" in line
    assert "s3cret" not in line


def test_a_wrong_passphrase_or_a_key_of_another_ca(tmp_path, cli):
    data = tmp_path / "data"
    assert CliRunner().invoke(main, ["--data-dir", str(data), *INIT]).exit_code == 0
    line = cli("--data-dir", str(data), *INIT, env={"SCEP_CA_PASSPHRASE": "not-it"})
    assert f"cannot read the CA keys in {data / 'ca' / 'default'} (is $SCEP_CA_PASSPHRASE" in line
    other = tmp_path / "other"
    assert CliRunner().invoke(main, ["--data-dir", str(other), *INIT]).exit_code == 0
    shutil.copy(other / "ca" / "default" / "ca.key", data / "ca" / "default" / "ca.key")
    line = cli("--data-dir", str(data), "serve", "--listen", "127.0.0.1:0")
    assert "is not the key of ca.crt" in line


async def test_a_challenge_file_that_cannot_be_written_leaves_no_default_profile(tmp_path, db_url, monkeypatch):
    """No room left for default-challenge.txt: the profile was made all the same, its secret in no file, and the
    next start said "already initialised". Now no profile is made, and the next start makes it with its file."""
    from scep_server.ca import keys
    from scep_server.profiles import ProfileStore
    from trustkit.db import create_engine

    settings = settings_for(tmp_path / "data", db_url)
    real = keys.durable_write

    def full(path, data, **kwargs):
        if path.name.startswith("default-challenge"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kwargs)

    monkeypatch.setattr(keys, "durable_write", full)
    monkeypatch.setattr(keys, "_write_private", lambda path, data, **kw: full(path, data, mode=0o600, **kw))
    with pytest.raises(runtime.StartError, match="default-challenge.txt: OSError: No space left on device; the "
                                                 "default profile was not made"):
        await runtime.initialise(settings)
    engine = create_engine(settings.database_url())
    try:
        assert await ProfileStore(engine).list() == []
    finally:
        await engine.dispose()
    assert not [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith("default-challenge")]
    monkeypatch.undo()
    report = await runtime.initialise(settings)
    assert any("created static SCEP profile 'default'" in line for line in report)
    secret = (tmp_path / "data" / "default-challenge.txt").read_text().strip()
    engine = create_engine(settings.database_url())
    try:
        assert await ProfileStore(engine).static_secret_ok("default", secret)
    finally:
        await engine.dispose()


def test_an_address_in_use(tmp_path, cli):
    import socket

    data = tmp_path / "data"
    assert CliRunner().invoke(main, ["--data-dir", str(data), *INIT]).exit_code == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = cli("--data-dir", str(data), "serve", "--listen", f"127.0.0.1:{port}")
    assert line == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


async def test_the_first_start_names_the_database_without_its_password(tmp_path, pg_url):
    """The report `init` and the first `serve` print (to a terminal, a journal, a container log) showed the
    database URL as configured, its password included."""
    from sqlalchemy.engine import make_url

    from tests.conftest import _truncate_pg

    await _truncate_pg(pg_url)  # the session's database, as another test left it
    url = make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)  # trust: any password
    report = await runtime.initialise(settings_for(tmp_path / "data", url))
    assert report[0].startswith("database: postgresql") and ":***@" in report[0]
    assert not [line for line in report if "s3cret-pw" in line]


def test_db_upgrade_on_a_database_it_cannot_use(tmp_path, cli):
    """`db upgrade` (systemd's ExecStartPre) ended in the driver's traceback, the URL's password in it."""
    from tests.server import free_port

    url = f"postgresql://scep:s3cret@127.0.0.1:{free_port()}/scep"
    line = cli("--data-dir", str(tmp_path / "data"), "db", "upgrade", env={"SCEP_SERVER_DATABASE__URL": url})
    assert "cannot use the database postgresql://scep:***@127.0.0.1:" in line and "s3cret" not in line
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scep.db").write_bytes(b"not a database" * 500)
    line = cli("--data-dir", str(tmp_path / "data"), "db", "upgrade")
    assert "cannot use the database sqlite+aiosqlite:///" in line and "file is not a database" in line


@pytest.mark.parametrize("command", [INIT, ["db", "upgrade"], ["device", "list"], ["backup", "--files-only", "B"],
                                     ["backup", "B"]])
def test_a_password_holding_an_unencoded_at_sign_is_not_shown(tmp_path, cli, command):
    """SQLAlchemy reads a password up to its first @: the rest of it was taken for the host, and shown in the
    database's URL and pg_dump's --host, or for the port, which the ValueError of a traceback quoted."""
    from tests.server import free_port

    data = tmp_path / "data"
    assert CliRunner().invoke(main, ["--data-dir", str(data), *INIT]).exit_code == 0
    command = [str(tmp_path / "b") if arg == "B" else arg for arg in command]
    for url in ("postgresql://scep:pa@ss:w0rd-tail@127.0.0.1/scep",
                f"postgresql://scep:pa@ss-tail@127.0.0.1:{free_port()}/scep"):
        result = CliRunner().invoke(main, ["--data-dir", str(data), *command], env={"SCEP_SERVER_DATABASE__URL": url})
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (url, result.exception)
        assert "Error: " in result.output and "tail" not in result.output, result.output
