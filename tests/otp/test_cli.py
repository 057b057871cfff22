"""`scep-server yubikey ...` and `scep-server otp-client ...` (click's CliRunner on the application's
`main`), on both databases, in an initialised data directory."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from scep_server.cli import main
from scep_server.runtime import initialise, open_runtime
from tests.factories import settings_for
from tests.otp.conftest import make_key, secrets_file

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "otp"


class Cli:
    """`scep-server --data-dir DIR ...` with the database given by the environment, as an operator runs it."""

    def __init__(self, data_dir: Path, db_url: str) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self.settings = settings_for(data_dir, db_url)
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None):
        return self.runner.invoke(main, ["--data-dir", str(self.data_dir), *args], input=input,
                                  env={"SCEP_SERVER_DATABASE__URL": self.db_url, "SCEP_SERVER_CONFIG": None})

    def run(self, op):
        """Run `op(service)` on the OTP service of a runtime over the same data directory and database."""
        async def go():
            async with open_runtime(self.settings) as rt:
                return await op(rt.otp)
        return asyncio.run(go())


@pytest.fixture(scope="session")
def ca_template(tmp_path_factory) -> Path:
    """A data directory's CA material, made once per test process (key generation is the slow part)."""
    data_dir = tmp_path_factory.mktemp("otp-cli-template") / "data"
    asyncio.run(initialise(settings_for(data_dir, f"sqlite+aiosqlite:///{data_dir.parent / 'template.db'}")))
    return data_dir / "ca"


@pytest.fixture
def cli(db_url, tmp_path, ca_template) -> Cli:
    c = Cli(tmp_path / "data", db_url)
    shutil.copytree(ca_template, c.data_dir / "ca")
    asyncio.run(initialise(c.settings))  # registers the CA and the default profile in this test's database
    return c


def test_first_command_creates_the_kek(cli):
    kek = cli.data_dir / "otp-kek.key"
    assert not kek.exists()  # `init` does not need it
    r = cli("otp-client", "list")
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600
    assert "created the OTP key-encryption key" in r.stderr and str(kek) in r.stderr
    before = kek.read_bytes()
    r = cli("otp-client", "list")
    assert r.exit_code == 0 and "key-encryption key" not in r.stderr and kek.read_bytes() == before


def test_a_lost_kek_is_not_silently_replaced(cli):
    assert cli("yubikey", "import", "-", input=secrets_file([make_key(5)]).decode()).exit_code == 0
    (cli.data_dir / "otp-kek.key").unlink()
    r = cli("yubikey", "report")
    assert r.exit_code == 1 and "is missing" in r.stderr and "restore the file" in r.stderr
    assert not (cli.data_dir / "otp-kek.key").exists() and "Traceback" not in r.output


def test_kek_from_the_environment(cli, monkeypatch):
    monkeypatch.setenv("SCEP_SERVER_OTP__KEK_ENV", "TEST_OTP_KEK")
    monkeypatch.delenv("TEST_OTP_KEK", raising=False)
    r = cli("otp-client", "list")
    assert r.exit_code == 1 and "TEST_OTP_KEK" in r.stderr and "is not set" in r.stderr
    assert "Traceback" not in r.output
    monkeypatch.setenv("TEST_OTP_KEK", "ab" * 32)
    assert cli("otp-client", "add", "--name", "env").exit_code == 0
    assert not (cli.data_dir / "otp-kek.key").exists()


def test_needs_an_initialised_data_directory(tmp_path, db_url):
    r = Cli(tmp_path / "empty", db_url)("yubikey", "report")
    assert r.exit_code == 1 and "scep-server init" in r.stderr


def test_import_dry_run_and_rejection(cli):
    path = str(FIXTURES / "yubico-format.csv")
    r = cli("yubikey", "import", "--dry-run", path)
    assert r.exit_code == 0 and "dry run: 3 keys would be imported (format: yubico)" in r.stdout
    r = cli("yubikey", "import", path)
    assert r.exit_code == 0 and "imported 3 keys" in r.stdout
    r = cli("yubikey", "import", path)
    assert r.exit_code == 1
    assert "error: line 1: serial 12345678 is already in the inventory" in r.stderr
    assert "6 problems" in r.stderr and "nothing was imported" in r.stderr
    r = cli("yubikey", "import", str(FIXTURES / "bad-line-in-middle.csv"))
    assert r.exit_code == 1 and "error: line 3: AES key must be 32 hex characters, got 31" in r.stderr
    r = cli("yubikey", "import", str(FIXTURES / "traditional-log.csv"))
    assert r.exit_code == 1 and "Yubico format" in r.stderr
    r = cli("yubikey", "import", str(FIXTURES / "mixed-configurations.csv"))
    assert r.exit_code == 0 and "skipped: line 2: OATH-HOTP" in r.stderr


