"""Entra and Intune answers no earlier check foresaw: the PKIOperation is answered with a CertRep (the token used
once, the rejection reported), never a 500."""
from __future__ import annotations

import uuid

import aiohttp
import pytest
from aiohttp import web

from scep_server.scep import PKIStatus
from tests.challenge.conftest import add_profile, build, enrol
from tests.challenge.peers import FakeIntune, WebhookReceiver
from tests.challenge.test_delegated import hook_secret, intune_settings, secret_file, webhook_settings  # noqa: F401
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


@pytest.mark.parametrize("host", ["intune..example.net", "a" * 64 + ".example.net"])
async def test_a_discovered_endpoint_whose_host_cannot_be_looked_up_is_a_scep_failure(server, secret_file, host):
    """A host name with an empty label or one of more than 63 characters: the resolver's IDNA encoding raised
    UnicodeError, which no retry expected (HTTP 500)."""
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file, retries=0))
        fake.service_uri = f"https://{host}/ScepRequestValidationFEService/"
        rep = await enrol(s, server, "intune", rsa_key(), "intune-challenge")
    assert rep.status is PKIStatus.FAILURE and "unavailable" in rep.fail_text, rep.fail_text
    assert fake.actions() == []


async def test_a_webhook_whose_host_cannot_be_looked_up_is_a_scep_failure(server, hook_secret):
    """The same host names as a profile's webhook URL: the profile is misconfigured (the call raised UnicodeError,
    an HTTP 500 at every enrolment)."""
    async with WebhookReceiver(allowed={"ok"}) as hook, aiohttp.ClientSession() as s:
        await add_profile(server, "hook", "delegated", webhook_settings(hook, hook_secret,
                                                                        url="https://hook..example.net/hook"))
        rep = await enrol(s, server, "hook", rsa_key(), "ok")
    assert rep.status is PKIStatus.FAILURE and "misconfigured" in rep.fail_text, rep.fail_text
