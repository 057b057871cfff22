"""PostgreSQL: `scep-server backup` refuses to copy the database and prints the pg_dump command; that command,
pg_restore into a fresh database and `scep-server restore` give a deployment that serves (enrolment, CRL)."""
from __future__ import annotations

import asyncio
import json
import shlex

import aiohttp
import sqlalchemy as sa
from cryptography.hazmat.primitives.serialization import Encoding

from scep_server.ca.inventory import serial_hex
from scep_server.store.tables import certificates
from tests.helpers import require_tool
from tests.scep_load.conftest import distinct_keys
from tests.server import run, start_app
from trustkit.db import create_engine

from .support import cli, crl_number, drop_pg_database, enrol, pg_database, ra_der, served_crl


def _env(url: str) -> dict[str, str]:
    return {"SCEP_SERVER_DATABASE__URL": url}


async def test_backup_refuses_postgresql_and_names_pg_dump(tmp_path):
    url = await pg_database()
    try:
        data = tmp_path / "data"
        await asyncio.to_thread(cli, "--data-dir", str(data), "init", env=_env(url))
        out = await asyncio.to_thread(cli, "--data-dir", str(data), "backup", str(tmp_path / "b"), env=_env(url),
                                      code=1)
    finally:
        await drop_pg_database(url)
    dbname = url.rsplit("/", 1)[1]
    assert "the database is PostgreSQL" in out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("pg_dump "))
    assert f"--dbname={dbname}" in command and "--format=custom" in command
    assert f"--file={tmp_path / 'b' / 'database.pgdump'}" in command
    assert f"scep-server backup --files-only {tmp_path / 'b'}" in out
    assert not (tmp_path / "b").exists()


async def test_pg_dump_and_restore_round_trip_serves(aiohttp_server, tmp_path):
    require_tool("pg_dump")
    require_tool("pg_restore")
    source, target = await pg_database(), await pg_database()
    try:
        srv = await start_app(aiohttp_server, tmp_path, source)
        keys = distinct_keys(2)
        async with aiohttp.ClientSession() as http:
            ra = await ra_der(srv.url)
            before = await enrol(http, srv.url, keys[0], ra, srv.challenge(), "pg-device-0")
        seen = crl_number((await served_crl(srv.url)).public_bytes(Encoding.DER))

        backup = tmp_path / "backup"
        refusal = await asyncio.to_thread(cli, "--data-dir", str(srv.data_dir), "backup", str(backup),
                                          env=_env(source), code=1)
        # the steps the refusal names, as printed
        out = await asyncio.to_thread(cli, "--data-dir", str(srv.data_dir), "backup", "--files-only", str(backup),
                                      env=_env(source))
        assert "not included (PostgreSQL)" in out
        manifest = json.loads((backup / "manifest.json").read_text())
        assert manifest["database"] == {"kind": "postgresql", "included": False}
        assert manifest["highest_crl_number"]["default"] >= seen
        command = next(line.strip() for line in refusal.splitlines() if line.strip().startswith("pg_dump "))
        code, _, err = await run(*shlex.split(command))
        assert code == 0, err
        code, _, err = await run("pg_restore", "--no-owner", "--host=127.0.0.1", "--username=postgres",
                                 f"--dbname={target.rsplit('/', 1)[1]}", str(backup / "database.pgdump"))
        assert code == 0, err

        restored = tmp_path / "restored" / "data"
        # a password in the URL's query (libpq's form; trust authentication takes any) is not printed
        out = await asyncio.to_thread(cli, "restore", str(backup), "--data-dir", str(restored), "--verify",
                                      env=_env(target + "?password=s3cret-restore"))
        assert "schema: head" in out and "password=***" in out and "s3cret-restore" not in out

        srv2 = await start_app(aiohttp_server, tmp_path / "restored", target)
        engine = create_engine(target)
        try:
            async with engine.connect() as conn:
                serials = set((await conn.execute(sa.select(certificates.c.serial))).scalars())
        finally:
            await engine.dispose()
        assert serial_hex(before.serial_number) in serials
        async with aiohttp.ClientSession() as http:
            assert await ra_der(srv2.url) == ra
            await enrol(http, srv2.url, keys[1], ra, srv.challenge(), "pg-device-1")
        number = crl_number((await served_crl(srv2.url)).public_bytes(Encoding.DER))
        assert number > manifest["highest_crl_number"]["default"] >= seen
    finally:
        for url in (source, target):
            await drop_pg_database(url)
