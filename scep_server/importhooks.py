"""Keep a command's start-up to what it uses: two libraries import more than this application needs.

A `scep-server` command is mostly imports (bench/cli.py), and two of them load what no command uses:

- ``sqlalchemy.ext.asyncio`` imports the ORM through its session modules (about a third of SQLAlchemy's
  import time); the application uses only the asyncio engine and connections, never a session. The package
  is loaded here without the statements that import its ``session`` and ``scoping`` modules; those run when
  a name they define is first asked for (``from sqlalchemy.ext.asyncio import AsyncSession`` still works).
- ``structlog`` imports ``rich`` for its development console when rich is installed (it is not a dependency
  of the server; test tools bring it). While structlog's modules load, rich is hidden from them, so
  structlog behaves as in a deployment: plain console renderer, no rich tracebacks. Rich itself stays
  importable by anyone else.

:func:`install` adds one finder to ``sys.meta_path``; it touches no module until that module is imported,
and a module already imported is left as it is. Everything else about the two modules (their files, their
loaders, their ``__spec__``) is unchanged.
"""
from __future__ import annotations

import contextlib
import sys
from types import ModuleType
from typing import Callable, Iterator

ASYNCIO_EXT = "sqlalchemy.ext.asyncio"
# submodules of sqlalchemy.ext.asyncio whose import pulls in sqlalchemy.orm
ORM_SUBMODULES = frozenset({"session", "scoping"})
# optional imports of structlog that this application does not use
STRUCTLOG_EXTRAS = ("rich", "better_exceptions")


def install() -> None:
    """Add the finder (once); it acts on the first import of each of the two packages."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


class _Finder:
    """Finds the two packages with the other finders, and wraps their loader for the first execution."""

    def find_spec(self, fullname, path, target=None):
        if fullname == ASYNCIO_EXT:
            wrap: Callable[[object], _Wrapped] = _AsyncioExtLoader
        elif fullname == "structlog":
            wrap = _StructlogLoader
        else:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = wrap(spec.loader)
        return spec


class _Wrapped:
    """Runs the module through the real loader, then hands the module the real loader back."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.run(module)

    def run(self, module: ModuleType) -> None:
        self.loader.exec_module(module)

    def __getattr__(self, name: str):  # get_source, get_code, is_package, resource readers ...
        return getattr(self.loader, name)


class _StructlogLoader(_Wrapped):
    def run(self, module: ModuleType) -> None:
        with _hidden(STRUCTLOG_EXTRAS):
            self.loader.exec_module(module)


@contextlib.contextmanager
def _hidden(names: tuple[str, ...]) -> Iterator[None]:
    """While the block runs, `import NAME` raises ImportError for each NAME not imported yet."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not importable"
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


class _AsyncioExtLoader(_Wrapped):
    """Executes the package's ``__init__`` without its ORM imports, which run on the first name they define."""

    def run(self, module: ModuleType) -> None:
        import ast

        source = self.loader.get_source(module.__name__) if hasattr(self.loader, "get_source") else None
        if source is None:
            self.loader.exec_module(module)
            return
        tree = ast.parse(source)
        eager, deferred = [], []
        for node in tree.body:
            orm = isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in ORM_SUBMODULES
            (deferred if orm else eager).append(node)
        filename = module.__spec__.origin if module.__spec__ is not None else module.__name__
        exec(compile(ast.Module(body=eager, type_ignores=[]), filename, "exec"), module.__dict__)
        if not deferred:
            return
        code = compile(ast.Module(body=deferred, type_ignores=[]), filename, "exec")

        def __getattr__(name: str):
            if name.startswith("__"):
                raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
            namespace = module.__dict__
            namespace.pop("__getattr__", None)
            exec(code, namespace)
            try:
                return namespace[name]
            except KeyError:
                raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}") from None

        module.__getattr__ = __getattr__  # type: ignore[method-assign]  # PEP 562
