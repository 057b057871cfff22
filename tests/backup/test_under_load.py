"""A backup taken while devices enrol: every enrolment acknowledged before the backup began is in the copy."""
from __future__ import annotations

import asyncio
import sqlite3
import time

import aiohttp

from scep_server.backup import create_backup, read_manifest
from scep_server.ca.inventory import serial_hex
from tests.scep_load.conftest import distinct_keys
from tests.server import start_app
from trustkit.clock import utcnow

from .support import enrol, ra_der

CLIENTS = 4
LOAD_SECONDS = 2.0


async def test_backup_during_enrolments_loses_nothing_acknowledged(aiohttp_server, tmp_path):
    srv = await start_app(aiohttp_server, tmp_path)
    keys = distinct_keys(160)
    reserved = keys[-CLIENTS:]  # enrolled after the backup, whatever the load has used up by then
    load_keys = keys[:-CLIENTS]
    ra = await ra_der(srv.url)
    challenge = srv.challenge()
    acked: list[tuple[float, str]] = []  # (monotonic time the reply was in, serial)
    stop = asyncio.Event()

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while not stop.is_set():
            index = n + i * CLIENTS
            if index >= len(load_keys):
                return
            cert = await enrol(session, srv.url, load_keys[index], ra, challenge, f"load-{index:03d}")
            acked.append((time.monotonic(), serial_hex(cert.serial_number)))
            i += 1

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(n, session)) for n in range(CLIENTS)]
        # the backup starts once the load runs (a second, and a few enrolments in: the machine may be slow) ...
        await asyncio.sleep(LOAD_SECONDS / 2)
        async with asyncio.timeout(60):
            while len(acked) < CLIENTS:
                await asyncio.sleep(0.05)
        started = time.monotonic()
        result = await create_backup(srv.settings, tmp_path / "backup", now=utcnow())
        finished = time.monotonic()
        # ... and the load goes on after it (on a fast machine the load's keys may all be used by then)
        await asyncio.sleep(LOAD_SECONDS / 2)

        async def after_backup(key, tag: str) -> None:
            cert = await enrol(session, srv.url, key, ra, challenge, tag)
            acked.append((time.monotonic(), serial_hex(cert.serial_number)))

        async with asyncio.timeout(60):
            await asyncio.gather(*(after_backup(k, f"after-{i}") for i, k in enumerate(reserved)))
        stop.set()
        await asyncio.gather(*clients)

    before = {serial for at, serial in acked if at < started}
    after = {serial for at, serial in acked if at > finished}
    assert before and after, "the load ran before and after the backup"
    read_manifest(result.directory)  # every checksum holds
    conn = sqlite3.connect(result.directory / "database.sqlite3")
    try:
        copied = {row[0] for row in conn.execute("SELECT serial FROM certificates")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert before <= copied, f"{len(before - copied)} acknowledged enrolment(s) missing from the backup"