def test_import_from_stdin_and_usage_errors(cli):
    r = cli("yubikey", "import", "-", input=secrets_file([make_key(1)]).decode())
    assert r.exit_code == 0 and "imported 1 keys" in r.stdout
    assert cli("yubikey", "import", "/nonexistent/file.csv").exit_code == 2
    assert cli("yubikey", "import").exit_code == 2
    assert cli("yubikey", "frobnicate").exit_code == 2


def test_report_formats_and_filters(cli):
    keys = [make_key(10), make_key(11), make_key(12)]
    assert cli("yubikey", "import", "-", input=secrets_file(keys).decode()).exit_code == 0
    cli.run(lambda s: s.verify_signin("quinn", keys[1].otp()))
    table = cli("yubikey", "report")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["SERIAL", "PUBLIC_ID", "STATUS", "USER"]
    assert lines[-1] == "3 keys" and "quinn" in lines[2]
    rows = list(csv.DictReader(io.StringIO(cli("yubikey", "report", "--format", "csv").stdout)))
    assert [(r["serial"], r["status"], r["user"]) for r in rows] == [("10", "UNASSIGNED", ""), ("11", "ACTIVE", "quinn"),
                                                                     ("12", "UNASSIGNED", "")]
    data = json.loads(cli("yubikey", "report", "--format", "json", "--status", "active").stdout)
    assert data["count"] == 1 and data["keys"][0]["history"][1]["event"] == "otp.key.enrolled"
    assert json.loads(cli("yubikey", "report", "--format", "json", "--user", "quinn").stdout)["count"] == 1
    assert json.loads(cli("yubikey", "report", "--format", "json", "--serial", "12").stdout)["count"] == 1
    assert json.loads(cli("yubikey", "report", "--format", "json",
                          "--imported-after", "2999-01-01").stdout)["count"] == 0
    assert cli("yubikey", "report", "--serial", "x").exit_code == 2
    assert cli("yubikey", "report", "--status", "LOST").exit_code == 2
    assert cli("yubikey", "report", "--enrolled-before", "soon").exit_code == 2
    assert cli("yubikey", "report", "--format", "xml").exit_code == 2


def test_revoke_delete(cli):
    keys = [make_key(20), make_key(21)]
    cli("yubikey", "import", "-", input=secrets_file(keys).decode())
    cli.run(lambda s: s.verify_signin("rita", keys[0].otp()))
    r = cli("yubikey", "delete", "20")
    assert r.exit_code == 1 and "ACTIVE for user 'rita'" in r.stderr and "revoke it first" in r.stderr
    r = cli("yubikey", "revoke", "20")
    assert r.exit_code == 0 and "revoked YubiKey 20" in r.stdout and "rita" in r.stdout
    assert cli("yubikey", "revoke", "20").exit_code == 1
    r = cli("yubikey", "revoke", "404")
    assert r.exit_code == 1 and "no YubiKey with serial 404" in r.stderr
    r = cli("yubikey", "delete", "20")
    assert r.exit_code == 0 and "stays in the report" in r.stdout
    r = cli("yubikey", "delete", "21")
    assert r.exit_code == 0 and "deleted unassigned YubiKey 21" in r.stdout
    assert cli("yubikey", "revoke", "0").exit_code == 2
    rows = json.loads(cli("yubikey", "report", "--format", "json").stdout)["keys"]
    assert [(k["serial"], k["status"], k["deleted"], k["history"][-1]["actor"].startswith("cli")) for k in rows] == [
        ("20", "REVOKED", True, True)]


def test_delete_factor_needs_confirmation(cli):
    keys = [make_key(30), make_key(31)]
    cli("yubikey", "import", "-", input=secrets_file(keys).decode())
    cli.run(lambda s: s.verify_signin("sam", keys[0].otp()))
    r = cli("yubikey", "delete-factor", input="n\n")
    assert r.exit_code == 1 and "cannot be undone" in r.stderr and "nothing was deleted" in r.stderr
    assert len(json.loads(cli("yubikey", "report", "--format", "json").stdout)["keys"]) == 2
    r = cli("yubikey", "delete-factor", input="")  # no answer at all: the default is no
    assert r.exit_code == 1
    r = cli("yubikey", "delete-factor", input="y\n")
    assert r.exit_code == 0 and "1 never-used unassigned keys removed, 1 used, enrolled or revoked keys retired" in r.stdout
    assert cli("yubikey", "delete-factor", "--yes").exit_code == 0


def test_otp_clients(cli):
    r = cli("otp-client", "add", "--name", "vpn gateway")
    assert r.exit_code == 0
    out = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert out["id"] == "1" and len(out["key"]) == 28
    listing = cli("otp-client", "list")
    assert listing.exit_code == 0 and "vpn gateway" in listing.stdout and out["key"] not in listing.stdout
    assert json.loads(cli("otp-client", "list", "--format", "json").stdout)[0]["active"] is True
    assert cli("otp-client", "disable", "1").exit_code == 0
    r = cli("otp-client", "disable", "1")
    assert r.exit_code == 1 and "already disabled" in r.stderr
    assert cli("otp-client", "disable", "9").exit_code == 1
    assert cli("otp-client", "disable", "abc").exit_code == 2
    assert "disabled" in cli("otp-client", "list").stdout


