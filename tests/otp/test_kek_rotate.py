"""`scep-server otp kek rotate`: every YubiKey key and OTP client key re-sealed under a new KEK in one
transaction; the previous KEK file kept; OTPs verify before and after (under the new KEK only)."""
from __future__ import annotations

import asyncio
import json
import secrets
import threading

import pytest
import sqlalchemy as sa

from otp.config import OtpSettings
from otp.errors import Reason
from otp.kek import SecretBox, read_kek_file
from otp.service import OtpService, _client_aad
from otp.rekey import reseal_all
from otp.tables import otp_clients, otp_yubikeys
from scep_server.store.tables import events
from trustkit.db import create_engine, writer

from .conftest import PausedConnection, import_keys, make_key, secrets_file


def _db(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'scep.db'}"


async def _verify(tmp_path, kek: bytes, user: str, otp: str) -> Reason:
    engine = create_engine(_db(tmp_path))
    try:
        async with OtpService(engine, OtpSettings(), kek) as svc:
            return (await svc.verify_signin(user, otp)).reason
    finally:
        await engine.dispose()


async def _rows(tmp_path):
    engine = create_engine(_db(tmp_path))
    try:
        async with engine.connect() as conn:
            keys = (await conn.execute(sa.select(otp_yubikeys.c.public_id, otp_yubikeys.c.kek_id))).all()
            clients = (await conn.execute(sa.select(otp_clients.c.id, otp_clients.c.secret_sealed,
                                                    otp_clients.c.kek_id))).all()
            rotated = (await conn.execute(sa.select(events.c.actor, events.c.data).where(
                events.c.kind == "security.otp.kek_rotate"))).all()
        return keys, clients, rotated
    finally:
        await engine.dispose()


def test_rotate_reseals_everything_and_keeps_the_previous_file(cli, tmp_path):
    data = tmp_path / "data"
    keys = [make_key(820_001), make_key(820_002)]
    (tmp_path / "keys.csv").write_bytes(secrets_file(keys))
    cli("yubikey", "import", str(tmp_path / "keys.csv"))
    added = cli("otp-client", "add", "--name", "sso")
    client_key = added.split("key: ")[1].split()[0]
    kek_path = data / "otp-kek.key"
    old = read_kek_file(kek_path)
    assert asyncio.run(_verify(tmp_path, old, "alice", keys[0].otp())) is Reason.ENROLLED  # at first use

    out = cli("otp", "kek", "rotate")
    assert "re-sealed 2 YubiKey keys and 1 OTP client keys" in out
    new = read_kek_file(kek_path)
    assert new != old
    old_id, new_id = SecretBox(old).kek_id, SecretBox(new).kek_id
    previous = data / f"otp-kek.key.{old_id}.previous"
    assert read_kek_file(previous) == old  # kept until the operator removes it
    assert not (data / "otp-kek.key.new").exists()

    stored, clients, rotated = asyncio.run(_rows(tmp_path))
    assert {r.kek_id for r in stored} == {new_id} and {r.kek_id for r in clients} == {new_id}
    import base64

    assert SecretBox(new).open(clients[0].secret_sealed, _client_aad(clients[0].id)) == base64.b64decode(client_key)
    (event,) = rotated
    assert event.actor.startswith("cli") and json.loads(event.data)["keys"] == 2
    assert old.hex() not in event.data and new.hex() not in event.data

    # OTPs verify under the new KEK (the counters carried on), not under the old one
    assert asyncio.run(_verify(tmp_path, new, "alice", keys[0].otp())) is Reason.VERIFIED
    assert asyncio.run(_verify(tmp_path, old, "bob", keys[1].otp())) is Reason.BACKEND_ERROR  # the KEK is refused
    assert asyncio.run(_verify(tmp_path, new, "bob", keys[1].otp())) is Reason.ENROLLED
    assert "2 YubiKey keys" in cli("otp", "kek", "rotate")  # and again


