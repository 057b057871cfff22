"""A command imports what it uses and no more (bench/cli.py measures the time; these tests keep the reasons).

Each command runs in a fresh interpreter, as an operator runs it, and reports the modules it imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# what no read-only command needs: the ORM (through SQLAlchemy's asyncio extension), rich (through structlog),
# pydantic-settings, aiohttp, the CA's private-key code paths' codec
NEVER = ("sqlalchemy.orm", "rich", "pydantic_settings", "aiohttp")

REPORT = """
import json, sys
from scep_server.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("\\nMODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCEP_SERVER_")}
    return {**env, "PYTHONPATH": str(ROOT), "SCEP_SERVER_LOG__LEVEL": "warning", "SCEP_SERVER_CA__KEY_SIZE": "2048",
            **extra}


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    out = subprocess.run([sys.executable, "-c", REPORT, *args], env=_env(**(env or {})), capture_output=True,
                         text=True, timeout=120)
    return out, set(json.loads(out.stderr.rpartition("MODULES ")[2].splitlines()[0]))


def _modules(data_dir: Path, *args: str) -> set[str]:
    out, modules = _run("--data-dir", str(data_dir), *args)
    assert out.returncode == 0, out.stderr
    return modules


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("startup") / "data"
    subprocess.run([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data), "init"], env=_env(),
                   check=True, capture_output=True, timeout=300)
    return data


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names or any(m.startswith(n + ".") or m == n
                                                                         for n in names))


@pytest.mark.parametrize("args", [["token", "create", "--scope", "admin"]], ids=" ".join)
def test_read_commands_import_neither_orm_nor_rich_nor_pydantic_settings(data_dir, args):
    modules = _modules(data_dir, *args)
    assert "sqlalchemy.ext.asyncio" in modules and "pydantic" in modules  # they did run
    assert _loaded(modules, NEVER) == []


LISTS = [["profile", "list"], ["cert", "list"], ["cert", "list", "--status", "revoked", "--format", "json"],
         ["cert", "list", "--device", "dev-1", "--all"], ["profile", "list", "--limit", "1"],
         ["yubikey", "report"], ["yubikey", "report", "--format", "json", "--all"]]


@pytest.mark.parametrize("args", LISTS, ids=" ".join)
def test_listing_commands_on_sqlite_import_no_sqlalchemy(data_dir, args):
    """On the embedded SQLite database the listing commands read through sqlite3 (scep_server.store.sqlitereads)."""
    modules = _modules(data_dir, *args)
    assert "scep_server.store.sqlitereads" in modules and "sqlite3" in modules  # they did run, and read
    assert _loaded(modules, ("sqlalchemy", "aiosqlite", "asyncpg", *NEVER)) == []
    # no services, no logging set-up, and no event loop (the sqlite3 reads never wait): not even asyncio or ssl
    assert _loaded(modules, ("scep_server.runtime", "scep_server.tokens", "structlog", "asyncio", "ssl")) == []


def test_profile_list_loads_no_certificate_checks(data_dir):
    """The profiles' settings need the template's model only, not the CSR checks (X.509, RE2, the SCEP codec)."""
    modules = _modules(data_dir, "profile", "list")
    assert "scep_server.ca.template" in modules
    assert _loaded(modules, ("cryptography", "re2", "scep_server.ca.policy", "scep_server.scep")) == []


def test_listing_commands_with_the_audit_chain_open_the_runtime(data_dir):
    """The runtime seals the audit chain's backlog when a command ends: with the chain on, a list opens it."""
    out, modules = _run("--data-dir", str(data_dir), "profile", "list", env={"SCEP_SERVER_AUDIT__CHAIN": "true"})
    assert out.returncode == 0 and out.stdout.startswith("default\t"), out.stderr
    assert "sqlalchemy.ext.asyncio" in modules and "scep_server.runtime" in modules


@pytest.mark.parametrize("args", [
    ["cert", "list"], ["yubikey", "report"], ["token", "create", "--scope", "admin"],
], ids=" ".join)
def test_commands_that_touch_no_profile_load_no_certificate_template_checks(data_dir, args):
    modules = _modules(data_dir, *args)
    assert _loaded(modules, ("scep_server.profiles", "scep_server.ca.policy", "re2")) == []


