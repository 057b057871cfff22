"""`ca renew-ra` and `ca rollover prepare` write new keys and certificates into the CA directory, then record the
audit event. With a database that does not answer, they wrote the files (a new RA the servers pick up, a prepared
next CA) and only then ended in the database error: a change nobody audited. The database is asked first: the
command ends in its one line, and the CA directory is as it was."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from scep_server.cli import main
from tests.app.test_readonly_database import _env
from tests.server import free_port


def _files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize("args", [["ca", "renew-ra"], ["ca", "rollover", "prepare"], ["ca", "rollover", "activate"]],
                         ids=" ".join)
def test_a_ca_change_with_a_database_that_does_not_answer_writes_no_file(tmp_path, args):
    data = tmp_path / "data"
    runner = CliRunner()
    assert runner.invoke(main, ["--data-dir", str(data), "init", "--no-input"], env=_env()).exit_code == 0
    if args[-1] == "activate":
        prepared = runner.invoke(main, ["--data-dir", str(data), "ca", "rollover", "prepare"], env=_env())
        assert prepared.exit_code == 0, prepared.output
    ca_dir = data / "ca" / "default"
    before, before_top = _files(ca_dir), _files(data / "ca")
    dirs = sorted(p.name for p in (data / "ca").iterdir())
    url = f"postgresql://scep:s3cret@127.0.0.1:{free_port()}/scep"
    result = runner.invoke(main, ["--data-dir", str(data), *args], env=_env(SCEP_SERVER_DATABASE__URL=url))
    assert result.exit_code == 1, (result.output, result.exception)
    (line,) = result.output.splitlines()
    assert line.startswith("Error: cannot use the database postgresql://scep:***@"), line
    assert _files(ca_dir) == before
    assert _files(data / "ca") == before_top and sorted(p.name for p in (data / "ca").iterdir()) == dirs
