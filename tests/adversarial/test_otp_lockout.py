"""The YubiKey lockout probe: garbage OTPs carrying a victim's public ID (visible in every OTP the victim ever
typed), over the unsigned and signed protocol 2.0 and the sign-in API, must not lock the victim out."""
from __future__ import annotations

import secrets

from otp import yubico
from tests.otp.conftest import clock, kek, make_key, otp_settings, service  # noqa: F401 - fixtures
from tests.otp.test_web import SIGNIN, api, import_via_api, new_client, signed_query  # noqa: F401 - fixture


# ---- nobody can lock out someone else's key ---------------------------------------------------

async def test_garbage_with_a_victims_public_id_does_not_lock_the_victim_out(api):
    cid, key = await new_client(api)
    victim = make_key(90)
    await import_via_api(api, [victim])
    resp = await api.post("/api/v1/otp/verify", json={"user": "victim", "otp": victim.otp()}, headers=SIGNIN)
    assert resp.status == 200
    for _ in range(15):
        garbage = make_key(1, public_id=victim.public_id).otp()  # the public ID is in every OTP ever typed
        nonce = secrets.token_hex(10)
        await api.get("/wsapi/2.0/verify", params={"id": str(cid), "otp": garbage, "nonce": nonce})
        params, _ = signed_query(cid, key, garbage, nonce + "x")
        await api.get("/wsapi/2.0/verify", params=params)
        await api.post("/api/v1/otp/verify", json={"user": "victim", "otp": garbage}, headers=SIGNIN)
    params, _ = signed_query(cid, key, victim.otp(), secrets.token_hex(10))
    fields = yubico.decode_response(await (await api.get("/wsapi/2.0/verify", params=params)).text())
    assert fields["status"] == "OK", fields
    resp = await api.post("/api/v1/otp/verify", json={"user": "victim", "otp": victim.otp()}, headers=SIGNIN)
    assert resp.status == 200, await resp.text()
