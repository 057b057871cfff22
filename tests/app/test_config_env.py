"""The environment's settings are read without pydantic-settings, exactly as its environment source read them.

`scep_server.config.environment_values` replaces `BaseSettings` (env_prefix SCEP_SERVER_, nested delimiter
__) so that a command does not import pydantic-settings; the reference here is pydantic-settings itself over
the same models, variable by variable and for the awkward cases (case, JSON sections, enumerations' names,
unknown keys, values that do not parse).
"""
from __future__ import annotations

import os
import types
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError, create_model

from scep_server.config import ConfigError, Settings, environment_values, load_settings

pydantic_settings = pytest.importorskip("pydantic_settings")


class _ReferenceBase(pydantic_settings.BaseSettings):
    model_config = pydantic_settings.SettingsConfigDict(env_prefix="SCEP_SERVER_", env_nested_delimiter="__",
                                                        extra="forbid")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings, env_settings)


# the settings as they were declared before: a BaseSettings with Settings' fields
Reference = create_model("Reference", __base__=_ReferenceBase,
                         **{name: (field.annotation, field) for name, field in Settings.model_fields.items()})


def _sample(annotation: Any) -> str | None:
    """A value of this type as the environment would give it (None: the type is a section)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return _sample(next(a for a in get_args(annotation) if a is not type(None)))
    if origin is Literal:
        return str(get_args(annotation)[-1])
    if origin in (list, tuple):
        return '["10.0.0.0/8", "192.168.0.0/16"]'
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return None
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return str(list(annotation)[-1].value)
    return {bool: "false", int: "7", float: "2.5", str: "x.example", Path: "/srv/scep",
            timedelta: "90"}[annotation]


def _leaves(model: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        inner = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _leaves(annotation, (*path, name))
        elif inner:
            out += _leaves(inner[0], (*path, name))
        else:
            out.append(((*path, name), annotation))
    return out


LEAVES = _leaves(Settings)


@pytest.fixture
def environ(monkeypatch):
    """A clean SCEP_SERVER_ environment; returns a function setting variables in order."""
    for name in list(os.environ):
        if name.lower().startswith("scep_server_"):
            monkeypatch.delenv(name)

    def put(*pairs: tuple[str, str]) -> None:
        for name, value in pairs:
            monkeypatch.setenv(name, value)

    return put


def _outcome(read) -> tuple[str, Any]:
    try:
        return "ok", read().model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        return "invalid", sorted((e["loc"], e["type"]) for e in exc.errors())
    except (ConfigError, pydantic_settings.SettingsError):
        return "unparsable", None


def _same(put, *pairs: tuple[str, str]) -> tuple[str, Any]:
    put(*pairs)
    ours = _outcome(lambda: Settings.model_validate(environment_values()))
    assert ours == _outcome(Reference), pairs
    return ours


def test_every_field_the_models_declare_is_covered():
    assert len(LEAVES) > 60
    assert {path[0] for path, _ in LEAVES} == set(Settings.model_fields)


@pytest.mark.parametrize("path, annotation", LEAVES, ids=[".".join(p) for p, _ in LEAVES])
def test_each_variable_reads_as_pydantic_settings_read_it(environ, path, annotation):
    name = "SCEP_SERVER_" + "__".join(path).upper()
    kind, dumped = _same(environ, (name, _sample(annotation)))
    if kind == "ok":  # the value arrived where the variable names it
        for part in path:
            dumped = dumped[part]


@pytest.mark.parametrize("pairs, kind", [
    ([("scep_server_database__url", "postgresql://db/x")], "ok"),                       # any case
    ([("Scep_Server_Server__Workers", "3"), ("SCEP_SERVER_SERVER__LISTEN", "0.0.0.0:1")], "ok"),
    ([("SCEP_SERVER_SERVER", '{"workers": 3, "listen": "0.0.0.0:9"}')], "ok"),          # a section as JSON
    ([("SCEP_SERVER_SERVER", '{"workers": 3}'), ("SCEP_SERVER_SERVER__WORKERS", "5")], "ok"),
    ([("SCEP_SERVER_CRL__CHECKER__MAX_BYTES", "5000"), ("SCEP_SERVER_CRL__CHECKER", '{"max_bytes": 7}')], "ok"),
    ([("SCEP_SERVER_CRL__CHECKER", '{"max_bytes": 7}'), ("SCEP_SERVER_CRL__CHECKER__MAX_BYTES", "5000")], "ok"),
    ([("SCEP_SERVER_CRL__CHECKER__POLICY", "FAIL_OPEN")], "invalid"),                    # not an enumeration's name
    ([("SCEP_SERVER_CRL__CHECKER__POLICY", "fail-open")], "ok"),                         # its value
    ([("SCEP_SERVER_CRL__VALIDITY", "7200.5"), ("SCEP_SERVER_CRL__POLL_INTERVAL", "PT2S")], "ok"),
    ([("SCEP_SERVER_DATA_DIR", "/srv/data"), ("SCEP_SERVER_NOSUCH", "1")], "ok"),        # unknown top level: ignored
    ([("SCEP_SERVER_SERVER__NOSUCH", "1")], "invalid"),                                  # every section forbids extras
    ([("SCEP_SERVER_OTP__NOSUCH", "1")], "invalid"),
    ([("SCEP_SERVER_OTP__THROTTLE_KEY__MAX_FAILURES", "4"), ("SCEP_SERVER_OTP__KEK_FILE", "/k")], "ok"),
    ([("SCEP_SERVER_SERVER__WORKERS", "0")], "invalid"),
    ([("SCEP_SERVER_BINDING__ENABLED", "maybe")], "invalid"),
    ([("SCEP_SERVER_SERVER__TRUSTED_PROXIES", "10.0.0.0/8")], "unparsable"),             # a list is JSON
    ([("SCEP_SERVER_SERVER__TRUSTED_PROXIES", "")], "invalid"),
    ([("SCEP_SERVER_SERVER", "workers=3")], "unparsable"),
    ([("SCEP_SERVER_SERVER____WORKERS", "3"), ("SCEP_SERVER_SERVER__WORKERS__X", "3")], "invalid"),
    ([("SCEP_SERVER_SERVER__LISTEN__X", "1"), ("SCEP_SERVER_SERVER__LISTEN", "0.0.0.0:1")], "ok"),
    ([("SCEP_SERVER_LOG", "null")], "ok"),                                               # JSON null: unset
    ([("SCEP_SERVER_SERVER__BASE_URL", "")], "ok"),
])
def test_awkward_environments_read_the_same(environ, pairs, kind):
    assert _same(environ, *pairs)[0] == kind


def test_an_unparsable_variable_is_a_configuration_error_naming_it(environ):
    environ(("SCEP_SERVER_SERVER__TRUSTED_PROXIES", "10.0.0.0/8"))
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies: environment variable "
                                          r"SCEP_SERVER_SERVER__TRUSTED_PROXIES is not valid JSON"):
        load_settings(None)


def test_loading_settings_does_not_import_pydantic_settings():
    import subprocess
    import sys

    code = ("import sys; from scep_server.config import load_settings; load_settings(None, data_dir='d'); "
            "print('pydantic_settings' in sys.modules)")
    env = {**os.environ, "SCEP_SERVER_SERVER__WORKERS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
