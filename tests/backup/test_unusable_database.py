"""backup and restore on a database that cannot be used (not a database; a PostgreSQL server that does not
answer) end in one line naming it without its password, nothing left behind; they ended in the driver's traceback
(restore said it could not write the restored files)."""
from __future__ import annotations

import asyncio

from tests.server import free_port

from .support import cli, drop_pg_database, pg_database


def test_backup_of_a_file_that_is_not_a_database(tmp_path):
    data, not_a_database = tmp_path / "data", tmp_path / "not-a-database.db"
    cli("--data-dir", str(data), "init")
    not_a_database.write_bytes(b"not a database\n" * 1000)
    out = cli("--data-dir", str(data), "backup", str(tmp_path / "b"),
              env={"SCEP_SERVER_DATABASE__URL": f"sqlite:///{not_a_database}"}, code=1)
    (line,) = out.splitlines()
    assert line == f"Error: backup refused: cannot copy the database {not_a_database}: DatabaseError: file is not " \
                   "a database", line
    assert not (tmp_path / "b").exists()


async def test_backup_and_restore_on_a_postgresql_server_that_does_not_answer(tmp_path):
    url = await pg_database()
    data, backup = tmp_path / "data", tmp_path / "backup"
    try:
        await asyncio.to_thread(cli, "--data-dir", str(data), "init", env={"SCEP_SERVER_DATABASE__URL": url})
        await asyncio.to_thread(cli, "--data-dir", str(data), "backup", "--files-only", str(backup),
                                env={"SCEP_SERVER_DATABASE__URL": url})
    finally:
        await drop_pg_database(url)
    gone = {"SCEP_SERVER_DATABASE__URL": f"postgresql://scep:s3cret@127.0.0.1:{free_port()}/scep"}
    out = await asyncio.to_thread(cli, "--data-dir", str(data), "backup", "--files-only", str(tmp_path / "b2"),
                                  env=gone, code=1)
    (line,) = out.splitlines()
    assert line.startswith("Error: backup refused: cannot use the database postgresql://scep:***@127.0.0.1:"), line
    assert "ConnectionRefusedError" in line and not (tmp_path / "b2").exists()
    out = await asyncio.to_thread(cli, "restore", str(backup), "--data-dir", str(tmp_path / "restored"), env=gone,
                                  code=1)
    line = out.splitlines()[-1]  # after the log line of the refusal
    assert line.startswith("Error: restore refused: cannot use the database postgresql://scep:***@127.0.0.1:"), line
    assert "ConnectionRefusedError" in line and "s3cret" not in out and not (tmp_path / "restored").exists()
