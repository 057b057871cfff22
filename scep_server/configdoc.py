"""The configuration reference (docs/configuration.md) generated from the settings models, and the effective
configuration as TOML (`scep-server config show`).

``python -m scep_server.configdoc`` prints the reference; ``python -m scep_server.configdoc --write`` writes it
to docs/configuration.md. tests/test_configdoc.py fails when the document and the models differ.
"""
from __future__ import annotations

import enum
import inspect
import json
import re
import sys
import types
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
REDACTED = "***"
# the password of a URL's user part as SQLAlchemy reads it (everything up to the next `@`): it may hold a `/`, `?` or
# `#` that a generic URL parser takes for the end of the host part
_URL_PASSWORD = re.compile(r"[\w+]+://[^:/]*:([^@]*)@")


@dataclass(frozen=True)
class Key:
    path: tuple[str, ...]
    type: str
    default: str
    env: str
    description: str
    secret: bool


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...]
    description: str
    keys: tuple[Key, ...]


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def env_name(path: tuple[str, ...]) -> str:
    """The environment variable that sets the key at `path`."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(path).upper()


def sections(model: type[BaseModel] = Settings, path: tuple[str, ...] = (), description: str = "",
             defaults: BaseModel | None = None) -> list[Section]:
    """Every section of `model` (the top level first), each with its keys, in the models' order.

    `defaults`: the section's default value where its parent sets one (``throttle_client`` is not
    ``ThrottleSettings()``); its keys' defaults are read from it.
    """
    keys: list[Key] = []
    nested: list[Section] = []
    for name, field in model.model_fields.items():
        default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        sub = _section_model(field.annotation)
        if sub is not None:
            nested.extend(sections(sub, (*path, name), field.description or _doc(sub), default))
            continue
        value = _plain(default)
        keys.append(Key(path=(*path, name), type=type_name(field.annotation, field),
                        default="unset" if value is None else toml_value(value), env=env_name((*path, name)),
                        description=field.description or "",
                        secret=bool((field.json_schema_extra or {}).get("secret"))))  # type: ignore[union-attr]
    return [Section(path, description, tuple(keys)), *nested]


def _doc(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    if model.__doc__ is None or doc == inspect.getdoc(BaseModel):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def missing_descriptions() -> list[str]:
    """Keys and sections without a description (the reference must explain every one)."""
    out = []
    for section in sections():
        if section.path and not section.description:
            out.append(".".join(section.path) + " (section)")
        out.extend(".".join(k.path) for k in section.keys if not k.description)
    return out


def type_name(annotation: Any, field: FieldInfo | None = None) -> str:
    """A reader's name of a setting's type, with its bounds."""
    name = _type(annotation)
    bounds = _bounds(field) if field is not None else []
    return name + (f" ({', '.join(bounds)})" if bounds else "")


def _type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        inner = " or ".join(_type(a) for a in args)
        return inner + ", optional" if len(args) < len(get_args(annotation)) else inner
    if origin is Literal:
        return "one of " + ", ".join(f'"{v}"' for v in get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return f"list of {_type(args[0]) if args else 'value'}s"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f'"{m.value}"' for m in annotation)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path",
              timedelta: "duration"}
    return simple.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field: FieldInfo) -> list[str]:
    out = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(m, attr, None)
            if value is not None:
                out.append(f"{sign} {_plain(value)}")
        for attr, label in (("min_length", "at least {} characters"), ("max_length", "at most {} characters")):
            value = getattr(m, attr, None)
            if value is not None:
                out.append(label.format(value))
        pattern = getattr(m, "pattern", None)
        if pattern is not None:
            out.append(f"pattern `{pattern}`")
    return out


def _plain(value: Any) -> Any:
    """A value as TOML and the environment take it."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    return value


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The configuration reference (docs/configuration.md)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated from the settings models by `python -m scep_server.configdoc --write`; do not edit -->",
        "",
        "Settings come from a TOML file (`--config FILE` or `SCEP_SERVER_CONFIG`), environment variables and "
        "command-line flags; the environment beats the file, and flags beat both. Each key's variable is "
        f"`{ENV_PREFIX}<SECTION>{ENV_NESTED_DELIMITER}<KEY>` (a sub-section adds a level); names are matched "
        "without regard to case, and a list or a whole section is given as JSON. A duration is a number of "
        "seconds or an ISO 8601 duration such as `PT5M` (defaults are shown in seconds). `scep-server config show` prints the configuration in effect (`--defaults`: the "
        "defaults), secrets redacted; `scep-server config check FILE` validates a file (exit 0, or 2 with the "
        "error naming the key).",
    ]
    for section in sections():
        title = "Top level" if not section.path else f"`[{'.'.join(section.path)}]`"
        lines += ["", f"## {title}", ""]
        if section.description:
            lines += [section.description, ""]
        if not section.keys:
            lines.append("(only sub-sections)")
            continue
        lines += ["| Key | Type | Default | Environment variable | Description |", "|---|---|---|---|---|"]
        for key in section.keys:
            default = key.default if key.default == "unset" else f"`{key.default}`"
            description = key.description + (" (secret: redacted by `config show`)" if key.secret else "")
            lines.append(f"| `{key.path[-1]}` | {_cell(key.type)} | {_cell(default)} | `{key.env}` | "
                         f"{_cell(description)} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- the effective configuration


def _secret_paths() -> set[tuple[str, ...]]:
    return {k.path for s in sections() for k in s.keys if k.secret}


def redact(value: str) -> str:
    """A secret setting as shown: a URL keeps all but its password; anything else is hidden."""
    found = _URL_PASSWORD.match(value)
    if found:
        value = value[:found.start(1)] + REDACTED + value[found.end(1):]
    try:
        parts = urlsplit(value)
    except ValueError:
        return REDACTED
    if parts.scheme and "://" in value:
        hidden = parts
        if parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            hidden = hidden._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in query):  # libpq's ?password=...
            hidden = hidden._replace(query=urlencode(
                [(k, REDACTED if k.lower() == "password" else v) for k, v in query], safe="*"))
        return value if hidden == parts else urlunsplit(hidden)
    return REDACTED if value else value


def as_toml(settings: Settings) -> str:
    """The settings as a TOML file that reads back to them (secrets redacted; unset keys as comments)."""
    secret = _secret_paths()
    out: list[str] = []

    def table(model: BaseModel, path: tuple[str, ...]) -> None:
        scalars, subs = [], []
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                subs.append((name, value))
                continue
            value = _plain(value)
            if value is None:
                scalars.append(f"# {name} is unset")
                continue
            if (*path, name) in secret and isinstance(value, str):
                value = redact(value)
            scalars.append(f"{name} = {toml_value(value)}")
        if path:
            out.append("")
            out.append(f"[{'.'.join(path)}]")
        out.extend(scalars)
        for name, sub in subs:
            table(sub, (*path, name))

    table(settings, ())
    return "\n".join(out).lstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--write"]:
        DOCUMENT.write_text(text, encoding="utf-8")
        print(f"wrote {DOCUMENT}")
        return 0
    if argv:
        print("usage: python -m scep_server.configdoc [--write]", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
