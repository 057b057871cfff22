"""The cache of protocol 2.0 clients: a change made in this process takes effect here at once, even when a
lookup read the client's row before the change and finishes after it (other processes: within
client_cache_seconds). SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import base64
import secrets

from otp import yubico
from otp.config import OtpSettings
from otp.service import OtpService
from tests.otp.conftest import import_keys, make_key


def hold_one_lookup(service: OtpService) -> tuple[asyncio.Event, asyncio.Event]:
    """The next client lookup reads its row, then waits for `gate` before it answers (`read` is set then)."""
    read, gate = asyncio.Event(), asyncio.Event()
    real = service.store.client
    held = []

    async def client(client_id):
        row = await real(client_id)
        if not held:
            held.append(client_id)
            read.set()
            await gate.wait()
        return row

    service.store.client = client  # type: ignore[method-assign]
    return read, gate


def signed(client_id: int, key: bytes, otp: str) -> dict[str, str]:
    params = {"id": str(client_id), "otp": otp, "nonce": secrets.token_hex(10)}
    params["h"] = yubico.sign(params, key)
    return params


def unsigned(client_id: int, otp: str) -> dict[str, str]:
    return {"id": str(client_id), "otp": otp, "nonce": secrets.token_hex(10)}


async def status(service: OtpService, params: dict[str, str]) -> str:
    return yubico.decode_response(await service.verify_protocol(params))["status"]


async def test_a_client_disabled_here_is_refused_at_once_even_with_a_lookup_in_flight(engine, kek, clock):
    async with OtpService(engine, OtpSettings(client_cache_seconds=3600), kek, clock=clock) as service:
        info, b64 = await service.add_client("vpn")
        key = base64.b64decode(b64)
        k = make_key(910)
        await import_keys(service, [k])
        read, gate = hold_one_lookup(service)
        in_flight = asyncio.create_task(service.verify_protocol(signed(info.id, key, k.otp())))
        await read.wait()                                  # a request read the client's row, still enabled
        assert not (await service.disable_client(info.id)).active
        gate.set()
        await in_flight                                    # the request in flight may finish; but then:
        assert await status(service, signed(info.id, key, k.otp())) == "NO_SUCH_CLIENT", \
            "the disabled client is served again by the process that disabled it"


async def test_signatures_required_here_at_once_even_with_a_lookup_in_flight(engine, kek, clock):
    async with OtpService(engine, OtpSettings(client_cache_seconds=3600), kek, clock=clock) as service:
        info, _ = await service.add_client("legacy", allow_unsigned=True)
        k = make_key(911)
        await import_keys(service, [k])
        read, gate = hold_one_lookup(service)
        in_flight = asyncio.create_task(service.verify_protocol(unsigned(info.id, k.otp())))
        await read.wait()                                  # a request read the row: unsigned allowed
        assert not (await service.set_client_unsigned(info.id, False)).allow_unsigned
        gate.set()
        assert yubico.decode_response(await in_flight)["status"] == "OK"  # read while unsigned was allowed
        assert await status(service, unsigned(info.id, k.otp())) == "MISSING_PARAMETER", \
            "unsigned requests are accepted again by the process that required signatures"


async def test_a_client_added_here_is_served_at_once_after_its_id_was_unknown(engine, kek, clock):
    async with OtpService(engine, OtpSettings(client_cache_seconds=3600), kek, clock=clock) as service:
        first, _ = await service.add_client("first")
        k = make_key(912)
        await import_keys(service, [k])
        assert await status(service, unsigned(first.id + 1, k.otp())) == "NO_SUCH_CLIENT"  # cached: no such client
        info, b64 = await service.add_client("second")
        assert info.id == first.id + 1
        assert await status(service, signed(info.id, base64.b64decode(b64), k.otp())) == "OK"


async def test_other_processes_follow_within_the_cache_period(engine, kek, clock):
    async with OtpService(engine, OtpSettings(client_cache_seconds=3600), kek, clock=clock) as here, \
            OtpService(engine, OtpSettings(client_cache_seconds=0), kek, clock=clock) as other:
        info, b64 = await here.add_client("vpn")
        key = base64.b64decode(b64)
        k = make_key(913)
        await import_keys(here, [k])
        assert await status(other, signed(info.id, key, k.otp())) == "OK"
        await here.disable_client(info.id)
        assert await status(other, signed(info.id, key, k.otp())) == "NO_SUCH_CLIENT"
