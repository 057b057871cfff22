"""docs/deployment.md cannot drift from the code: every setting it names exists in the settings models, every
`scep-server` command it shows exists with the options shown, its TOML passes `config check`, and the files it
cites exist."""
from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from scep_server.cli import main
from scep_server.config import Settings
from tests.guides.guide import ROOT, blocks, commands, split

DOC = "deployment.md"
SETTING = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+)`")


def _model_of(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def setting_exists(name: str, model: type[BaseModel] = Settings) -> bool:
    """Whether `section.key` (or `section.sub.key`) is a field of the settings models."""
    head, _, rest = name.partition(".")
    field = model.model_fields.get(head)
    if field is None:
        return False
    if not rest:
        return True
    sub = _model_of(field.annotation)
    return sub is not None and setting_exists(rest, sub)


def settings_named(text: str) -> set[str]:
    """The dotted names in code spans whose first part is a section of the settings (`server.base_url`)."""
    return {m.group(1) for m in SETTING.finditer(text) if m.group(1).split(".")[0] in Settings.model_fields}


def command_problems(args: list[str]) -> list[str]:
    """What of a command line (without the program's name) the command tree does not have."""
    cmd: click.Command = main
    ctx = click.Context(main)
    rest = list(args)
    out = []
    while rest:
        arg = rest.pop(0)
        if arg.startswith("--"):
            flag = arg.split("=")[0]
            param = next((p for p in cmd.params if flag in p.opts or flag in p.secondary_opts), None)
            if param is None:
                out.append(f"{' '.join(args)}: {cmd.name} has no option {flag}")
            elif not getattr(param, "is_flag", False) and "=" not in arg and rest:
                rest.pop(0)  # its value
        elif isinstance(cmd, click.Group):
            sub = cmd.get_command(ctx, arg)
            if sub is None:
                out.append(f"{' '.join(args)}: {cmd.name} has no command {arg}")
                break
            cmd = sub
    if isinstance(cmd, click.Group):
        out.append(f"{' '.join(args)}: {cmd.name} needs a command")
    return out


def test_every_setting_named_exists():
    text = (ROOT / "docs" / DOC).read_text()
    named = settings_named(text)
    assert {"server.base_url", "server.trusted_proxies", "crl.poll_interval"} <= named  # the scan finds them
    assert sorted(n for n in named if not setting_exists(n)) == []


def test_every_setting_the_sign_in_guide_names_exists():
    named = settings_named((ROOT / "docs" / "okta.md").read_text())
    assert {"binding.nonce_ttl_seconds", "crl.validity", "otp.throttle_key"} <= named
    assert sorted(n for n in named if not setting_exists(n)) == []


def test_the_setting_check_refuses_a_name_that_is_not_there():
    assert setting_exists("crl.checker.refresh_interval") and setting_exists("otp.client_cache_seconds")
    assert not setting_exists("server.base_uri") and not setting_exists("crl.checker.nope")
    assert not setting_exists("ocsp.cache_entries.more")


def test_every_command_shown_exists():
    lines = commands(DOC)
    assert len(lines) >= 7
    problems = [p for line in lines for p in command_problems(split(line))]
    assert problems == []


def test_every_command_the_sign_in_guide_names_exists():
    """docs/okta.md names commands in its sh blocks and in code spans of its text."""
    text = (ROOT / "docs" / "okta.md").read_text()
    lines = commands("okta.md") + re.findall(r"`(scep-server [^`]+)`", re.sub(r"\s*\n\s*", " ", text))
    assert len(lines) >= 5
    problems = [p for line in lines for p in command_problems(split(line.replace("|utf-16le", "")))]
    assert problems == []


def test_the_command_check_refuses_what_is_not_there():
    assert command_problems(["db", "upgrade"]) == []
    assert command_problems(["backup", "--files-only", "DIR"]) == []
    assert command_problems(["db", "downgrade"]) != []
    assert command_problems(["backup", "--incremental", "DIR"]) != []
    assert command_problems(["mdm"]) != []


@pytest.mark.parametrize("index", range(len(blocks(DOC, "toml"))))
def test_the_toml_examples_are_valid_configuration(index, tmp_path):
    path = tmp_path / "scep-server.toml"
    path.write_text(blocks(DOC, "toml")[index])
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output


def test_the_files_it_cites_exist():
    text = (ROOT / "docs" / DOC).read_text()
    cited = set(re.findall(r"`((?:deploy|bench|docs|tests)/[\w./-]+|compose\.yaml)`", text))
    cited |= set(re.findall(r"\b(bench/README\.md|docs/[\w-]+\.md)", text))
    assert {"deploy/scep-server.service", "compose.yaml", "bench/README.md"} <= cited
    assert sorted(c for c in cited if not (ROOT / c).exists()) == []
