"""What the challenge capability records in the metrics (scep_server.metrics): one-time challenges issued and
redeemed or refused, and delegated validations by provider and outcome, scraped from the running server."""
from __future__ import annotations

import aiohttp
import pytest

from scep_server.scep import PKIStatus
from tests.app.test_metrics import scrape, value
from tests.challenge.conftest import add_profile, dynamic, enrol
from tests.challenge.peers import FakeIntune, WebhookReceiver
from tests.challenge.test_delegated import hook_secret, intune_settings, secret_file, webhook_settings  # noqa: F401
from tests.factories import rsa_key

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def test_dynamic_challenges_issued_and_redeemed(server):
    await add_profile(server, "jamf", "dynamic", dynamic())
    before = await scrape(server.url)
    issued = [await server.runtime.challenges.new_challenge("jamf", source="test") for _ in range(2)]
    async with aiohttp.ClientSession() as s:
        assert (await enrol(s, server, "jamf", rsa_key(), issued[0].challenge)).status is PKIStatus.SUCCESS
        assert (await enrol(s, server, "jamf", rsa_key(), issued[0].challenge)).status is PKIStatus.FAILURE  # used
        assert (await enrol(s, server, "jamf", rsa_key(), "never-issued")).status is PKIStatus.FAILURE
    after = await scrape(server.url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("scep_challenges_issued_total", profile="jamf") == 2
    assert delta("scep_challenge_redemptions_total", profile="jamf", outcome="redeemed") == 1
    assert delta("scep_challenge_redemptions_total", profile="jamf", outcome="refused") == 2
    assert delta("group_commit_batch_size_count", store="challenge.issue") == 2
    assert delta("group_commit_batch_size_count", store="challenge.redeem") >= 1


async def test_delegated_validations_by_provider_and_outcome(server, hook_secret, secret_file, tmp_path):  # noqa: F811
    wrong = tmp_path / "wrong"
    wrong.write_text("other")
    before = await scrape(server.url)
    async with WebhookReceiver(allowed={"letmein"}) as hook, FakeIntune() as fake, aiohttp.ClientSession() as s:
        await add_profile(server, "hooked", "delegated", webhook_settings(hook, hook_secret))
        await add_profile(server, "wrongsig", "delegated", webhook_settings(hook, wrong))
        await add_profile(server, "intune", "delegated", intune_settings(fake, secret_file))
        assert (await enrol(s, server, "hooked", rsa_key(), "letmein")).status is PKIStatus.SUCCESS
        assert (await enrol(s, server, "hooked", rsa_key(), "guess")).status is PKIStatus.FAILURE
        assert (await enrol(s, server, "wrongsig", rsa_key(), "letmein")).status is PKIStatus.FAILURE
        assert (await enrol(s, server, "intune", rsa_key(), "intune-challenge", cn="win-1")).status \
            is PKIStatus.SUCCESS
        assert (await enrol(s, server, "intune", rsa_key(), None, cn="win-2")).status is PKIStatus.FAILURE
    after = await scrape(server.url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("scep_delegated_validations_total", provider="webhook", outcome="allowed") == 1
    assert delta("scep_delegated_validations_total", provider="webhook", outcome="denied") == 1
    assert delta("scep_delegated_validations_total", provider="webhook", outcome="unavailable") == 1
    assert delta("scep_delegated_validations_total", provider="intune", outcome="allowed") == 1
    assert delta("scep_delegated_validations_total", provider="intune", outcome="denied") == 1
    assert delta("scep_delegated_validation_duration_seconds_count", provider="webhook", outcome="allowed") == 1
    assert delta("scep_enrolments_total", profile="hooked", message_type="PKCSReq", outcome="FAILURE",
                 fail_info="BAD_REQUEST") == 1
