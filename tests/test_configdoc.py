"""docs/configuration.md is the settings models' reference (regenerate: `python -m scep_server.configdoc --write`),
and `scep-server config show|check`."""
from __future__ import annotations

import re
import tomllib

import pytest
from click.testing import CliRunner

from scep_server import configdoc
from scep_server.cli import main
from scep_server.config import Settings, environment_values, load_settings


def test_the_document_is_what_the_models_generate():
    assert configdoc.DOCUMENT.read_text(encoding="utf-8") == configdoc.render(), (
        "docs/configuration.md differs from the settings models: run `python -m scep_server.configdoc --write`")


def test_every_key_and_section_has_a_description():
    assert configdoc.missing_descriptions() == []


def _leaf_paths(model: type = Settings, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out = set()
    for name, field in model.model_fields.items():
        sub = configdoc._section_model(field.annotation)
        out |= _leaf_paths(sub, (*path, name)) if sub else {(*path, name)}
    return out


def test_the_reference_lists_every_key_once_with_its_variable():
    listed = [k.path for s in configdoc.sections() for k in s.keys]
    assert len(listed) == len(set(listed)) and set(listed) == _leaf_paths()
    text = configdoc.render()
    for path in listed:
        assert f"`{configdoc.env_name(path)}`" in text
    # spot checks of rendering: a bound, an optional key, a section default set by its parent, a duration
    assert "| `workers` | integer (>= 1, <= 64) | `1` | `SCEP_SERVER_SERVER__WORKERS` |" in text
    assert "| `base_url` | string, optional | unset | `SCEP_SERVER_SERVER__BASE_URL` |" in text
    client = text[text.index("## `[otp.throttle_client]`"):]
    assert "| `max_failures` | integer (>= 1) | `100` |" in client.split("## ", 2)[1]
    assert "| `validity` | duration | `604800` | `SCEP_SERVER_CRL__VALIDITY` |" in text


@pytest.mark.parametrize("path", sorted(_leaf_paths()), ids=".".join)
def test_each_listed_variable_reaches_its_key(path):
    """The variable the reference names is the one the environment reader maps to that key."""
    node = environment_values({configdoc.env_name(path): '["x"]'})  # JSON for a list, the string otherwise
    for part in path:
        assert isinstance(node, dict) and part in node, (path, node)
        node = node[part]
    assert node in (["x"], '["x"]')


def _invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={"SCEP_SERVER_CONFIG": None, **(env or {})})


def test_config_show_prints_the_effective_configuration_as_toml_that_reads_back(tmp_path, monkeypatch):
    for name in list(__import__("os").environ):
        if name.upper().startswith("SCEP_SERVER_"):
            monkeypatch.delenv(name)
    cfg = tmp_path / "scep.toml"
    cfg.write_text('[server]\nworkers = 3\nbase_url = "https://scep.example.com"\n'
                   '[otp.throttle_client]\nmax_failures = 7\n[crl]\nvalidity = "P2D"\n')
    result = _invoke("--config", str(cfg), "--data-dir", str(tmp_path / "d"), "config", "show",
                     env={"SCEP_SERVER_DATABASE__URL": "postgresql://scep:hunter2@db.example:5432/scep",
                          "SCEP_SERVER_SERVER__WORKERS": "5"})
    assert result.exit_code == 0, result.output
    shown = tomllib.loads(result.output)
    assert "hunter2" not in result.output
    assert shown["database"]["url"] == "postgresql://scep:***@db.example:5432/scep"
    assert shown["server"]["workers"] == 5  # the environment beats the file
    assert shown["server"]["base_url"] == "https://scep.example.com"
    assert shown["otp"]["throttle_client"]["max_failures"] == 7
    assert shown["crl"]["validity"] == 2 * 86400
    assert shown["data_dir"] == str(tmp_path / "d")
    assert "# scep_threads is unset" in result.output
    del shown["database"]["url"]  # redacted
    effective = load_settings(cfg, data_dir=str(tmp_path / "d"), server={"workers": 5})
    assert Settings.model_validate(shown) == effective.model_copy(
        update={"database": effective.database.model_copy(update={"url": None})})


def test_config_show_defaults_ignores_the_file_and_environment(tmp_path):
    cfg = tmp_path / "scep.toml"
    cfg.write_text('[server]\nworkers = 3\n')
    result = _invoke("--config", str(cfg), "config", "show", "--defaults", env={"SCEP_SERVER_LOG__LEVEL": "error"})
    assert result.exit_code == 0, result.output
    assert Settings.model_validate(tomllib.loads(result.output)) == Settings()


@pytest.mark.parametrize("url, shown", [
    ("postgresql://scep@db/scep", "postgresql://scep@db/scep"),
    ("postgresql://scep:pw@[2001:db8::1]:5432/scep", "postgresql://scep:***@[2001:db8::1]:5432/scep"),
    ("postgresql://db/scep?user=scep&password=pw&sslmode=require",
     "postgresql://db/scep?user=scep&password=***&sslmode=require"),
    ("sqlite+aiosqlite:////srv/scep.db", "sqlite+aiosqlite:////srv/scep.db"),
    # SQLAlchemy reads a password up to the `@`: a `/`, `?` or `#` in it (base64 has `/`) was shown in clear
    ("postgresql://scep:Zm9v/YmFy+cQ==@db:5432/scep", "postgresql://scep:***@db:5432/scep"),
    ("postgresql+asyncpg://scep:a?b#c@db/scep?ssl=require", "postgresql+asyncpg://scep:***@db/scep?ssl=require"),
    ("postgresql://scep:x[y@db/scep", "postgresql://scep:***@db/scep"),
])
def test_database_urls_keep_everything_but_the_password(url, shown):
    assert configdoc.redact(url) == shown


def test_config_check_accepts_a_valid_file(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text('data_dir = "/srv/scep"\n[server]\nlisten = "0.0.0.0:8080"\nbase_url = "https://pki.example"\n')
    result = _invoke("config", "check", str(cfg))
    assert result.exit_code == 0 and "valid" in result.output


@pytest.mark.parametrize("text, names", [
    ('[server]\nworkers = 0\n', "server.workers"),
    ('[server]\nbase_url = "pki.example"\n', "server.base_url"),
    ('[crl.checker]\nmax_bytes = -1\n', "crl.checker.max_bytes"),
    ('[log]\nacces = true\n', "log.acces"),
    ('[server\n', "not valid TOML"),
])
def test_config_check_exits_2_naming_the_key(tmp_path, text, names):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    result = _invoke("config", "check", str(cfg), env={"SCEP_SERVER_SERVER__WORKERS": "4"})
    assert result.exit_code == 2, result.output
    assert names in result.output


def test_config_check_reads_the_file_alone(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text("[server]\nworkers = 2\n")
    # a broken environment is not the file's fault
    result = _invoke("config", "check", str(cfg), env={"SCEP_SERVER_SERVER__WORKERS": "0"})
    assert result.exit_code == 0, result.output
    missing = _invoke("config", "check", str(tmp_path / "none.toml"))
    assert missing.exit_code == 2 and re.search("does not exist", missing.output)
