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
    # user info in the base URL would be written into every certificate's CRL and CA certificate URLs
    ('[server]\nbase_url = "https://admin:s3cret@scep.example.com"\n', "server.base_url"),
    ('[server]\nbase_url = "https://admin@scep.example.com"\n', "server.base_url"),
    ('[server]\nbase_url = "https://scep.example.com/?a=b"\n', "server.base_url"),
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


def _sections(model, prefix=()):
    """(path, model) of every section and sub-section of the settings."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield (*prefix, name), field.annotation
            yield from _sections(field.annotation, (*prefix, name))


def _all_sections():
    from scep_server.config import Settings

    return [".".join(path) for path, _ in _sections(Settings)]


@pytest.mark.parametrize("section", _all_sections())
def test_a_misspelt_key_is_refused_in_every_section(tmp_path, monkeypatch, section):
    """`[server] base_ur = ...` or SCEP_SERVER_SERVER__BASEURL is an error naming it, not a setting that silently
    keeps its default (a certificate naming the wrong URL, a database nobody meant)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{section}]\nno_such_key = 1\n")
    with pytest.raises(ConfigError, match=rf"{section}\.no_such_key"):
        load_settings(cfg)
    from scep_server.config import check_file

    with pytest.raises(ConfigError, match=rf"{section}\.no_such_key"):
        check_file(cfg)
    monkeypatch.setenv("SCEP_SERVER_" + section.upper().replace(".", "__") + "__NO_SUCH_KEY", "1")
    with pytest.raises(ConfigError, match=rf"{section}\.no_such_key"):
        load_settings()


def test_a_variable_of_a_section_that_does_not_exist_is_refused(monkeypatch):
    """SCEP_SERVER_DATABSE__URL would leave the server on SQLite in its data directory without a word."""
    monkeypatch.setenv("SCEP_SERVER_DATABSE__URL", "postgresql://db.example/scep")
    with pytest.raises(ConfigError, match="SCEP_SERVER_DATABSE__URL: there is no section 'databse'"):
        load_settings()
    monkeypatch.delenv("SCEP_SERVER_DATABSE__URL")
    monkeypatch.setenv("SCEP_SERVER_CONFIG", "/nowhere.toml")  # the command line's own variable, not a setting
    assert load_settings().database.url is None


@pytest.mark.parametrize("console, message", [
    ({"trusted_header": "X-Auth-Request-Email"}, "trusted_header needs trusted_header_networks"),
    ({"trusted_header": "X-Auth-Request-Email", "trusted_header_networks": ["0.0.0.0/0"]}, "'0.0.0.0/0' is every address"),
    ({"trusted_header": "X-User", "trusted_header_networks": ["10.0.0.5/32", "::/0"]}, "'::/0' is every address"),
])
def test_a_console_trusted_header_believed_from_nowhere_or_from_everywhere_is_refused(console, message):
    """Without networks the header sign-in silently never worked; with 0.0.0.0/0 whoever connects was signed in
    as the user the header names."""
    with pytest.raises(ConfigError, match=rf"console: Value error, {message}|console\.trusted_header_networks: "
                                          rf"Value error, {message}"):
        load_settings(console=console)
    assert load_settings(console={"trusted_header": "X-User", "trusted_header_networks": ["10.0.0.5/32"]})
