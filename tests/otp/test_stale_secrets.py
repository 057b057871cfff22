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
