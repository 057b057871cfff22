import pytest

from scep_server.config import ConfigError, load_settings


def test_defaults_use_sqlite_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("SCEP_SERVER_DATABASE__URL", raising=False)
    s = load_settings(data_dir=str(tmp_path))
    assert s.database_url() == f"sqlite+aiosqlite:///{(tmp_path / 'scep.db').resolve()}"
    assert s.server.listen == "127.0.0.1:8080"
    assert s.server.public_base_url() == "http://127.0.0.1:8080"


def test_file_then_environment_then_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nlisten = "0.0.0.0:9000"\nworkers = 3\n[database]\nurl = "sqlite:///from-file.db"\n')
    monkeypatch.setenv("SCEP_SERVER_DATABASE__URL", "postgresql://db.example/scep")
    s = load_settings(cfg)
    assert s.server.listen == "0.0.0.0:9000" and s.server.workers == 3
    assert s.database.url == "postgresql://db.example/scep"  # environment beats the file
    s = load_settings(cfg, server={"workers": 2})
    assert s.server.workers == 2 and s.server.listen == "0.0.0.0:9000"  # a flag beats both, keeps the rest


@pytest.mark.parametrize("text, key", [
    ('[server]\nlisten = "nohost"\n', "server.listen"),
    ('[server]\nworkers = 0\n', "server.workers"),
    ('[ca]\nkey_size = 1024\n', "ca.key_size"),
    ('[database]\nsqlite_synchronous = "SOMETIMES"\n', "database.sqlite_synchronous"),
    ('[nosuchsection]\nx = 1\n', "nosuchsection"),
])
def test_invalid_configuration_names_the_key(tmp_path, text, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert key in str(exc.value)


def test_unreadable_configuration(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