def test_otp_client_unsigned_requests_are_opt_in(cli):
    assert cli("otp-client", "add", "--name", "modern").exit_code == 0
    assert cli("otp-client", "add", "--name", "old pam", "--allow-unsigned").exit_code == 0
    listing = json.loads(cli("otp-client", "list", "--format", "json").stdout)
    assert [(c["name"], c["allow_unsigned"]) for c in listing] == [("modern", False), ("old pam", True)]
    assert "unsigned" in cli("otp-client", "list").stdout
    r = cli("otp-client", "set", "2", "--require-signed")
    assert r.exit_code == 0 and "signed requests required" in r.stdout
    assert cli("otp-client", "set", "1", "--allow-unsigned").exit_code == 0
    listing = json.loads(cli("otp-client", "list", "--format", "json").stdout)
    assert [c["allow_unsigned"] for c in listing] == [True, False]
    assert cli("otp-client", "set", "9", "--allow-unsigned").exit_code == 1
    assert cli("otp-client", "set", "1").exit_code == 2


def test_database_failure_is_exit_1(cli, tmp_path):
    other = Cli(cli.data_dir, f"sqlite+aiosqlite:///{tmp_path}/not-migrated.db")
    r = other("yubikey", "report")
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = r.stderr.splitlines()  # scep-server names the database (otp's own group says "database error")
    assert line.startswith("Error: cannot use the database sqlite+aiosqlite:///") and "no such table" in line


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the sqlite3 reader is for a SQLite file only
def test_report_prints_the_same_through_either_reader(cli, monkeypatch):
    """On a SQLite file `yubikey report` reads through sqlite3 (otp.sqlitereads): what it prints is what the
    service prints, page by page and in every format."""
    from otp import sqlitereads as otp_reads
    from scep_server.store import sqlitereads

    keys = [make_key(40 + i) for i in range(5)]
    assert cli("yubikey", "import", "-", input=secrets_file(keys).decode()).exit_code == 0
    cli.run(lambda s: s.verify_signin("quinn", keys[1].otp()))
    cli.run(lambda s: s.verify_signin("rosa", keys[3].otp()))
    assert cli("yubikey", "revoke", "43").exit_code == 0
    assert cli("yubikey", "delete", "43").exit_code == 0
    opened, printed = [], {}
    real = otp_reads.OtpReads
    monkeypatch.setattr(otp_reads, "OtpReads", lambda path: opened.append(real(path)) or opened[-1])
    for args in (["yubikey", "report"], ["yubikey", "report", "--format", "json"],
                 ["yubikey", "report", "--format", "csv", "--exclude-deleted"], ["yubikey", "report", "--limit", "2"],
                 ["yubikey", "report", "--limit", "2", "--all", "--format", "json"],
                 ["yubikey", "report", "--user", "rosa", "--format", "json"], ["yubikey", "report", "--status", "active"]):
        del opened[:]
        fast = cli(*args)
        assert fast.exit_code == 0 and len(opened) == 1, (args, fast.output)  # read through sqlite3
        with monkeypatch.context() as m:
            m.setattr(sqlitereads, "reads_path", lambda settings: None)
            slow = cli(*args)
        assert len(opened) == 1  # the service read
        assert (slow.exit_code, slow.stdout, slow.stderr) == (0, fast.stdout, fast.stderr), args
        printed[args[-1]] = fast.stdout
    assert "quinn" in printed["active"] and "rosa" not in printed["active"]
    assert '"count": 1' in printed["json"] and '"deleted_at": "' in printed["json"]  # rosa's deleted key


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_report_with_the_capability_off_is_refused_on_either_path(cli):
    r = cli.runner.invoke(main, ["--data-dir", str(cli.data_dir), "yubikey", "report"],
                          env={"SCEP_SERVER_DATABASE__URL": cli.db_url, "SCEP_SERVER_CONFIG": None,
                               "SCEP_SERVER_OTP__ENABLED": "false"})
    assert r.exit_code == 1 and "otp" in r.stderr, r.output


def test_import_of_a_file_of_many_bad_lines_lists_the_first_and_counts_all(cli, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"x\n" * 1500)
    r = cli("yubikey", "import", "--dry-run", str(bad))
    assert r.exit_code == 1
    assert r.stderr.count("error: line ") == 1000 and "error: line 1000: " in r.stderr
    assert "error: ... and 500 more not listed (the first 1000 by line are)" in r.stderr
    assert "1500 problems" in r.stderr and "nothing was imported" in r.stderr
