"""A server armed for attack: every kind of credential, and one object of each kind the routes name.

`armed` serves the full application with an admin, a sign-in and a disabled admin token, a dynamic profile
with Basic credentials for its challenge URL, a device, an imported YubiKey and a protocol 2.0 client.
`route_path` fills a route's placeholders with those objects, so that a request that passes
authentication reaches real data (a 2xx the attacker should not get is then visible).
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import aiohttp
import pytest
from yarl import URL

from scep_server.binding.service import services
from scep_server.challenge.basic import hash_password
from scep_server.profiles import ProfileSettings
from tests.otp.conftest import TestKey, make_key, secrets_file
from tests.server import RunningServer, start_app

USER, PASSWORD = "mdm-user", "correct horse battery staple"
PROFILE = "dyn"


@dataclass
class Armed:
    srv: RunningServer
    admin: str
    signin: str
    disabled: str
    device_id: str
    yubikey: TestKey
    client_id: int
    client_key: str

    @property
    def url(self) -> str:
        return self.srv.url

    def credentials(self) -> dict[str, dict[str, str]]:
        """Authorization headers by name (the request's only difference in the matrix)."""
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        wrong = base64.b64encode(f"{USER}:wrong password".encode()).decode()
        return {  # the right Basic first: wrong ones then lock the client out of the challenge URL (429)
            "basic-right": {"Authorization": "Basic " + basic},
            "none": {},
            "bearer-empty": {"Authorization": "Bearer "},
            "bearer-garbage": {"Authorization": "Bearer dt_admin_" + "A" * 43},
            "bearer-no-space": {"Authorization": "Bearer" + self.admin},
            "other-scheme": {"Authorization": "Token " + self.admin},
            "basic-malformed": {"Authorization": "Basic !!!not-base64"},
            "disabled-admin": {"Authorization": "Bearer " + self.disabled},
            "signin": {"Authorization": "Bearer " + self.signin},
            "admin": {"Authorization": "Bearer " + self.admin},
            "basic-wrong": {"Authorization": "Basic " + wrong},
            "basic-no-colon": {"Authorization": "Basic " + base64.b64encode(USER.encode()).decode()},
            "basic-not-utf8": {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xc0\xaf").decode()},
            "basic-long": {"Authorization": "Basic " + base64.b64encode(f"{USER}:{'p' * 6000}".encode()).decode()},
            "basic-user-only": {"Authorization": "Basic " + base64.b64encode(f"{USER}:".encode()).decode()},
        }

    def route_path(self, canonical: str) -> str:
        values = {"profile": PROFILE, "ca": "default", "name": "default.crl", "device_id": self.device_id,
                  "action": "suspend", "serial": str(self.yubikey.serial), "id": str(self.client_id),
                  "source": "jamf", "request": "MAA%3D",  # {request}: an OCSP GET's URL-encoded base64 request
                  "partition": "0"}
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], canonical)

    def session(self) -> aiohttp.ClientSession:
        # no cookie jar, no redirects followed by default below, paths sent as written
        return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(limit=8))

    def raw_url(self, path: str) -> URL:
        return URL(self.url + path, encoded=True)


async def arm(aiohttp_server, tmp_path, db_url) -> Armed:
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    rt = srv.runtime
    now = rt.clock()
    admin = (await rt.tokens.create(scope="admin", name="adv-admin", now=now))[1]
    signin = (await rt.tokens.create(scope="signin", name="adv-signin", now=now))[1]
    disabled_id, disabled = await rt.tokens.create(scope="admin", name="adv-disabled", now=now)
    assert await rt.tokens.disable(disabled_id, now=now)
    await rt.profiles.create(PROFILE, ca=next(iter(rt.cas)), challenge_kind="dynamic", now=now, settings=ProfileSettings(
        challenge={"credentials": {"username": USER, "password_hash": hash_password(PASSWORD, log2_n=10)}}))
    device = await services(rt).devices.create(None, name="adversarial", actor="tests")
    otp = rt.otp
    key = make_key(700_001)
    result = await otp.import_secrets(secrets_file([key]), actor="tests")
    assert result.ok, result.to_json()
    info, client_key = await otp.add_client("adversarial")
    for publisher in rt.crl.publishers.values():  # "not published yet" is a fair 503: probe once they serve
        await publisher.wait_newer(None, timeout=120)
    return Armed(srv=srv, admin=admin, signin=signin, disabled=disabled, device_id=device.id, yubikey=key,
                 client_id=info.id, client_key=client_key)


@pytest.fixture
async def armed(aiohttp_server, tmp_path, db_url) -> Armed:
    return await arm(aiohttp_server, tmp_path, db_url)
