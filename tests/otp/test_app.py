"""The OTP factor inside the full application (scep_server.otpwiring): routes behind the core's bearer
tokens, the KEK created on first start, readiness, settings, on SQLite and PostgreSQL."""
from __future__ import annotations

import base64
import secrets
import stat

import aiohttp
import pytest

from otp import yubico
from scep_server.config import ConfigError, load_settings
from scep_server.otpwiring.feature import OtpStartError
from scep_server.runtime import initialise, open_runtime
from tests.factories import NOW, settings_for
from tests.otp.conftest import make_key, secrets_file
from tests.server import start_app


@pytest.fixture
async def app(aiohttp_server, tmp_path, db_url):
    return await start_app(aiohttp_server, tmp_path, db_url)


async def tokens(app) -> dict[str, str]:
    rt = app.runtime
    return {scope: (await rt.tokens.create(scope=scope, name=f"{scope}-tests", now=NOW))[1]
            for scope in ("admin", "signin")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_first_start_creates_a_private_kek_and_is_ready(app):
    kek = app.data_dir / "otp-kek.key"
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600
    assert len(base64.b64decode(kek.read_bytes())) == 32
    async with aiohttp.ClientSession() as s, s.get(app.url + "/readyz") as resp:
        body = await resp.json()
    assert body["checks"]["otp"] == "ok"  # (other features report their own checks)


async def test_signin_and_admin_api_with_core_tokens(app):

    tok = await tokens(app)
    keys = [make_key(600_001), make_key(600_002)]
    async with aiohttp.ClientSession(app.url) as http:
        # admin API: import, with the core's admin token only
        async with http.post("/api/v1/yubikeys/import", data=secrets_file(keys)) as r:
            assert r.status == 401 and r.content_type == "application/problem+json"
            assert "Bearer" in r.headers["WWW-Authenticate"]
        async with http.post("/api/v1/yubikeys/import", data=secrets_file(keys), headers=bearer(tok["signin"])) as r:
            assert r.status == 403
        async with http.post("/api/v1/yubikeys/import", data=secrets_file(keys), headers=bearer(tok["admin"])) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["imported"] == 2

        # sign-in API: the first valid OTP of an UNASSIGNED key enrols it
        otp = keys[0].otp()
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": otp}, headers=bearer(tok["admin"])) as r:
            assert r.status == 403  # an admin token is not a sign-in token
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": otp},
                             headers=bearer("dt_signin_" + secrets.token_urlsafe(32))) as r:
            assert r.status == 401
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": otp}, headers=bearer(tok["signin"])) as r:
            body = await r.json()
            assert r.status == 200 and body["status"] == "OK" and body["enrolled"] is True
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": otp}, headers=bearer(tok["signin"])) as r:
            body = await r.json()
            assert r.status == 403 and body["result"] == "REJECTED" and body["reason"] == "replayed_otp"
        async with http.post("/api/v1/otp/verify", json={"user": "bob", "otp": keys[0].otp()},
                             headers=bearer(tok["signin"])) as r:
            assert r.status == 403 and (await r.json())["reason"] != "ok"
        async with http.post("/api/v1/otp/verify", data=b"{not json", headers=bearer(tok["signin"])) as r:
            assert r.status == 400 and r.content_type == "application/problem+json"

        # report through the admin API: the enrolment, and who imported (the core token's name)
        async with http.get("/api/v1/yubikeys?status=ACTIVE", headers=bearer(tok["admin"])) as r:
            report = await r.json()
        assert [(k["serial"], k["status"], k["user"]) for k in report["keys"]] == [("600001", "ACTIVE", "ada")]
        admin_id = next(t.id for t in await app.runtime.tokens.list() if t.name == "admin-tests")
        assert report["keys"][0]["history"][0]["actor"] == f"token:{admin_id}:admin-tests"
        async with http.get("/api/v1/yubikeys?format=csv", headers=bearer(tok["admin"])) as r:
            assert r.status == 200 and r.content_type == "text/csv" and "600002" in await r.text()

        # revoke through the admin API; the key is never usable again
        async with http.post("/api/v1/yubikeys/600001/revoke", headers=bearer(tok["admin"])) as r:
            assert r.status == 200 and (await r.json())["status"] == "REVOKED"
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": keys[0].otp()},
                             headers=bearer(tok["signin"])) as r:
            assert r.status == 403 and (await r.json())["reason"] == "revoked_key"

        # a disabled core token stops working (the token store caches lookups for a few seconds)
        token_id = next(t.id for t in await app.runtime.tokens.list() if t.name == "admin-tests")
        await app.runtime.tokens.disable(token_id, now=NOW)
        async with http.get("/api/v1/yubikeys", headers=bearer(tok["admin"])) as r:
            assert r.status == 401