def test_yubikey_report_loads_no_structlog(data_dir):
    assert _loaded(_modules(data_dir, "yubikey", "report", "--format", "json"), ("structlog",)) == []


def test_token_create_loads_no_cryptography(data_dir):
    assert _loaded(_modules(data_dir, "token", "create", "--scope", "signin"), ("cryptography",)) == []


def test_a_command_that_logs_gets_structlog_without_rich(data_dir):
    import asyncio

    from scep_server.ca.authority import random_serial
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from scep_server.runtime import load_cas
    from tests.factories import csr, record_issued, rsa_key, settings_for
    from trustkit.clock import utcnow
    from trustkit.db import create_engine

    settings = settings_for(data_dir)
    [ca] = load_cas(settings).values()
    cert = ca.issue(csr(rsa_key()), IssuancePolicy(CertificateTemplate()), serial=random_serial(), now=utcnow())

    async def record():
        engine = create_engine(settings.database_url())
        try:
            return await record_issued(engine, ca, cert)
        finally:
            await engine.dispose()

    serial = asyncio.run(record())
    out, modules = _run("--data-dir", str(data_dir), "cert", "revoke", serial)
    assert out.returncode == 0 and out.stdout.startswith(f"{serial}: revoked"), out.stderr
    assert "structlog" in modules and _loaded(modules, ("rich", "sqlalchemy.orm", "pydantic_settings")) == []


def test_help_imports_no_database_or_settings_library():
    out, modules = _run("--help")
    assert out.returncode == 0 and "Usage" in out.stdout
    assert _loaded(modules, ("sqlalchemy", "pydantic", "structlog", "cryptography", "aiohttp", "asyncio")) == []


# ------------------------------------------------------------------ the hooks themselves, in a clean interpreter


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_asyncio_extension_without_orm_until_a_session_name_is_used():
    code = """
import sys
from scep_server import importhooks
importhooks.install()
import sqlalchemy.ext.asyncio as ext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncConnection, create_async_engine, AsyncResult
print("orm" if "sqlalchemy.orm" in sys.modules else "no-orm")
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
print("orm" if "sqlalchemy.orm" in sys.modules else "no-orm")
import importlib.util
spec = importlib.util.find_spec("sqlalchemy.ext.asyncio")
print(type(ext.__loader__).__name__, type(spec.loader).__name__, ext.__spec__.loader is ext.__loader__)
from sqlalchemy.ext.asyncio import session, scoping
print(AsyncSession is session.AsyncSession, ext.async_scoped_session is scoping.async_scoped_session)
try:
    from sqlalchemy.ext.asyncio import NoSuchName
except ImportError:
    print("ImportError")
"""
    lines = _python(code).splitlines()
    assert lines[0] == "no-orm" and lines[1] == "orm"
    assert lines[2] == "SourceFileLoader SourceFileLoader True"  # the real loader, once loaded
    assert lines[3] == "True True" and lines[4] == "ImportError"


def test_the_lazy_extension_exports_what_the_eager_one_does():
    code = """
import sqlalchemy.ext.asyncio as ext
eager = {k: v for k, v in vars(ext).items() if not k.startswith("__")}
for name in list(__import__("sys").modules):
    if name.startswith(("sqlalchemy", "scep_server")):
        del __import__("sys").modules[name]
from scep_server import importhooks
importhooks.install()
import sqlalchemy.ext.asyncio as lazy
missing = sorted(k for k in eager if getattr(lazy, k, None) is None)
print(missing)
"""
    assert _python(code) == "[]"


def test_structlog_without_rich_and_rich_still_importable():
    code = """
import sys
from scep_server import importhooks
importhooks.install()
import structlog
print(structlog.dev.rich is None, "rich" in sys.modules)
import rich, rich.console
print(rich.console.Console.__name__)
"""
    assert _python(code).splitlines() == ["True False", "Console"]
