"""The admin console against a real server (in-process, on 127.0.0.1): cookies are handled by hand, since
aiohttp's cookie jar ignores those of an IP address, and redirects are never followed."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.cookies import SimpleCookie

import aiohttp
import pytest

from scep_server.ca.authority import random_serial
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from tests.factories import csr, record_issued, rsa_key
from tests.server import RunningServer, start_app
from trustkit.clock import SettableClock

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5))


@dataclass
class Console:
    srv: RunningServer
    http: aiohttp.ClientSession
    admin: str = ""
    admin_id: str = ""
    key: object = field(default_factory=rsa_key)

    @property
    def url(self) -> str:
        return self.srv.url

    async def get(self, path: str, cookie: str | None = None, headers: dict | None = None):
        """(status, headers, text) of a GET."""
        hdrs = {**({"Cookie": f"console_session={cookie}"} if cookie else {}), **(headers or {})}
        async with self.http.get(self.url + path, headers=hdrs, allow_redirects=False) as r:
            return r.status, r.headers, await r.text()

    async def post(self, path: str, data: dict, cookie: str | None = None, headers: dict | None = None):
        hdrs = {**({"Cookie": f"console_session={cookie}"} if cookie else {}), **(headers or {})}
        async with self.http.post(self.url + path, data=data, headers=hdrs, allow_redirects=False) as r:
            return r.status, r.headers, await r.text()

    async def sign_in(self, token: str | None = None, headers: dict | None = None) -> tuple[str, SimpleCookie]:
        """The session cookie's value and the parsed Set-Cookie of a successful sign-in."""
        status, hdrs, _ = await self.post("/admin/login", {"token": token or self.admin}, headers=headers)
        assert status == 303 and hdrs["Location"] == "/admin/", status
        jar = SimpleCookie()
        jar.load(hdrs["Set-Cookie"])
        return jar["console_session"].value, jar

    async def csrf(self, cookie: str, path: str = "/admin/") -> str:
        status, _, text = await self.get(path, cookie)
        assert status == 200, status
        return CSRF.search(text).group(1)

    async def issue(self, cn: str = "device", profile: str = "default") -> str:
        rt = self.srv.runtime
        ca = rt.cas["default"]
        now = rt.clock()
        cert = ca.issue(csr(self.key, cn), IssuancePolicy(CertificateTemplate()), serial=random_serial(), now=now)
        return await record_issued(rt.engine, ca, cert, issued_at=now, profile=profile)


async def open_console(aiohttp_server, tmp_path, db_url, clock=None, **extra) -> Console:
    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock, **extra)
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    console = Console(srv, http)
    console.admin_id, console.admin = await srv.runtime.tokens.create(scope="admin", name="console-admin",
                                                                      now=srv.runtime.clock())
    return console


@pytest.fixture
async def console(aiohttp_server, tmp_path, db_url, clock):
    c = await open_console(aiohttp_server, tmp_path, db_url, clock)
    try:
        yield c
    finally:
        await c.http.close()