def test_a_row_under_another_kek_stops_the_rotation_and_nothing_changes(cli, tmp_path):
    data = tmp_path / "data"
    (tmp_path / "keys.csv").write_bytes(secrets_file([make_key(820_101)]))
    cli("yubikey", "import", str(tmp_path / "keys.csv"))
    cli("otp-client", "add", "--name", "sso")

    async def foreign():
        engine = create_engine(_db(tmp_path))
        try:
            async with engine.begin() as conn:
                await conn.execute(otp_clients.update().values(kek_id="0123456789abcdef"))
        finally:
            await engine.dispose()
    asyncio.run(foreign())
    before = (data / "otp-kek.key").read_bytes()
    out = cli("otp", "kek", "rotate", code=1)
    assert "nothing changed" in out and "0123456789abcdef" in out
    assert (data / "otp-kek.key").read_bytes() == before
    assert not list(data.glob("otp-kek.key.*"))
    stored, _, rotated = asyncio.run(_rows(tmp_path))
    assert {r.kek_id for r in stored} == {SecretBox(read_kek_file(data / "otp-kek.key")).kek_id} and not rotated


async def test_a_running_service_reads_the_rotated_kek_without_a_restart(cli, tmp_path):
    """A server opened before the rotation: keys sealed under the new KEK verify, the keys it cached under
    the previous one still do, and what it seals afterwards is sealed under the new KEK."""
    data = tmp_path / "data"
    keys = [make_key(820_101), make_key(820_102)]
    (tmp_path / "keys.csv").write_bytes(secrets_file(keys))
    await asyncio.to_thread(cli, "yubikey", "import", str(tmp_path / "keys.csv"))
    kek_path = data / "otp-kek.key"
    old = read_kek_file(kek_path)
    engine = create_engine(_db(tmp_path))
    try:
        async with OtpService(engine, OtpSettings(), old, reload_kek=lambda: read_kek_file(kek_path)) as svc:
            assert (await svc.verify_signin("alice", keys[0].otp())).reason is Reason.ENROLLED
            await asyncio.to_thread(cli, "otp", "kek", "rotate")
            new_id = SecretBox(read_kek_file(kek_path)).kek_id
            assert svc.kek_id == SecretBox(old).kek_id  # not read yet: nothing needed it
            assert (await svc.verify_signin("bob", keys[1].otp())).reason is Reason.ENROLLED  # sealed under the new
            assert svc.kek_id == new_id
            assert (await svc.verify_signin("alice", keys[0].otp())).reason is Reason.VERIFIED
            info, _ = await svc.add_client("after the rotation")
    finally:
        await engine.dispose()
    _, clients, _ = await _rows(tmp_path)
    assert {c.kek_id for c in clients if c.id == info.id} == {new_id}
    assert "2 YubiKey keys and 1 OTP client keys" in await asyncio.to_thread(cli, "otp", "kek", "rotate")


async def test_a_key_under_an_unknown_kek_is_still_refused(cli, tmp_path):
    """Reading the source again does not make a wrong KEK right: the key is refused (no other KEK is taken)."""
    keys = [make_key(820_201)]
    (tmp_path / "keys.csv").write_bytes(secrets_file(keys))
    await asyncio.to_thread(cli, "yubikey", "import", str(tmp_path / "keys.csv"))
    wrong = bytes(range(32))
    engine = create_engine(_db(tmp_path))
    try:
        async with OtpService(engine, OtpSettings(), wrong, reload_kek=lambda: wrong) as svc:
            assert (await svc.verify_signin("alice", keys[0].otp())).reason is Reason.BACKEND_ERROR
    finally:
        await engine.dispose()


