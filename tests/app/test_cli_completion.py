"""Shell completion: `scep-server completion bash|zsh|fish` prints the script, and the completion protocol the
script speaks (``_SCEP_SERVER_COMPLETE`` with COMP_WORDS / COMP_CWORD) completes command names, options and
choices, quickly (nothing of the database, settings or crypto libraries is imported)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("SCEP_SERVER_", "_SCEP_SERVER", "COMP_"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scep_server.cli", *args], env=_env(**env), capture_output=True,
                          text=True, timeout=60)


def _complete(shell: str, words: str, cword: str) -> list[str]:
    out = _cli(COMP_WORDS=words, COMP_CWORD=cword, _SCEP_SERVER_COMPLETE=f"{shell}_complete")
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("shell, marker", [
    ("bash", "complete -o nosort -F _scep_server_completion scep-server"),
    ("zsh", "#compdef scep-server"),
    ("fish", "complete --no-files --command scep-server"),
])
def test_completion_prints_the_script_of_each_shell(shell, marker):
    out = _cli("completion", shell)
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout and "_SCEP_SERVER_COMPLETE" in out.stdout
    assert f"{shell}_complete" in out.stdout


def test_completion_refuses_another_shell():
    out = _cli("completion", "tcsh")
    assert out.returncode == 2 and "tcsh" in out.stderr


def test_bash_protocol_completes_commands_subcommands_options_and_choices():
    assert _complete("bash", "scep-server pro", "1") == ["plain,profile"]
    top = _complete("bash", "scep-server ", "1")
    for name in ("serve", "init", "profile", "cert", "token", "completion", "yubikey", "crl", "device"):
        assert f"plain,{name}" in top  # the capabilities' groups too (imported on use)
    assert _complete("bash", "scep-server cert ", "2") == ["plain,hold", "plain,list", "plain,release",
                                                           "plain,revoke", "plain,show"]
    assert _complete("bash", "scep-server yubikey im", "2") == ["plain,import"]
    assert _complete("bash", "scep-server cert list --st", "3") == ["plain,--status"]
    assert _complete("bash", "scep-server cert list --status ", "4") == ["plain,valid", "plain,hold",
                                                                        "plain,revoked"]
    assert _complete("bash", "scep-server completion ", "2") == ["plain,bash", "plain,zsh", "plain,fish"]
    assert _complete("bash", "scep-server --data-dir ", "2") == ["dir,"]  # the shell completes directories
    assert "plain,--config" in _complete("bash", "scep-server --", "1")


def test_zsh_and_fish_protocols_complete_with_help_texts():
    assert _complete("zsh", "scep-server tok", "1") == ["plain", "token", "Bearer tokens for the REST API."]
    fish = _complete("fish", "scep-server cert re", "re")
    assert [line.split("\t")[0] for line in fish] == ["plain,release", "plain,revoke"]
    assert all("\t" in line for line in fish)  # with their help


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_itself_completes_through_the_printed_script(tmp_path):
    """The script sourced by bash, its function called as bash's `complete -F` calls it."""
    wrapper = tmp_path / "scep-server"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m scep_server.cli "$@"\n')
    wrapper.chmod(0o755)
    script = ("source <(scep-server completion bash); "
              "COMP_WORDS=(scep-server cert l); COMP_CWORD=2; _scep_server_completion scep-server; "
              'printf "%s\\n" "${COMPREPLY[@]}"; '
              "COMP_WORDS=(scep-server profile add x --challenge ''); COMP_CWORD=5; COMPREPLY=(); "
              '_scep_server_completion scep-server; printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, timeout=60,
                         env=_env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["list", "static", "dynamic", "delegated"]


def test_completion_imports_nothing_heavy():
    """Completion runs at every TAB: it builds the command tree only, as --help does."""
    code = ("import json, sys, os\n"
            "from scep_server.cli import main\n"
            "try:\n"
            "    main()\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('MODULES ' + json.dumps(sorted(sys.modules)), file=sys.stderr)\n")
    for words, cword in (("scep-server ", "1"), ("scep-server yubikey report --status ", "4"),
                         ("scep-server device ", "2")):
        out = subprocess.run([sys.executable, "-c", code, "scep-server"], capture_output=True, text=True, timeout=60,
                             env=_env(COMP_WORDS=words, COMP_CWORD=cword, _SCEP_SERVER_COMPLETE="zsh_complete"))
        assert out.returncode == 0 and out.stdout, out.stderr
        modules = json.loads(out.stderr.rpartition("MODULES ")[2])
        heavy = [m for m in modules if m.split(".")[0] in ("sqlalchemy", "pydantic", "structlog", "cryptography",
                                                            "aiohttp", "asyncio", "asyncpg")]
        assert heavy == [], (words, heavy)


def test_completing_any_command_imports_nothing_heavy():
    """Every command and group of the tree, its options and its arguments completed in one fresh interpreter."""
    code = """
import json, sys
import click
from click.shell_completion import ShellComplete
from scep_server.cli import main

def walk(command, path):
    yield path
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, name), path + [name])

complete = ShellComplete(main, {}, "scep-server", "_SCEP_SERVER_COMPLETE")
paths = list(walk(main, []))
answers = 0
for path in paths:
    for incomplete in ("", "--"):
        answers += len(complete.get_completions(path, incomplete))
print(json.dumps({"paths": len(paths), "answers": answers, "modules": sorted(sys.modules)}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["paths"] > 40 and found["answers"] > 100
    heavy = [m for m in found["modules"] if m.split(".")[0] in ("sqlalchemy", "pydantic", "structlog", "cryptography",
                                                                "aiohttp", "asyncio", "asyncpg")]
    assert heavy == []
