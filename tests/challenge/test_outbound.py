"""Outbound calls of delegated challenges: bounded answers, and https for webhooks and Intune."""
from __future__ import annotations

import aiohttp
import pytest
from pydantic import ValidationError

from scep_server.challenge.config import ChallengeConfigError, WebhookSettings, delegated_settings
from scep_server.scep import FailInfo, PKIStatus
from tests.challenge.conftest import add_profile, enrol
from tests.challenge.peers import CLIENT_ID, TENANT, FakeIntune, WebhookReceiver
from tests.challenge.test_delegated import (hook_secret, intune_settings, issued_count, secret_file,  # noqa: F401
                                           webhook_settings)
from tests.factories import rsa_key

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # these tests are about HTTP, not storage


@pytest.mark.parametrize("chunked", [False, True])
@SQLITE
async def test_an_oversized_webhook_answer_is_refused(server, hook_secret, chunked):
    async with WebhookReceiver(allowed={"ok"}, padding=100_000, chunked=chunked) as hook, \
            aiohttp.ClientSession() as s:
        await add_profile(server, "big", "delegated", webhook_settings(hook, hook_secret))
        rep = await enrol(s, server, "big", rsa_key(), "ok")
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "too large" in rep.fail_text
        # within a larger configured cap the same answer is read
        await add_profile(server, "roomy", "delegated", webhook_settings(hook, hook_secret,
                                                                         max_response_bytes=200_000))
        assert (await enrol(s, server, "roomy", rsa_key(), "ok")).status is PKIStatus.SUCCESS


@pytest.mark.parametrize("chunked", [False, True])
@SQLITE
async def test_an_oversized_intune_answer_is_refused(server, secret_file, chunked):
    async with FakeIntune(padding=400_000, chunked=chunked) as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file, retries=0))
        rep = await enrol(s, server, "intune", rsa_key(), "intune-challenge")
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST
        assert "unavailable" in rep.fail_text and "262144" in rep.fail_text
        assert fake.actions() == ["validateRequest"]


def test_webhook_urls_must_be_https():
    secret = {"env": "HOOK_SECRET"}
    WebhookSettings(url="https://hooks.example/scep", secret=secret)
    for url, extra in [("http://hooks.example/scep", {}), ("http://127.0.0.1:9/hook", {}),
                       ("http://hooks.example/scep", {"allow_http_loopback": True}),
                       ("http://10.0.0.1/hook", {"allow_http_loopback": True})]:
        with pytest.raises(ValidationError, match="must be https"):
            WebhookSettings(url=url, secret=secret, **extra)
    with pytest.raises(ValidationError, match="notify_url must be https"):
        WebhookSettings(url="https://hooks.example/scep", notify_url="http://hooks.example/n", secret=secret)
    for url in ("http://127.0.0.1:9/hook", "http://[::1]:9/hook", "http://localhost:9/hook"):
        WebhookSettings(url=url, secret=secret, allow_http_loopback=True)


@SQLITE
async def test_a_plain_http_webhook_is_not_called(server, hook_secret):
    async with WebhookReceiver(allowed={"ok"}) as hook, aiohttp.ClientSession() as s:
        await add_profile(server, "plain", "delegated", webhook_settings(hook, hook_secret,
                                                                         allow_http_loopback=False))
        rep = await enrol(s, server, "plain", rsa_key(), "ok")
        assert rep.status is PKIStatus.FAILURE and "must be https" in rep.fail_text
        assert hook.received == []


@SQLITE
async def test_intune_discovered_endpoint_must_be_https(server, secret_file):
    """The bearer token and the device's CSR go to the endpoint Graph names: a plain-http one is not used."""
    async with FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file))
        fake.service_uri = "http://intune-scep.example.net/ScepRequestValidationFEService/"
        rep = await enrol(s, server, "intune", rsa_key(), "c")
        assert rep.status is PKIStatus.FAILURE and "https://" in rep.fail_text
        assert fake.token_requests == [fake.graph_scope] and fake.actions() == []
        assert await issued_count(server, "intune") == 0
        # nothing was cached: once Graph names an https (here: a loopback) endpoint, Intune is asked
        fake.service_uri = None
        rep = await enrol(s, server, "intune", rsa_key(), "c")
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        assert fake.discovery_requests == 2 and fake.actions() == ["validateRequest", "successNotification"]


@pytest.mark.parametrize("field", ["authority_url", "graph_url"])
def test_intune_credentials_go_only_over_https(field, secret_file):
    settings = {"tenant": TENANT, "client_id": CLIENT_ID, "client_secret": {"file": str(secret_file)}}
    for ok in ("https://login.microsoftonline.us/", "http://127.0.0.1:8080", "http://localhost"):
        assert delegated_settings({"provider": "intune", "intune": {**settings, field: ok}})
    for bad in ("http://login.microsoftonline.com", "ftp://127.0.0.1", "https://", "login.microsoftonline.com",
                "http://[::1"):
        with pytest.raises(ChallengeConfigError, match=field):
            delegated_settings({"provider": "intune", "intune": {**settings, field: bad}})
