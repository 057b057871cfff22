"""The username's lockout is no lever against the real client: the username of the challenge endpoint is no
secret, so failures from other addresses could lock it and keep Jamf Pro (or an NDES scraper) from its one-time
challenges. An address that logged in with the username and its password within challenge.known_address_hours
(recorded in the database, for every process and instance) is not held back by the username's lock; an unknown
address still is, and a known address still answers for its own failures."""
from __future__ import annotations

import time
from datetime import timedelta

import aiohttp
import pytest
from structlog.testing import capture_logs

from scep_server.app import create_app
from scep_server.challenge.basic import CredentialChecker
from scep_server.challenge.config import BasicCredentials
from tests.app.test_metrics import scrape, value
from tests.challenge.conftest import FAST_HASH, PASSWORD, USER, add_profile, dynamic
from tests.challenge.test_login_throttle import basic
from tests.openapi_check import attach as check_against_openapi
from tests.server import free_port, start_app

SCRAPER = "203.0.113.5"
PAGE = "The enrollment challenge password is:"


@pytest.fixture
async def proxied(aiohttp_server, tmp_path, db_url, clock):
    """The app behind a trusted reverse proxy on 127.0.0.1, with the default limits (5 per address, 20 per
    username, 300 s)."""
    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock,
                          server={"trusted_proxies": ["127.0.0.1/32"]}, challenge={"scrypt_log2_n": 10})
    await add_profile(srv, "jamf", "dynamic", dynamic())
    return srv


