"""Entra and Intune answers no earlier check foresaw: the PKIOperation is answered with a CertRep (the token used
once, the rejection reported), never a 500."""
from __future__ import annotations

import uuid

import aiohttp
import pytest
from aiohttp import web

from scep_server.scep import PKIStatus
from tests.challenge.conftest import add_profile, build, enrol
from tests.challenge.peers import FakeIntune
from tests.challenge.test_delegated import intune_settings, secret_file  # noqa: F401
from tests.factories import rsa_key

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # about HTTP, not storage


class HugeLifetime(FakeIntune):
    """A token whose expires_in is an integer of 400 digits (JSON has no limit; a float cannot hold it)."""

    async def token(self, request):
        answer = await super().token(request)
        return web.Response(body=answer.body.replace(f'"expires_in": {self.token_lifetime}'.encode(),
                                                     b'"expires_in": ' + b"9" * 400),
                            content_type="application/json")


async def test_a_token_lifetime_too_large_for_a_float_is_no_500(server, secret_file):
    async with HugeLifetime() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file, retries=0))
        rep = await enrol(s, server, "intune", rsa_key(), "intune-challenge")
    assert fake.token_requests, "the token endpoint was asked"
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text  # an unreadable lifetime: the token is used once


class NestedDescription(FakeIntune):
    """A rejection whose errorDescription is a list nested `depth` times: deep enough, rendering it into the log
    line recursed past Python's limit (how deep depends on the stack: the test tries a range)."""

    depth: int = 0

    async def action(self, request):
        await super().action(request)
        nested = b"[" * self.depth + b"]" * self.depth
        return web.Response(body=b'{"code": "BadDeviceIdInChallenge", "errorDescription": ' + nested + b"}",
                            content_type="application/json")


async def test_a_deeply_nested_error_description_is_a_scep_failure(server, secret_file):
    key = rsa_key()
    async with NestedDescription() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file, retries=0))
        for depth in range(850, 1000):
            fake.depth = depth
            body = build(server, key, challenge="intune-challenge", cn="win-1", transaction_id=uuid.uuid4().hex)
            async with s.post(f"{server.url}/scep/intune?operation=PKIOperation", data=body) as resp:
                assert resp.status == 200, (depth, await resp.text())  # a CertRep FAILURE, not an internal error
    assert len(fake.actions()) == 150
