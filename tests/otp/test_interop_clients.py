"""Real validation clients against /wsapi/2.0/verify of the full application (`scep_server.app`, served
on a loopback port, on SQLite and PostgreSQL): Debian's ykclient and PyPI yubico-client, both checking
the response signatures.

OTPs come from Debian's ykgenerate (libyubikey-dev) for test vector H's secrets.
"""
from __future__ import annotations

import asyncio
import base64
import re

import pytest
from tests.helpers import require_tool
from tests.otp.conftest import import_keys, key_h
from tests.server import start_app

pytestmark = pytest.mark.interop

H_KEY, H_UID = "c68c9df8cbfe7d2f994cb904046c7218", "609963eae7b5"


async def ykgenerate(ctr: int, low: int, high: int, use: int) -> str:
    proc = await asyncio.create_subprocess_exec(require_tool("ykgenerate"), H_KEY, H_UID, f"{ctr:04x}", f"{low:04x}",
                                                f"{high:02x}", f"{use:02x}", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return "idkfefrdhtru" + out.decode().strip()


class Server:
    def __init__(self, url: str, client_id: int, key_b64: str, legacy_id: int) -> None:
        self.url, self.client_id, self.key_b64 = url, client_id, key_b64
        self.legacy_id = legacy_id  # a client that may send unsigned requests


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url) -> Server:
    app = await start_app(aiohttp_server, tmp_path, db_url)
    service = app.runtime.otp
    await import_keys(service, [key_h()])
    info, key = await service.add_client("interop")
    legacy, _ = await service.add_client("legacy", allow_unsigned=True)
    return Server(f"{app.url}/wsapi/2.0/verify", info.id, key, legacy.id)


async def ykclient(server: Server, otp: str, *, apikey: str | None = "", client_id: int | None = None
                   ) -> tuple[int, str]:
    args = [require_tool("ykclient"), "--debug", "--url", server.url]
    key = server.key_b64 if apikey == "" else apikey
    if key is not None:
        args += ["--apikey", key]
    args += [str(server.client_id if client_id is None else client_id), otp]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    m = re.search(r"Verification output \(\d+\): (.*)", out.decode())
    assert m, out.decode()
    return proc.returncode, m.group(1)


async def test_ykclient(server):
    otp = await ykgenerate(2, 0x8D40, 0x0F, 0)
    assert await ykclient(server, otp) == (0, "Success")
    rc, text = await ykclient(server, otp)  # ykclient sends a fresh nonce: the OTP itself is replayed
    assert (rc, text) == (2, "Yubikey OTP was replayed (REPLAYED_OTP)")
    # without a key ykclient sends no h: refused, unless the client is allowed unsigned requests
    rc, text = await ykclient(server, otp, apikey=None)
    assert rc == 3 and text.endswith("(MISSING_PARAMETER)"), text
    assert (await ykclient(server, otp, apikey=None, client_id=server.legacy_id))[0] == 2
    newer = await ykgenerate(2, 0x8D48, 0x0F, 1)
    assert (await ykclient(server, newer, apikey=None)) == (3, text)
    assert (await ykclient(server, newer, apikey=None, client_id=server.legacy_id)) == (0, "Success")
    tampered = newer[:-1] + ("c" if newer[-1] != "c" else "b")
    assert await ykclient(server, tampered) == (3, "Yubikey OTP was bad (BAD_OTP)")
    unknown_key = "ccccccbbbbbb" + newer[12:]
    assert await ykclient(server, unknown_key) == (3, "Yubikey OTP was bad (BAD_OTP)")


async def test_ykclient_unknown_client_and_bad_signature(server):
    otp = await ykgenerate(3, 0x0100, 0x01, 0)
    # unknown client: the reply is signed with an empty key, as YK-VAL does; a keyed client sees a bad signature
    assert await ykclient(server, otp, apikey=None, client_id=424242) == (
        3, "Client identity does not exist (NO_SUCH_CLIENT)")
    assert (await ykclient(server, otp, client_id=424242))[1].endswith("(BAD_SERVER_SIGNATURE)")
    # a wrong API key: we answer BAD_SIGNATURE signed with the client's real key, which that client can't check
    wrong = base64.b64encode(b"0123456789abcdefghij").decode()
    rc, text = await ykclient(server, otp, apikey=wrong)
    assert rc == 3 and text.endswith("(BAD_SERVER_SIGNATURE)")
    assert await ykclient(server, otp) == (0, "Success")  # the OTP was not consumed by the rejected requests


def yubico_client(server: Server, *, key: str | None = "", client_id: int | None = None):
    from yubico_client import Yubico

    return Yubico(str(server.client_id if client_id is None else client_id),
                  server.key_b64 if key == "" else key, api_urls=(server.url,))


async def test_yubico_client(server):
    from yubico_client.yubico_exceptions import StatusCodeError

    otp = await ykgenerate(4, 0x2000, 0x03, 0)
    resp = await asyncio.to_thread(yubico_client(server).verify, otp, timestamp=True, return_response=True)
    assert resp["status"] == "OK" and resp["otp"] == otp
    assert (resp["sessioncounter"], resp["sessionuse"], resp["timestamp"]) == ("4", "0", str(0x032000))
    with pytest.raises(StatusCodeError) as exc:
        await asyncio.to_thread(yubico_client(server).verify, otp)
    assert exc.value.status_code == "REPLAYED_OTP"
    bad = otp[:-1] + ("c" if otp[-1] != "c" else "b")
    with pytest.raises(Exception, match="NO_VALID_ANSWERS"):  # how yubico-client reports BAD_OTP
        await asyncio.to_thread(yubico_client(server).verify, bad)
    # keyboard layouts are translated client-side by yubico-client (ambiguously: it picks one of several
    # layouts at random), so Dvorak handling is tested against the server directly in test_service.py
    newer = await ykgenerate(4, 0x2008, 0x03, 1)
    assert await asyncio.to_thread(yubico_client(server).verify, newer.upper()) is True


async def test_yubico_client_unknown_client_and_bad_signature(server):
    from yubico_client.yubico_exceptions import InvalidClientIdError, SignatureVerificationError

    otp = await ykgenerate(5, 0x0001, 0x00, 0)
    with pytest.raises(InvalidClientIdError):
        await asyncio.to_thread(yubico_client(server, key=None, client_id=31337).verify, otp)
    with pytest.raises(SignatureVerificationError):  # keyed: the empty-key signature of NO_SUCH_CLIENT fails
        await asyncio.to_thread(yubico_client(server, client_id=31337).verify, otp)
    wrong = base64.b64encode(b"another twenty bytes").decode()
    with pytest.raises(SignatureVerificationError):
        await asyncio.to_thread(yubico_client(server, key=wrong).verify, otp)
    with pytest.raises(Exception, match="NO_VALID_ANSWERS"):  # unsigned: refused (MISSING_PARAMETER) by default
        await asyncio.to_thread(yubico_client(server, key=None).verify, otp)
    assert await asyncio.to_thread(yubico_client(server, key=None, client_id=server.legacy_id).verify, otp) is True