async def get(s: aiohttp.ClientSession, url: str, headers: dict) -> tuple[int, str, "str | None"]:
    async with s.get(url, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers.get("Retry-After")


async def lock_the_username(s: aiohttp.ClientSession, url: str) -> list[int]:
    """What the reproduction did: 4 addresses, 5 wrong passwords each (20 failures: the username's limit)."""
    codes = []
    for a in range(4):
        for i in range(5):
            codes.append((await get(s, url, basic(USER, f"guess-{a}-{i}", f"198.51.100.{10 + a}")))[0])
    return codes


def forget_cached_logins(srv) -> None:
    """What the credential cache's expiry (or another worker) does: the next login checks the password."""
    srv.runtime.challenges.credentials._ok.clear()


async def test_a_scraper_that_logged_in_before_still_gets_its_challenge_while_the_username_is_locked(proxied):
    url = f"{proxied.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 200
        with capture_logs() as logs:
            assert set(await lock_the_username(s, url)) == {401}
        forget_cached_logins(proxied)
        # an address that never logged in is held back by the username's lock, the right password included
        status, _, retry_after = await get(s, url, basic(USER, PASSWORD, "203.0.113.77"))
        assert status == 429 and 0 < int(retry_after) <= 300
        # the scraper logged in before: it is not
        status, body, _ = await get(s, url, basic(USER, PASSWORD, SCRAPER))
        assert status == 200 and PAGE in body, (status, retry_after)
    locked = [e for e in logs if e["event"] == "challenge.username_locked"]
    assert len(locked) == 1 and locked[0]["profile"] == "jamf" and locked[0]["username"] == USER
    assert locked[0]["lockout_seconds"] == 300 and locked[0]["known_address_hours"] == 24


async def test_a_known_ipv6_client_is_known_by_its_64(proxied):
    url = f"{proxied.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        assert (await get(s, url, basic(USER, PASSWORD, "2001:db8:1:2::10")))[0] == 200
        await lock_the_username(s, url)
        forget_cached_logins(proxied)
        assert (await get(s, url, basic(USER, PASSWORD, "2001:db8:1:2::99")))[0] == 200
        forget_cached_logins(proxied)
        assert (await get(s, url, basic(USER, PASSWORD, "2001:db8:1:3::10")))[0] == 429


async def test_a_known_address_is_still_locked_by_its_own_failures(proxied):
    url = f"{proxied.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 200
        for i in range(5):
            assert (await get(s, url, basic(USER, f"wrong-{i}", SCRAPER)))[0] == 401
        status, _, retry_after = await get(s, url, basic(USER, PASSWORD, SCRAPER))
        assert status == 429 and int(retry_after) > 0
        # and while the username is locked as well
        await lock_the_username(s, url)
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 429


async def test_a_known_address_guessing_while_the_username_is_locked_counts_against_itself(proxied):
    """The exemption lets a known address's password be checked; its wrong ones still lock that address."""
    url = f"{proxied.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 200
        await lock_the_username(s, url)
        assert [(await get(s, url, basic(USER, f"wrong-{i}", SCRAPER)))[0] for i in range(6)] == [401] * 5 + [429]
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 429


async def test_an_address_is_known_for_known_address_hours(proxied, clock):
    url = f"{proxied.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 200
        clock.advance(hours=24, seconds=1)
        forget_cached_logins(proxied)
        await lock_the_username(s, url)
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 429


async def test_a_scraper_answered_from_the_credential_cache_stays_known(proxied, clock):
    """The credential cache slides, so a busy scraper may never have its password checked again: its address is
    recorded again at least hourly all the same, and outlives known_address_hours after the first login."""
    url = f"{proxied.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 200
        for _ in range(23):
            clock.advance(hours=1)
            assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 200  # from the cache
        clock.advance(hours=2)  # 25 hours after its password was last checked
        forget_cached_logins(proxied)
        await lock_the_username(s, url)
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 200


async def test_known_addresses_are_shared_by_two_instances_on_one_database(proxied, aiohttp_server, clock):
    """A login on one instance makes the address known to another (whose credential cache is empty)."""
    second = check_against_openapi(create_app(proxied.settings, clock=clock))
    port = free_port()
    await aiohttp_server(second, host="127.0.0.1", port=port)
    urls = [f"{proxied.url}/scep/jamf/challenge", f"http://127.0.0.1:{port}/scep/jamf/challenge"]
    async with aiohttp.ClientSession() as s:
        assert (await get(s, urls[0], basic(USER, PASSWORD, SCRAPER)))[0] == 200
        for a in range(4):  # the guesses land on both instances
            for i in range(5):
                assert (await get(s, urls[(a + i) % 2], basic(USER, f"g{a}{i}", f"198.51.100.{10 + a}")))[0] == 401
        assert (await get(s, urls[1], basic(USER, PASSWORD, "203.0.113.77")))[0] == 429
        status, body, _ = await get(s, urls[1], basic(USER, PASSWORD, SCRAPER))
        assert status == 200 and PAGE in body


async def test_known_address_hours_0_exempts_no_address(aiohttp_server, tmp_path, db_url, clock):
    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock, server={"trusted_proxies": ["127.0.0.1/32"]},
                          challenge={"scrypt_log2_n": 10, "known_address_hours": 0})
    await add_profile(srv, "jamf", "dynamic", dynamic())
    url = f"{srv.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 200
        await lock_the_username(s, url)
        forget_cached_logins(srv)
        assert (await get(s, url, basic(USER, PASSWORD, SCRAPER)))[0] == 429


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_lockouts_are_counted_by_scope(proxied):
    url = f"{proxied.url}/scep/jamf/challenge"
    before = await scrape(proxied.url)
    async with aiohttp.ClientSession() as s:
        await lock_the_username(s, url)  # each address 5 failures: 4 address lockouts, then the username's
    after = await scrape(proxied.url)

    def delta(**labels):
        return (value(after, "scep_challenge_login_lockouts_total", **labels)
                - value(before, "scep_challenge_login_lockouts_total", **labels))

    assert delta(profile="jamf", scope="address") == 4
    assert delta(profile="jamf", scope="username") == 1


def test_the_credential_cache_slides(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    checker = CredentialChecker(remember_seconds=300)
    creds = BasicCredentials(username=USER, password_hash=FAST_HASH)
    assert checker.check("jamf", creds, USER, PASSWORD)
    for _ in range(5):  # used every 200 s: kept
        now[0] += 200
        assert checker.cached("jamf", creds, USER, PASSWORD)
    now[0] += 301
    assert not checker.cached("jamf", creds, USER, PASSWORD)
    assert not checker.cached("jamf", creds, USER, "wrong")