async def test_a_key_revoked_during_a_rotation_keeps_no_secret(engine, service, kek):
    """A revocation while the rotation re-seals: the revoked key ends with its secret wiped, never with the
    rotation's re-sealed copy written back."""
    keys = [make_key(820_301), make_key(820_302)]
    await import_keys(service, keys)
    reached, gate = asyncio.Event(), asyncio.Event()
    new = secrets.token_bytes(32)

    async def rotate():
        async with writer(engine).begin() as conn:
            return await reseal_all(PausedConnection(conn, sa.Update, reached, gate), kek, new)

    rotation = asyncio.create_task(rotate())
    await asyncio.wait_for(reached.wait(), 10)
    revocation = asyncio.create_task(service.revoke(820_301, actor="admin"))
    await asyncio.wait({revocation}, timeout=1)  # it waits for the rotation (or, unguarded, wipes the key now)
    gate.set()
    await rotation
    assert (await revocation).status == "REVOKED"
    async with engine.connect() as conn:
        rows = {r.serial: r for r in await conn.execute(sa.select(
            otp_yubikeys.c.serial, otp_yubikeys.c.status, otp_yubikeys.c.secret_sealed))}
    assert (rows[820_301].status, rows[820_301].secret_sealed) == ("REVOKED", b"")
    assert len(rows[820_302].secret_sealed) > 0
    async with OtpService(engine, OtpSettings(), new) as after:
        assert (await after.verify_signin("alice", keys[0].otp())).reason is Reason.REVOKED_KEY
        assert (await after.verify_signin("bob", keys[1].otp())).reason is Reason.ENROLLED


# ---- imports and new clients racing a rotation --------------------------------------------------

def _rotating_service(engine, kek, clock):
    """A service whose KEK source the test switches, as `otp kek rotate` moves the new file into place."""
    source = {"kek": kek}
    return OtpService(engine, OtpSettings(), kek, clock=clock, reload_kek=lambda: source["kek"]), source


async def _rotate(engine, old: bytes, new: bytes) -> tuple[int, int]:
    async with writer(engine).begin() as conn:
        return await reseal_all(conn, old, new)


def _pause_after_sealing(svc: OtpService) -> tuple[threading.Event, threading.Event]:
    """An import of `svc` seals its keys, sets the first event and waits for the second before it writes."""
    sealed, go_on = threading.Event(), threading.Event()
    real_seal = OtpService._seal_records

    def seal_then_pause(box, records):
        out = real_seal(box, records)
        sealed.set()
        go_on.wait(10)
        return out
    svc._seal_records = seal_then_pause
    return sealed, go_on


async def _signin_reason(engine, kek: bytes, clock, key) -> Reason:
    """What a server started afresh with only `kek` answers to the key's next OTP."""
    async with OtpService(engine, OtpSettings(), kek, clock=clock) as fresh:
        return (await fresh.verify_signin("alice", key.otp())).reason


async def test_an_import_sealed_before_a_rotation_is_sealed_again_under_the_new_kek(engine, kek, clock):
    """The rotation commits between the import's sealing and its write transaction: the import is written
    under the new KEK, usable after a restart, and the next rotation goes through."""
    svc, source = _rotating_service(engine, kek, clock)
    async with svc:
        sealed, go_on = _pause_after_sealing(svc)
        key = make_key(820_401)
        importing = asyncio.create_task(svc.import_secrets(secrets_file([key])))
        assert await asyncio.to_thread(sealed.wait, 10)
        new = secrets.token_bytes(32)
        assert await _rotate(engine, kek, new) == (0, 0)
        source["kek"] = new
        go_on.set()
        result = await importing
    assert result.ok and result.imported == 1, result.errors
    assert await _signin_reason(engine, new, clock, key) is Reason.ENROLLED
    assert await _rotate(engine, new, secrets.token_bytes(32)) == (1, 0)


