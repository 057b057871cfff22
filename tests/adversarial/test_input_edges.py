"""Edges of input handling: `$` before a final newline, digits of other scripts, nesting, readiness texts."""
from __future__ import annotations

import asyncio
import json
import os
import types

import aiohttp
import click
import pytest
import structlog

from scep_server.ca.inventory import Reason
from scep_server.ca.revocation import parse_reason
from scep_server.cli import _serial_arg
from scep_server.profiles import ProfileError
from scep_server.scep import ContentCipher, MessageType, client
from trustkit import der
from trustkit.http import MAX_DEPTH, BadJSON, loads_object
from tests.factories import rsa_key

pytestmark_sqlite = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# ---- JSON bodies (the reader every core JSON route uses) ----------------------------------------------

@pytest.mark.parametrize("raw", [
    b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"a": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}",  # deeper than MAX_DEPTH, within the parser
    b'{"a": 1, "a": 2}', b'{"a": NaN}', b'{"a": 1e999}', b'{"a": ' + b"1" * 5000 + b"}",
    b'{"a": "\\u0000"}', b'{"a": "\\ud800"}', b'{"\\udfff": 1}', b'{"a": "\xff"}', b"[]", b"1", b"",
])
def test_a_body_that_is_not_one_plain_object_is_refused(raw):
    with pytest.raises(BadJSON):
        loads_object(raw)


@pytest.mark.parametrize("raw", [
    b'{"a": [' + b",".join([b"0"] * 120_000) + b"]}",            # 240 KB of numbers
    b"{" + b",".join(b'"k%d": null' % i for i in range(10_000)) + b"}",  # 10,000 keys and their values
])
def test_a_body_of_more_than_10000_values_is_refused(raw):
    with pytest.raises(BadJSON, match="more than 10000 values"):
        loads_object(raw)
    assert len(loads_object(b'{"a": [' + b",".join([b"0"] * 9_000) + b"]}")["a"]) == 9_000

def test_a_plain_object_is_read():
    nested = {"a": "b"}
    for _ in range(MAX_DEPTH - 2):
        nested = {"n": nested}
    doc = {"device_id": "dev-1", "n": 5, "f": 1.5, "ok": True, "none": None, "list": ["x", 1], "deep": nested,
           "emoji": "\U0001F600", "digits": "\u00b2"}
    assert loads_object(json.dumps(doc).encode()) == doc


# ---- names: `$` matches before a final newline --------------------------------------------------------

@pytestmark_sqlite
async def test_a_device_id_with_a_final_newline_is_a_400(armed):
    headers = {"Authorization": "Bearer " + armed.admin}
    async with armed.session() as session:
        for device_id in ("dev-1\n", "dev-2\r\n", "\ndev-3"):
            async with session.post(armed.url + "/api/v1/devices", json={"id": device_id}, headers=headers) as r:
                assert r.status == 400, (device_id, r.status, await r.text())
        async with session.post(armed.url + "/api/v1/attestation/challenge", json={"device_id": armed.device_id + "\n"},
                                headers={"Authorization": "Bearer " + armed.signin}) as r:
            assert r.status == 400, await r.text()
        async with session.get(armed.url + "/api/v1/devices", headers=headers) as r:
            assert all("\n" not in d["id"] for d in (await r.json())["devices"])


async def test_a_profile_name_with_a_final_newline_is_refused(engine, tmp_path):
    from scep_server.profiles import ProfileStore
    from tests.factories import NOW, make_ca, register_ca

    await register_ca(engine, make_ca(tmp_path))
    store = ProfileStore(engine)
    for name in ("jamf\n", "jamf\r\n", "\njamf"):
        with pytest.raises(ProfileError, match="invalid profile name"):
            await store.create(name, ca="default", challenge_kind="static", static_secret="s", now=NOW)
    assert (await store.create("jamf", ca="default", challenge_kind="static", static_secret="s", now=NOW)).name == "jamf"


