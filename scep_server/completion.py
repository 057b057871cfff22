"""`scep-server completion bash|zsh|fish`: the shell's completion script (click's shell completion).

The script calls `scep-server` with ``_SCEP_SERVER_COMPLETE`` set at each TAB; click answers from the
command tree without running a command. Completion stays quick because building the tree imports click and
the command modules only (the capabilities' groups on use), as `--help` does. See README.md "Shell completion".
"""
from __future__ import annotations

import click

PROG_NAME = "scep-server"
COMPLETE_VAR = "_SCEP_SERVER_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script (bash, zsh or fish).

    For example `eval "$(scep-server completion bash)"`; README.md "Shell completion" has the install lines."""
    from click.shell_completion import get_completion_class

    script_class = get_completion_class(shell)
    assert script_class is not None  # every choice is one of click's shells
    script = script_class(ctx.find_root().command, {}, PROG_NAME, COMPLETE_VAR)
    click.echo(script.source(), nl=False)
