"""One OTP submitted 100 times in parallel through two `scep-server serve` processes sharing one database
and one data directory: exactly one OK. Keys, the protocol client and the sign-in token are set up with
`scep-server` commands, as an operator would."""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from otp import yubico
from scep_server.cli import main
from tests.otp.conftest import TestKey as Key, make_key, secrets_file
from tests.server import serve_processes


def scep_server(data_dir: Path, db_url: str, *args: str, input: str | None = None) -> str:
    r = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], input=input,
                           env={"SCEP_SERVER_DATABASE__URL": db_url, "SCEP_SERVER_CONFIG": None})
    assert r.exit_code == 0, r.output
    return r.stdout


def fields_of(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)


async def protocol_race(urls: list[str], keys: list[Key], client_id: int, api_key: bytes) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:
        async def submit(url: str, otp: str, nonce: str) -> str:
            params = {"id": str(client_id), "otp": otp, "nonce": nonce}
            params["h"] = yubico.sign(params, api_key)
            async with http.get(f"{url}/wsapi/2.0/verify", params=params) as resp:
                assert resp.status == 200
                fields = yubico.decode_response(await resp.text())
            assert yubico.signature_matches(fields, api_key)
            assert fields["otp"] == otp and fields["nonce"] == nonce
            return fields["status"]

        for k in keys:
            otp = k.otp()
            # 100 submissions alternating between the two processes; ten reuse the nonce of another, so a
            # retry of the accepted request may come back as REPLAYED_REQUEST
            nonces = [f"race{secrets.token_hex(8)}" for _ in range(90)]
            nonces += nonces[:10]
            statuses = await asyncio.gather(*[submit(urls[i % 2], otp, nonce) for i, nonce in enumerate(nonces)])
            assert statuses.count("OK") == 1, statuses
            assert set(statuses) <= {"OK", "REPLAYED_OTP", "REPLAYED_REQUEST"}, statuses
            # the key goes on working with its next OTP, through either process
            assert await submit(urls[0], k.otp(), secrets.token_hex(10)) == "OK"
            assert await submit(urls[1], k.otp(), secrets.token_hex(10)) == "OK"


async def signin_race(urls: list[str], key: Key, token: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:
        async def submit(url: str, otp: str, user: str) -> tuple[int, str, bool]:
            async with http.post(f"{url}/api/v1/otp/verify", json={"user": user, "otp": otp}, headers=headers) as r:
                body = await r.json()
            return r.status, body["reason"], body["enrolled"]

        # the first OTP of an UNASSIGNED key, submitted 100 times for two different users: one enrolment
        otp = key.otp()
        results = await asyncio.gather(*[submit(urls[i % 2], otp, ("una", "uli")[i % 2]) for i in range(100)])
        ok = [i for i, r in enumerate(results) if r[0] == 200]
        assert len(ok) == 1 and results[ok[0]][1:] == ("enrolled", True), results
        # every other answer is a rejection: the OTP was used, the key now belongs to the other user,
        # or (after so many failures) the user or key is throttled
        rejected = {(status, reason) for i, (status, reason, _) in enumerate(results) if i != ok[0]}
        assert rejected <= {(403, "replayed_otp"), (403, "wrong_user"), (429, "throttled")}, results
        return ("una", "uli")[ok[0] % 2]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_one_otp_100_times_through_two_server_processes(db_url, tmp_path):
    data_dir = tmp_path / "data"
    keys = [make_key(77_000 + i) for i in range(3)]
    signin_key = make_key(77_100)
    with serve_processes(data_dir, db_url, count=2) as urls:
        # both processes use the key-encryption key the first one created in the shared data directory
        assert (data_dir / "otp-kek.key").exists()
        out = scep_server(data_dir, db_url, "yubikey", "import", "-", input=secrets_file(keys + [signin_key]).decode())
        assert "imported 4 keys" in out
        client = fields_of(scep_server(data_dir, db_url, "otp-client", "add", "--name", "race"))
        token = fields_of(scep_server(data_dir, db_url, "token", "create", "--scope", "signin", "--name", "race"))
        asyncio.run(protocol_race(urls, keys, int(client["id"]), base64.b64decode(client["key"])))
        winner = asyncio.run(signin_race(urls, signin_key, token["token"]))
        report = json.loads(scep_server(data_dir, db_url, "yubikey", "report", "--format", "json", "--serial", "77100"))
        assert [(k["status"], k["user"]) for k in report["keys"]] == [("ACTIVE", winner)]
        assert [e["event"] for e in report["keys"][0]["history"]].count("otp.key.enrolled") == 1