async def test_protocol_endpoint_in_the_application(app):

    service = app.runtime.otp
    key = make_key(600_100)
    assert (await service.import_secrets(secrets_file([key]))).ok
    info, b64 = await service.add_client("app")
    api_key = base64.b64decode(b64)
    otp = key.otp()
    params = {"id": str(info.id), "otp": otp, "nonce": "appnonce0123456789", "timestamp": "1"}
    params["h"] = yubico.sign(params, api_key)
    async with aiohttp.ClientSession(app.url) as http:
        for expected in ("OK", "REPLAYED_REQUEST"):
            async with http.get("/wsapi/2.0/verify", params=params) as r:
                assert r.status == 200 and r.content_type == "text/plain"
                text = await r.text()
            assert text.endswith("\r\n\r\n") or text.endswith("\r\n")
            fields = yubico.decode_response(text)
            assert yubico.signature_matches(fields, api_key)
            assert fields["status"] == expected and fields["otp"] == otp
        # no bearer token is involved in the protocol endpoint
        async with http.get("/wsapi/2.0/verify", params={"id": "x"}) as r:
            assert r.status == 200 and "status=MISSING_PARAMETER" in await r.text()


def test_otp_settings_are_typed(tmp_path):
    settings = load_settings(None, data_dir=str(tmp_path), otp={"kek_file": str(tmp_path / "k"),
                                                                "throttle_source": {"max_failures": 3}})
    assert settings.otp.throttle_source.max_failures == 3 and settings.otp.kek_path() == tmp_path / "k"
    with pytest.raises(ConfigError, match=r"otp\.kek_fil"):
        load_settings(None, otp={"kek_fil": "x"})
    with pytest.raises(ConfigError, match=r"otp\.commit_batch_max"):
        load_settings(None, otp={"commit_batch_max": 0})


def test_otp_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCEP_SERVER_OTP__KEK_FILE", str(tmp_path / "env.kek"))
    monkeypatch.setenv("SCEP_SERVER_OTP__REQUIRE_SIGNED_REQUESTS", "false")  # the default is true
    settings = load_settings(None)
    assert settings.otp.kek_path() == tmp_path / "env.kek" and settings.otp.require_signed_requests is False


async def test_configured_kek_file_and_a_replaced_kek(tmp_path, db_url):
    kek_file = tmp_path / "elsewhere" / "otp.kek"
    settings = settings_for(tmp_path / "data", db_url, otp={"kek_file": str(kek_file)})
    await initialise(settings)
    async with open_runtime(settings) as rt:
        assert (await rt.otp.import_secrets(secrets_file([make_key(600_200)]))).ok
        await rt.otp.add_client("sealed too")
        assert await rt.readiness["otp"]() == "ok"
    assert kek_file.exists() and not (tmp_path / "data" / "otp-kek.key").exists()
    kek_file.unlink()  # the key-encryption key is lost: no new one is made over keys sealed under it
    with pytest.raises(OtpStartError, match="is missing, but 2 YubiKey"):
        async with open_runtime(settings):
            pass
    assert not kek_file.exists()
    kek_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode())  # another key put in its place
    kek_file.chmod(0o600)
    async with open_runtime(settings) as rt:
        state = await rt.readiness["otp"]()
    assert state.startswith("error:") and "another key-encryption key" in state
