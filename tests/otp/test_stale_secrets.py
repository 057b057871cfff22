"""A process that read a key's secrets before the key was deleted and imported again (with new secrets, under the
same serial and public ID) never accepts an OTP of the old secrets for the new key. On SQLite the new key can
even take the old row's id (the highest row id is reused)."""
from __future__ import annotations

import base64
import secrets

from otp import yubico
from otp.config import OtpSettings
from otp.service import OtpService
from trustkit.db import create_engine

from .conftest import TestKey, make_key, secrets_file


async def _reprogrammed(a: OtpService, old: TestKey) -> TestKey:
    await a.delete(old.serial)
    new = TestKey(serial=old.serial, public_id=old.public_id, private_id=secrets.token_bytes(6),
                  aes_key=secrets.token_bytes(16))
    assert (await a.import_secrets(secrets_file([new]))).ok
    return new


async def test_an_old_secret_cached_elsewhere_does_not_enrol_the_key_imported_again(db_url, kek, clock):
    eng_a, eng_b = create_engine(db_url), create_engine(db_url)
    try:
        async with OtpService(eng_a, OtpSettings(), kek, clock=clock) as a, \
                OtpService(eng_b, OtpSettings(), kek, clock=clock) as b:
            old = make_key(4243)
            assert (await a.import_secrets(secrets_file([old]))).ok
            info, client_key = await a.add_client("c")
            captured = old.otp()
            params = {"id": str(info.id), "otp": captured, "nonce": "abcdefghijklmnop"}
            params["h"] = yubico.sign(params, base64.b64decode(client_key))
            assert yubico.decode_response(await b.verify_protocol(params))["status"] == "OK"  # b holds the secrets
            new = await _reprogrammed(a, old)
            replay = await b.verify_signin("attacker", captured)
            assert not replay.ok, replay
            assert (await b.verify_signin("owner", new.otp())).ok  # b reads the new secrets
    finally:
        await eng_a.dispose()
        await eng_b.dispose()


async def _used_by_protocol(service: OtpService, key: TestKey) -> str:
    info, client_key = await service.add_client("c")
    otp = key.otp()
    params = {"id": str(info.id), "otp": otp, "nonce": "abcdefghijklmnop"}
    params["h"] = yubico.sign(params, base64.b64decode(client_key))
    assert yubico.decode_response(await service.verify_protocol(params))["status"] == "OK"
    return otp


async def test_an_otp_answered_before_a_key_is_deleted_is_a_replay_once_it_is_imported_again(service):
    """An unassigned key used through protocol 2.0, then deleted (alone, or with the whole factor), then imported
    again from the same secrets file: the OTP answered OK before is a replay, a newer one is accepted."""
    for how, serial in (("delete", 6001), ("delete_factor", 6002)):
        key = make_key(serial)
        data = secrets_file([key])
        assert (await service.import_secrets(data)).ok
        answered = await _used_by_protocol(service, key)
        await (service.delete(serial) if how == "delete" else service.delete_factor())
        assert (await service.import_secrets(data)).ok
        again = await service.verify_signin("attacker", answered)
        assert not again.ok and again.reason.value == "replayed_otp", (how, again)
        assert (await service.verify_signin("owner", key.otp())).ok


async def test_a_key_reprogrammed_with_new_secrets_starts_afresh(service):
    old = make_key(6003)
    assert (await service.import_secrets(secrets_file([old]))).ok
    await _used_by_protocol(service, old)
    await service.delete(6003)
    new = TestKey(serial=6003, public_id=old.public_id, private_id=secrets.token_bytes(6),
                  aes_key=secrets.token_bytes(16))
    assert (await service.import_secrets(secrets_file([new]))).ok
    assert (await service.verify_signin("owner", new.otp())).ok
