"""An Entra token endpoint answering an access_token with CR/LF (which aiohttp refuses to put in a header): the
PKIOperation is answered with a CertRep FAILURE ("Intune validation is unavailable"), not a 500."""
from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from scep_server.scep import PKIStatus
from tests.challenge.conftest import add_profile, build, clock, server  # noqa: F401
from tests.challenge.peers import FakeIntune
from tests.challenge.test_delegated import intune_settings, secret_file  # noqa: F401
from tests.factories import rsa_key

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


class CrlfToken(FakeIntune):
    async def token(self, request):
        await request.post()
        return web.json_response({"token_type": "Bearer", "access_token": "abc\r\nX-Evil: 1", "expires_in": 3600})


async def test_a_crlf_access_token_is_a_scep_failure_not_a_500(server, secret_file):
    async with CrlfToken() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file, retries=0))
        key = rsa_key()
        body = build(server, key, challenge="intune-challenge", cn="win-1")
        async with s.post(f"{server.url}/scep/intune?operation=PKIOperation", data=body) as resp:
            status, text = resp.status, await resp.read()
    assert status == 200, (status, text[:200])  # a CertRep FAILURE, not an internal error