async def test_an_import_written_before_a_rotation_is_re_sealed_by_it(engine, kek, clock, monkeypatch):
    """The import wrote its keys and has not committed when the rotation starts: the rotation waits for it and
    re-seals its keys too."""
    svc, source = _rotating_service(engine, kek, clock)
    async with svc:
        reached, gate = asyncio.Event(), asyncio.Event()
        real_carry = svc.store.carry_counters

        async def written_then_pause(conn, import_id):
            reached.set()
            await gate.wait()
            return await real_carry(conn, import_id)
        monkeypatch.setattr(svc.store, "carry_counters", written_then_pause)
        key = make_key(820_402)
        importing = asyncio.create_task(svc.import_secrets(secrets_file([key])))
        await asyncio.wait_for(reached.wait(), 10)
        new = secrets.token_bytes(32)
        rotating = asyncio.create_task(_rotate(engine, kek, new))
        await asyncio.wait({rotating}, timeout=1)  # it waits for the import (or, unguarded, misses its keys)
        gate.set()
        result = await importing
        await rotating
        source["kek"] = new
    assert result.ok and result.imported == 1, result.errors
    assert await _signin_reason(engine, new, clock, key) is Reason.ENROLLED
    assert await _rotate(engine, new, secrets.token_bytes(32)) == (1, 0)


async def test_an_import_meeting_a_rotation_whose_kek_is_not_in_place_is_refused(engine, kek, clock, monkeypatch):
    """The rotation committed but its KEK file is not in place (yet): the import is refused with a retryable
    503, nothing is written, and it goes through once the file is there."""
    from otp import service as service_module
    from otp.errors import BackendError

    monkeypatch.setattr(service_module, "KEK_SWITCH_SECONDS", 0.3)
    svc, source = _rotating_service(engine, kek, clock)
    async with svc:
        new = secrets.token_bytes(32)
        sealed, go_on = _pause_after_sealing(svc)
        key = make_key(820_403)
        importing = asyncio.create_task(svc.import_secrets(secrets_file([key])))
        assert await asyncio.to_thread(sealed.wait, 10)
        await _rotate(engine, kek, new)
        go_on.set()
        with pytest.raises(BackendError) as exc:
            await importing
        assert exc.value.status == 503 and "nothing was written" in exc.value.detail
        assert await svc.report() == []
        source["kek"] = new
        assert (await svc.import_secrets(secrets_file([key]))).imported == 1
    assert await _signin_reason(engine, new, clock, key) is Reason.ENROLLED
    assert await _rotate(engine, new, secrets.token_bytes(32)) == (1, 0)


async def test_a_client_added_during_a_rotation_is_sealed_under_the_new_kek(engine, kek, clock, monkeypatch):
    """The rotation commits between the client's KEK check and its write transaction: the client's key is
    written under the new KEK, its requests verify after a restart, and the next rotation goes through."""
    import base64
    import contextlib

    from otp import yubico

    svc, source = _rotating_service(engine, kek, clock)
    key = make_key(820_404)
    async with svc:
        await import_keys(svc, [key])
        reached, gate = asyncio.Event(), asyncio.Event()
        real_begin = svc.store.begin_write

        @contextlib.asynccontextmanager
        async def paused_begin():
            reached.set()
            await gate.wait()
            async with real_begin() as conn:
                yield conn
        monkeypatch.setattr(svc.store, "begin_write", paused_begin)
        adding = asyncio.create_task(svc.add_client("during the rotation"))
        await asyncio.wait_for(reached.wait(), 10)
        new = secrets.token_bytes(32)
        assert await _rotate(engine, kek, new) == (1, 0)
        source["kek"] = new
        gate.set()
        info, api_key = await adding
    async with OtpService(engine, OtpSettings(), new, clock=clock) as fresh:
        params = {"id": str(info.id), "otp": key.otp(), "nonce": secrets.token_hex(10)}
        params["h"] = yubico.sign(params, base64.b64decode(api_key))
        fields = yubico.decode_response(await fresh.verify_protocol(params))
    assert fields["status"] == "OK", fields
    assert await _rotate(engine, new, secrets.token_bytes(32)) == (1, 1)