# ---- digits of other scripts ('²'.isdigit() is True, int('١٢', 16) == 0x12) -----------------------------

@pytest.mark.parametrize("text", ["\u0661", "\u00b2", "\uff11", "1\u0661"])
def test_a_revocation_reason_of_other_digits_is_refused(text):
    with pytest.raises(ValueError):
        parse_reason(text)
    assert parse_reason("1") is Reason.KEY_COMPROMISE


@pytest.mark.parametrize("text", ["\u0661\u0662", "\uff11\uff12", "1_2", "+12", "-12", " ", "", "1" * 41])
def test_a_serial_argument_is_ascii_hex_only(text):
    with pytest.raises(click.BadParameter):
        _serial_arg(text)
    assert _serial_arg("0x0A:bC") == "abc"


@pytestmark_sqlite
async def test_a_scep_message_type_of_other_digits_is_no_500(armed, monkeypatch):
    """messageType is a PrintableString of ASCII digits; a UTF8String '¹⁹' (isdigit() is True) is refused."""
    real = der.printable
    monkeypatch.setattr(client, "der", types.SimpleNamespace(**{
        **vars(der), "printable": lambda text: der.utf8("\u00b9\u2079") if text == "19" else real(text)}))
    key = rsa_key()
    ca = armed.srv.runtime.cas["default"]
    body = client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(key, "digits", armed.srv.challenge()),
        signer_cert_der=client.make_self_signed_signer(key), signer_key=key, recipient_cert_der=ca.ra_cert_der,
        transaction_id="digits-1", sender_nonce=os.urandom(16), cek=os.urandom(16), iv=os.urandom(16),
        cipher=ContentCipher.AES128_CBC)
    async with armed.session() as session:
        async with session.post(armed.url + "/scep/default?operation=PKIOperation", data=body) as r:
            assert r.status < 500, await r.text()
            if r.status == 200:
                rep = client.parse_cert_rep(await r.read(), key, ra_cert_der=ca.ra_cert_der)
                assert rep.fail_info is not None


# ---- readiness: which check failed, never why -------------------------------------------------------------

@pytestmark_sqlite
async def test_readyz_names_the_failed_check_without_its_error_text(armed):
    rt = armed.srv.runtime
    secret = "password=hunter2 at /srv/secret/path"

    def broken() -> str:
        raise RuntimeError(secret)

    readiness = rt.readiness
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # the first CRL is published shortly after start
            async with session.get(armed.url + "/readyz") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert r.status == 200
        readiness["probe"] = lambda: f"error: cannot open {secret}"
        readiness["raising"] = broken
        with structlog.testing.capture_logs() as logs:
            async with session.get(armed.url + "/readyz") as r:
                text = await r.text()
                body = json.loads(text)
            async with session.get(armed.url + "/readyz") as r:
                assert r.status == 503
        assert r.status == 503 and body["ready"] is False
        assert body["checks"]["probe"] == "failed" and body["checks"]["raising"] == "failed"
        assert body["checks"]["database"] == "ok"
        assert "hunter2" not in text and "RuntimeError" not in text
        # the reasons went to the log, once each while they do not change
        failed = [e for e in logs if e["event"] == "readyz.check_failed"]
        assert sorted(e["check"] for e in failed) == ["probe", "raising"]
        assert all(secret in e["detail"] for e in failed)
        del readiness["probe"], readiness["raising"]

        from trustkit.db import create_engine
        unreachable = create_engine("postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/nowhere")
        real_engine = rt.engine
        rt.engine = unreachable
        try:
            async with session.get(armed.url + "/readyz") as r:
                text = await r.text()
                assert r.status == 503 and json.loads(text)["checks"]["database"] == "failed"
                assert "hunter2" not in text and "Error" not in text and "127.0.0.1" not in text
        finally:
            rt.engine = real_engine
            await unreachable.dispose()
