"""Fixtures of the crl tests: a settable clock, an in-memory revocation source, a recording logger."""
from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from crl.build import Issuer
from crl.signing import CrlSigner
from tests.crl.pki import make_ca
from tests.helpers import require_tool
from trustkit.clock import SettableClock

UTC = timezone.utc


class MemorySource:
    """The application's revocation state of one CA, in memory: serial -> (revoked_at, reason, invalidity)."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple] = {}
        self.fail: "Exception | None" = None
        self.calls = 0

    def revoke(self, serial: int, at: datetime, reason: "int | None" = None, invalidity=None) -> None:
        self.rows[serial] = (at, reason, invalidity)

    def release(self, serial: int) -> None:
        del self.rows[serial]

    async def __call__(self, now: datetime) -> list[tuple]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return [(s, at, r, inv) for s, (at, r, inv) in self.rows.items()]


class RecordingLogger:
    """Stands in for a structlog logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict]] = []

    def _add(self, level, event, **kw):
        self.records.append((level, event, kw))

    def info(self, event, **kw):
        self._add("info", event, **kw)

    def warning(self, event, **kw):
        self._add("warning", event, **kw)

    def error(self, event, **kw):
        self._add("error", event, **kw)

    def events(self, level: "str | None" = None) -> list[str]:
        return [e for lv, e, _ in self.records if level is None or lv == level]


@pytest.fixture
def clock():
    return SettableClock(datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC))


@pytest.fixture
def source():
    return MemorySource()


@pytest.fixture
def recorder():
    return RecordingLogger()


@pytest.fixture(scope="session")
def rsa_ca():
    return make_ca("Publisher Test CA", kind="rsa", cdp=None)


@pytest.fixture(scope="session")
def issuer(rsa_ca):
    return Issuer.from_certificate(rsa_ca.cert)


@pytest.fixture(scope="session")
def signer(rsa_ca):
    return CrlSigner.for_private_key(rsa_ca.key)


@pytest.fixture(scope="session")
def lint_crl() -> str:
    """pkilint's CRL linter, installed next to the test interpreter."""
    return require_tool(str(Path(sys.executable).parent / "lint_crl")) if os.path.exists(
        Path(sys.executable).parent / "lint_crl") else require_tool("lint_crl")
