"""Restore details: the schema check, secrets from the environment (not copied), a newer schema refused."""
from __future__ import annotations

import json
import sqlite3

from scep_server.backup import schema_state, script_heads

from .support import cli


def test_schema_state_of_revisions():
    assert schema_state(script_heads()) == "head"
    assert schema_state(["core_0001"]) == "upgradable"
    assert schema_state([*script_heads()[:-1], "core_0001"]) == "upgradable"
    assert schema_state(["core_9999"]) == "unknown"


def test_passphrase_from_the_environment_is_not_copied_and_is_needed_to_restore(tmp_path):
    env = {"SCEP_CA_PASSPHRASE": "a passphrase from the environment"}
    data = tmp_path / "data"
    cli("--data-dir", str(data), "init", env=env)
    assert not (data / "ca" / "passphrase").exists()
    out = cli("--data-dir", str(data), "backup", str(tmp_path / "b"), env=env)
    assert "not copied (from $SCEP_CA_PASSPHRASE)" in out
    assert not (tmp_path / "b" / "ca-passphrase").exists()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["secrets"]["ca_passphrase"] == {"env": "SCEP_CA_PASSPHRASE"}
    new = tmp_path / "n" / "data"
    out = cli("restore", str(tmp_path / "b"), "--data-dir", str(new), code=1,
              env={"SCEP_CA_PASSPHRASE": ""})
    assert "the CA passphrase" in out and not new.exists()
    out = cli("restore", str(tmp_path / "b"), "--data-dir", str(new), env=env)
    assert "schema: head" in out and not (new / "ca" / "passphrase").exists()
    # the restored directory serves with the same environment: the CA keys open
    out = cli("--data-dir", str(new), "ca", "list", env=env)
    assert "default" in out


def test_a_database_newer_than_this_software_is_refused(tmp_path):
    data = tmp_path / "data"
    cli("--data-dir", str(data), "init")
    conn = sqlite3.connect(data / "scep.db")
    conn.execute("INSERT INTO alembic_version (version_num) VALUES ('core_9999')")
    conn.commit()
    conn.close()
    cli("--data-dir", str(data), "backup", str(tmp_path / "b"))
    new = tmp_path / "n" / "data"
    out = cli("restore", str(tmp_path / "b"), "--data-dir", str(new), code=1)
    assert "newer than this software knows" in out and not new.exists()
    assert not (tmp_path / "n").exists()  # nor the parent the restore made


def test_a_failed_backup_leaves_nothing(tmp_path):
    data = tmp_path / "data"
    cli("--data-dir", str(data), "init")
    out = cli("--data-dir", str(data), "backup", str(tmp_path / "b"), env={"SCEP_CA_PASSPHRASE": "wrong"}, code=1)
    assert "cannot open the CA key" in out and not (tmp_path / "b").exists()
    # a failure half-way (the database is gone) removes what was written
    (data / "scep.db").rename(tmp_path / "elsewhere.db")
    (tmp_path / "empty").mkdir()
    out = cli("--data-dir", str(data), "backup", str(tmp_path / "empty"), code=1)
    assert "does not exist" in out and list((tmp_path / "empty").iterdir()) == []
    out = cli("--data-dir", str(data), "backup", str(tmp_path / "b"), code=1)
    assert not (tmp_path / "b").exists()


def test_a_sealed_key_that_does_not_open_is_refused(tmp_path):
    from click.testing import CliRunner

    from scep_server.cli import main
    from tests.otp.conftest import make_key, secrets_file

    data = tmp_path / "data"
    cli("--data-dir", str(data), "init")
    result = CliRunner().invoke(main, ["--data-dir", str(data), "yubikey", "import", "-"],
                                input=secrets_file([make_key(900_001), make_key(900_002)]).decode(),
                                env={"SCEP_SERVER_LOG__LEVEL": "warning"})
    assert result.exit_code == 0, result.output
    cli("--data-dir", str(data), "backup", str(tmp_path / "good"))
    # a sealed value damaged in the database itself (same KEK id): the backup copies it faithfully
    conn = sqlite3.connect(data / "scep.db")
    conn.execute("UPDATE otp_yubikeys SET secret_sealed = CAST(X'01' || randomblob(60) AS BLOB) WHERE serial = 900002")
    conn.commit()
    conn.close()
    cli("--data-dir", str(data), "backup", str(tmp_path / "bad"))
    out = cli("restore", str(tmp_path / "good"), "--data-dir", str(tmp_path / "n1"))
    assert "2 YubiKey secret(s)" in out
    out = cli("restore", str(tmp_path / "bad"), "--data-dir", str(tmp_path / "n2"), code=1)
    assert "does not open with the OTP key-encryption key" in out and not (tmp_path / "n2").exists()
