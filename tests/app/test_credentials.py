"""Secrets from files: database.url_file, and systemd credentials ($CREDENTIALS_DIRECTORY) filling the settings
that name the CA passphrase, OTP key-encryption key and database URL files."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from scep_server.cli import main
from scep_server.config import ConfigError, credential_values, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.upper().startswith("SCEP_SERVER_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def test_credentials_name_their_settings_files(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ("ca-passphrase", "otp-kek", "database-url"):
        (creds / name).write_text("x\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(None)
    assert settings.ca.passphrase_file == str(creds / "ca-passphrase")
    assert settings.passphrase_path() == creds / "ca-passphrase"
    assert settings.otp.kek_path(settings.data_dir) == creds / "otp-kek"
    assert settings.database.url_file == str(creds / "database-url")


def test_only_the_credentials_present_count_and_explicit_settings_win(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "otp-kek").write_text("x\n")
    assert credential_values({"CREDENTIALS_DIRECTORY": str(creds)}) == {"otp": {"kek_file": str(creds / "otp-kek")}}
    assert credential_values({}) == {}
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = tmp_path / "scep.toml"
    cfg.write_text('[otp]\nkek_file = "/etc/scep/kek"\n')
    assert str(load_settings(cfg).otp.kek_file) == "/etc/scep/kek"
    monkeypatch.setenv("SCEP_SERVER_OTP__KEK_FILE", "/run/other")
    assert str(load_settings(cfg).otp.kek_file) == "/run/other"
    assert load_settings(None).ca.passphrase_file is None  # no ca-passphrase credential


def test_the_database_url_comes_from_its_file(tmp_path):
    url_file = tmp_path / "db-url"
    url_file.write_text("postgresql://scep:secret@db.example/scep\nignored\n")
    settings = load_settings(None, database={"url_file": str(url_file)})
    assert settings.database_url() == "postgresql://scep:secret@db.example/scep"
    both = load_settings(None, database={"url_file": str(url_file), "url": "postgresql://other/db"})
    assert both.database_url() == "postgresql://other/db"


def test_the_database_url_is_in_no_representation_of_the_settings():
    """database.url is the one setting that holds a secret itself (its password): a repr of the settings (a log line,
    an error or a traceback that shows them) leaves it out, as `config show` redacts it."""
    settings = load_settings(None, database={"url": "postgresql://scep:s3cret-pw@db.example/scep"})
    assert settings.database_url() == "postgresql://scep:s3cret-pw@db.example/scep"
    for shown in (repr(settings), str(settings), repr(settings.database), str(settings.database)):
        assert "s3cret-pw" not in shown and "pool_size=" in shown


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_an_unreadable_or_empty_url_file_is_a_configuration_error_naming_the_key(tmp_path, content):
    url_file = tmp_path / "db-url"
    if content is not None:
        url_file.write_text(content)
    settings = load_settings(None, database={"url_file": str(url_file)})
    with pytest.raises(ConfigError, match="database.url_file"):
        settings.database_url()
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "d"), "db", "upgrade"],
                                env={"SCEP_SERVER_DATABASE__URL_FILE": str(url_file)})
    assert result.exit_code == 1 and "database.url_file" in result.output, result.output
