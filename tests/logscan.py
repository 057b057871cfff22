"""Find every log event the source emits: calls on loggers, by AST, with their level and fields.

A logger is a name ending a receiver called ``log``, ``logger``, ``_log`` or ``_logger`` (``log.info``,
``self._log.warning``); tests/test_logevents.py checks that every module-level logger is named so; a call of
a function of :data:`WRITERS` writes its event too. An event
name is the call's first argument: a string, a constant expression (``EventKind.BIND.value``, evaluated in the
module), or anything else, reported as *dynamic* with its source text.
"""
from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scep_server", "crl", "otp", "trustkit")
LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "warn": "warning", "error": "error",
          "exception": "error", "critical": "critical"}
LOGGER_NAME = re.compile(r"_?log(ger)?")
NOT_FIELDS = {"extra", "exc_info", "stack_info", "stacklevel"}
WRITERS = {"access_line": ("http.access", "info")}  # functions that write one event each (scep_server/logs.py)


@dataclass
class Call:
    path: str       # relative to the repository, e.g. "otp/service.py"
    line: int
    level: str
    name: str | None          # the event name, when known statically
    expression: str           # the first argument's source text
    fields: set[str] = field(default_factory=set)
    open_fields: bool = False  # `**mapping` passed: fields the scan cannot see

    @property
    def site(self) -> str:
        return f"{self.path}:{self.expression}"


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _receiver(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _constant(expr: ast.expr, path: Path) -> str | None:
    """The value of a string or a dotted attribute chain (``EventKind.BIND.value``) in its module."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    node = expr
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Name) and node.id[:1].isupper():  # a class or a module constant, not a local
        value = eval(compile(ast.Expression(expr), str(path), "eval"), vars(importlib.import_module(_module(path))))
        return value if isinstance(value, str) else None
    return None


def calls(paths: list[Path] | None = None) -> list[Call]:
    found: list[Call] = []
    for path in paths or source_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in WRITERS:
                name, level = WRITERS[node.func.id]
                found.append(Call(path=_rel(path), line=node.lineno, level=level, name=name, expression=repr(name),
                                  fields={kw.arg for kw in node.keywords if kw.arg is not None},
                                  open_fields=any(kw.arg is None for kw in node.keywords)))
                continue
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LEVELS and node.args):
                continue
            receiver = _receiver(node.func.value)
            if receiver is None or not LOGGER_NAME.fullmatch(receiver):
                continue
            fields = {kw.arg for kw in node.keywords if kw.arg is not None and kw.arg not in NOT_FIELDS}
            for kw in node.keywords:
                if kw.arg == "extra" and isinstance(kw.value, ast.Dict):
                    fields |= {k.value for k in kw.value.keys if isinstance(k, ast.Constant)}
            if node.func.attr == "exception" or any(kw.arg == "exc_info" for kw in node.keywords):
                fields.add("exception")
            found.append(Call(path=_rel(path), line=node.lineno, level=LEVELS[node.func.attr],
                              name=_constant(node.args[0], path), expression=ast.unparse(node.args[0]),
                              fields=fields, open_fields=any(kw.arg is None for kw in node.keywords)))
    return found


def module_loggers(paths: list[Path] | None = None) -> list[tuple[str, str]]:
    """(path, name) of every module-level assignment of ``structlog.get_logger(...)``/``logging.getLogger(...)``."""
    found = []
    for path in paths or source_files():
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and isinstance(
                    node.value.func, ast.Attribute) and node.value.func.attr in ("get_logger", "getLogger"):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found.append((_rel(path), target.id))
    return found
