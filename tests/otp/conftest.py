"""Fixtures of the OTP factor tests: a KEK, settings, a service on the test database, key material."""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from otp import modhex
from otp.config import OtpSettings
from otp.service import OtpService
from otp.token import Token, build_otp
from trustkit.clock import SettableClock

# Vector H (Yubico/yubikey-ksm selftest.sh): public ID idkfefrdhtru.
KEY_H = dict(serial=1000001, public_id="idkfefrdhtru", private_id="609963eae7b5",
             aes_key="c68c9df8cbfe7d2f994cb904046c7218")


@dataclass
class TestKey:
    """An imported key and a generator of its OTPs (fresh counters each call)."""

    serial: int
    public_id: str
    private_id: bytes = field(repr=False)
    aes_key: bytes = field(repr=False)
    usage_ctr: int = 1
    session_use: int = 0

    def line(self, access_code: str = "000000000000", ts: str = "2026-11-22T10:01:00") -> str:
        """A Personalization Tool "Yubico format" line."""
        return f"{self.serial},{self.public_id},{self.private_id.hex()},{self.aes_key.hex()},{access_code},{ts},"

    def otp(self, *, usage_ctr: int | None = None, session_use: int | None = None, capslock: bool = False) -> str:
        if usage_ctr is not None:
            self.usage_ctr = usage_ctr
        if session_use is not None:
            self.session_use = session_use
        else:
            self.session_use += 1
        ctr = self.usage_ctr | (0x8000 if capslock else 0)
        tok = Token.create(private_id=self.private_id, usage_ctr=ctr, timestamp=0x0F8D40 + self.session_use * 8,
                           session_use=self.session_use, random=secrets.randbelow(0x10000))
        return build_otp(self.public_id, tok, self.aes_key)


def make_key(serial: int, public_id: str | None = None) -> TestKey:
    pid = public_id or modhex.encode(b"\xff\x00" + serial.to_bytes(4, "big"))
    return TestKey(serial=serial, public_id=pid, private_id=secrets.token_bytes(6), aes_key=secrets.token_bytes(16))


def key_h() -> TestKey:
    return TestKey(serial=KEY_H["serial"], public_id=KEY_H["public_id"], private_id=bytes.fromhex(KEY_H["private_id"]),
                   aes_key=bytes.fromhex(KEY_H["aes_key"]))


def secrets_file(keys: list[TestKey]) -> bytes:
    return ("\n".join(k.line() for k in keys) + "\n").encode()


class PausedConnection:
    """A connection whose statements of one kind wait for `gate` (a step of a transaction held open)."""

    def __init__(self, conn, kind, reached: asyncio.Event, gate: asyncio.Event) -> None:
        self._conn, self._kind, self._reached, self._gate = conn, kind, reached, gate

    async def execute(self, statement, *args, **kwargs):
        if isinstance(statement, self._kind):
            self._reached.set()
            await self._gate.wait()
        return await self._conn.execute(statement, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.fixture
def kek() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc))


@pytest.fixture
def otp_settings() -> OtpSettings:
    return OtpSettings()


@pytest.fixture
async def service(engine, otp_settings, kek, clock):
    async with OtpService(engine, otp_settings, kek, clock=clock) as svc:
        yield svc


async def import_keys(service: OtpService, keys: list[TestKey]) -> None:
    result = await service.import_secrets(secrets_file(keys))
    assert result.ok, result.errors
    assert result.imported == len(keys)
