"""`scep-server backup` and `scep-server restore` on SQLite, with real servers: what was enrolled and imported
before the backup is served by a server started on the restored data directory, an OTP verifies there, and
its CRL Numbers continue above every number the old deployment signed."""
from __future__ import annotations

import asyncio
import json
import stat

import aiohttp
import sqlalchemy as sa
from cryptography.hazmat.primitives.serialization import Encoding

from scep_server.backup import script_heads
from scep_server.ca.inventory import serial_hex
from scep_server.store.tables import certificates, events
from tests.factories import NOW
from tests.otp.conftest import make_key, secrets_file
from tests.scep_load.conftest import distinct_keys
from tests.server import start_app

from .support import cli, crl_number, enrol, ra_der, served_crl


DER = Encoding.DER


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _serials(engine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(certificates.c.serial))).scalars())


async def test_backup_restore_round_trip_serves_what_was_there(aiohttp_server, tmp_path):
    srv = await start_app(aiohttp_server, tmp_path)
    keys = distinct_keys(3)
    admin = (await srv.runtime.tokens.create(scope="admin", name="admin", now=NOW))[1]
    signin = (await srv.runtime.tokens.create(scope="signin", name="signin", now=NOW))[1]
    yubikey = make_key(700_001)
    async with aiohttp.ClientSession(srv.url) as http:
        ra = await ra_der(srv.url)
        certs = [await enrol(http, srv.url, k, ra, srv.challenge(), f"device-{i}") for i, k in enumerate(keys[:2])]
        async with http.post("/api/v1/yubikeys/import", data=secrets_file([yubikey]), headers=bearer(admin)) as r:
            assert r.status == 201, await r.text()
        used_otp = yubikey.otp()
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": used_otp}, headers=bearer(signin)) as r:
            assert r.status == 200 and (await r.json())["enrolled"] is True
    seen = crl_number((await served_crl(srv.url)).public_bytes(DER))

    backup = tmp_path / "backup"
    out = await asyncio.to_thread(cli, "--data-dir", str(srv.data_dir), "backup", str(backup))
    assert "otp-kek.key" in out and "store it apart" in out
    # a secret of its own that the backup holds in clear, and says so
    assert "default-challenge.txt: the `default` profile's challenge password" in out
    assert (backup / "default-challenge.txt").read_text().strip() == srv.challenge()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["highest_crl_number"]["default"] >= seen
    assert manifest["database"] == {"kind": "sqlite", "file": "database.sqlite3"}
    assert set(manifest["migration_heads"]) == set(script_heads())  # the database was at head
    assert {"ca/default/ca.key", "ca/default/ra.key", "ca/default/ca.crt", "database.sqlite3"} <= set(manifest["files"])
    # the secrets are files of their own, outside the manifest's file list
    assert (backup / "otp-kek.key").read_bytes() == (srv.data_dir / "otp-kek.key").read_bytes()
    assert (backup / "ca-passphrase").read_bytes() == (srv.data_dir / "ca" / "passphrase").read_bytes()
    assert "otp-kek.key" not in manifest["files"] and manifest["secrets"]["otp_kek"]["file"] == "otp-kek.key"
    for path in backup.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    # the backup is recorded in the audit trail of the database it copied
    async with srv.runtime.engine.connect() as conn:
        kinds = list((await conn.execute(sa.select(events.c.kind).where(events.c.kind == "admin.backup"))).scalars())
    assert kinds == ["admin.backup"]

    # the old deployment goes on after the backup: a revocation, a CRL numbered higher
    await srv.runtime.revocation.revoke(serial_hex(certs[0].serial_number), actor="test")
    after = crl_number((await served_crl(srv.url, above=seen)).public_bytes(DER))

    # the secrets stored apart are given by name
    apart = tmp_path / "vault"
    apart.mkdir()
    (backup / "otp-kek.key").rename(apart / "otp-kek.key")
    (backup / "ca-passphrase").rename(apart / "ca-passphrase")
    restored = tmp_path / "restored" / "data"
    out = await asyncio.to_thread(cli, "restore", str(backup), "--data-dir", str(restored), "--verify",
                                  "--kek-file", str(apart / "otp-kek.key"),
                                  "--passphrase-file", str(apart / "ca-passphrase"))
    assert "1 YubiKey secret(s)" in out and "schema: head" in out
    assert (restored / "otp-kek.key").read_bytes().strip() == (srv.data_dir / "otp-kek.key").read_bytes().strip()
    assert stat.S_IMODE(restored.stat().st_mode) == 0o700

    srv2 = await start_app(aiohttp_server, tmp_path / "restored")
    assert srv2.data_dir == restored
    # the certificates enrolled before the backup are there
    assert {serial_hex(c.serial_number) for c in certs} <= await _serials(srv2.runtime.engine)
    signin2 = (await srv2.runtime.tokens.create(scope="signin", name="signin", now=NOW))[1]
    async with aiohttp.ClientSession(srv2.url) as http:
        # the YubiKey is there, enrolled to ada, its counter as it was: a used OTP is a replay, a new one verifies
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": used_otp}, headers=bearer(signin2)) as r:
            assert r.status == 403 and (await r.json())["reason"] == "replayed_otp"
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": yubikey.otp()},
                             headers=bearer(signin2)) as r:
            body = await r.json()
            assert r.status == 200 and body["status"] == "OK" and body["enrolled"] is False, body
        # the restored server enrols (same CA, same RA)
        assert await ra_der(srv2.url) == ra
        new = await enrol(http, srv2.url, keys[2], ra, srv.challenge(), "device-new")
        assert new.issuer == certs[0].issuer
    # its CRL Numbers continue above every number the old deployment signed, before the backup and after it
    number = crl_number((await served_crl(srv2.url)).public_bytes(DER))
    assert number > after > seen
    assert number > manifest["highest_crl_number"]["default"]
    async with srv2.runtime.engine.connect() as conn:
        restore_events = (await conn.execute(sa.select(events.c.data).where(events.c.kind == "admin.restore"))).all()
    assert len(restore_events) == 1 and json.loads(restore_events[0].data)["crl_number_floors"]["default"] < number
