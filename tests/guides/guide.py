"""Reading a guide in docs/: its fenced blocks and the `scep-server` commands in them, so that a test runs what
the guide says (and fails when the guide changes under it)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
FENCE = re.compile(r"^[ \t]*```([\w+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)


def blocks(doc: str, *languages: str) -> list[str]:
    """The fenced blocks of docs/`doc` whose info string is one of `languages` (all when none is given)."""
    text = (ROOT / "docs" / doc).read_text()
    return [m.group(2) for m in FENCE.finditer(text) if not languages or m.group(1) in languages]


def commands(doc: str, program: str = "scep-server") -> list[str]:
    """Every `program` command line of the guide's sh blocks, in order, continuation lines joined (with the
    program's name)."""
    out = []
    for block in blocks(doc, "sh"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(program + " "):
                out.append(line)
    return out


def split(line: str, values: dict[str, str] | None = None) -> list[str]:
    """A command line's arguments (without the program's name), split as a shell would, after each placeholder
    (`<tenant id>`, a path) is replaced by the test's value."""
    for placeholder, value in (values or {}).items():
        line = line.replace(placeholder, value)
    return shlex.split(line)[1:]
