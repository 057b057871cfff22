"""Failed Basic logins of the challenge endpoint: throttled per client address (behind a trusted proxy, the
forwarded one) and per username, shared through the database by every instance; scrypt on its own threads;
old hashes upgraded at a good login."""
from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web

from scep_server.app import create_app
from scep_server.challenge.basic import CredentialChecker, check_password, hash_params, hash_password
from scep_server.challenge.tables import login_throttle
from scep_server.challenge.throttle import Limits, LoginThrottle, address_key, user_key
from tests.openapi_check import attach as check_against_openapi
from scep_server.store.tables import profiles
from tests.challenge.conftest import PASSWORD, USER, add_profile, dynamic
from tests.server import free_port, start_app


def basic(user: str, password: str, forwarded_for: "str | None" = None) -> dict[str, str]:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    return headers


async def status(s: aiohttp.ClientSession, url: str, headers: dict) -> int:
    async with s.get(url, headers=headers) as resp:
        return resp.status


@pytest.fixture
async def proxied(aiohttp_server, tmp_path, db_url, clock):
    """The app behind a reverse proxy on 127.0.0.1 (trusted), with a small per-username limit."""
    return await start_app(aiohttp_server, tmp_path, db_url, clock=clock, server={"trusted_proxies": ["127.0.0.1/32"]},
                           challenge={"scrypt_log2_n": 10, "failures_per_user": 8})


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(server):
    await add_profile(server, "jamf", "dynamic", dynamic())
    url = f"{server.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        for i in range(5):  # a new "address" each time: without a trusted proxy it is still this peer
            assert await status(s, url, basic(USER, "wrong", f"198.51.100.{i}")) == 401
        assert await status(s, url, basic(USER, PASSWORD, "198.51.100.99")) == 429


async def test_behind_a_trusted_proxy_each_client_is_throttled_on_its_own(proxied):
    await add_profile(proxied, "jamf", "dynamic", dynamic())
    url = f"{proxied.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        for _ in range(5):  # what the client wrote itself (left of the proxy's entry) does not help it
            assert await status(s, url, basic(USER, "wrong", f"6.6.6.{_}, 203.0.113.1")) == 401
        assert await status(s, url, basic(USER, PASSWORD, "203.0.113.1")) == 429
        # another client behind the same proxy is not locked out
        assert await status(s, url, basic(USER, PASSWORD, "203.0.113.2")) == 200


async def test_a_distributed_guess_locks_the_username(proxied):
    await add_profile(proxied, "jamf", "dynamic", dynamic())
    url = f"{proxied.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        for i in range(8):  # 8 addresses, one failure each: no address limit is reached
            assert await status(s, url, basic(USER, f"guess-{i}", f"203.0.113.{10 + i}")) == 401
        async with s.get(url, headers=basic(USER, PASSWORD, "203.0.113.50")) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
        # other usernames do not count against the configured one, nor create a row per name
        assert await status(s, url, basic("someone-else", "x", "203.0.113.60")) == 401
    async with proxied.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(sa.func.count()).select_from(login_throttle))).scalar_one()
    assert rows == 8 + 1 + 1  # eight addresses, the username, the last address


async def test_the_throttle_is_shared_by_two_instances_on_one_database(server, aiohttp_server, clock):
    """Failures counted by one instance lock the client out of the other."""
    await add_profile(server, "jamf", "dynamic", dynamic())
    second = check_against_openapi(create_app(server.settings, clock=clock))
    port = free_port()
    await aiohttp_server(second, host="127.0.0.1", port=port)
    urls = [f"{server.url}/scep/jamf/challenge", f"http://127.0.0.1:{port}/scep/jamf/challenge"]
    async with aiohttp.ClientSession() as s:
        assert await status(s, urls[1], basic(USER, PASSWORD)) == 200
        for i in range(5):
            assert await status(s, urls[i % 2], basic(USER, "wrong")) == 401
        assert await status(s, urls[0], basic(USER, PASSWORD)) == 429
        assert await status(s, urls[1], basic(USER, PASSWORD)) == 429
        clock.advance(seconds=301)  # the lockout ends for both
        assert await status(s, urls[1], basic(USER, PASSWORD)) == 200


async def test_scrypt_runs_on_its_own_threads(server, monkeypatch):
    await add_profile(server, "jamf", "dynamic", dynamic())
    seen: list[str] = []
    original = CredentialChecker.check

    def check(self, *args):
        seen.append(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(CredentialChecker, "check", check)
    async with aiohttp.ClientSession() as s:
        assert await status(s, f"{server.url}/scep/jamf/challenge", basic(USER, "wrong")) == 401
    assert seen and all(name.startswith("challenge-scrypt") for name in seen), seen


def test_the_default_cost_is_at_least_2_to_the_17():
    encoded = hash_password("operator-chosen")
    assert hash_params(encoded)[0] >= 17 and check_password("operator-chosen", encoded)


async def test_a_good_login_upgrades_a_hash_of_another_cost(aiohttp_server, tmp_path, db_url, clock):
    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock, challenge={"scrypt_log2_n": 11})
    await add_profile(srv, "jamf", "dynamic", dynamic())  # hashed with log2 n = 10

    async def stored() -> str:
        async with srv.runtime.engine.connect() as conn:
            text = (await conn.execute(sa.select(profiles.c.settings).where(profiles.c.name == "jamf"))).scalar_one()
        return json.loads(text)["challenge"]["credentials"]["password_hash"]

    url = f"{srv.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        assert await status(s, url, basic(USER, "wrong")) == 401
        assert hash_params(await stored()) == (10, 8, 1)  # a failed login changes nothing
        assert await status(s, url, basic(USER, PASSWORD)) == 200
        new = await stored()
        assert hash_params(new) == (11, 8, 1) and check_password(PASSWORD, new)
        srv.runtime.profiles._cache.clear()
        assert await status(s, url, basic(USER, PASSWORD)) == 200


async def test_throttle_rows_are_pruned_and_bounded(engine):
    from datetime import datetime, timezone

    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    throttle = LoginThrottle(engine, Limits(failures_per_address=3, window_seconds=60, lockout_seconds=60,
                                            max_rows=100))
    for i in range(150):
        await throttle.failed([(f"{i:064x}", 3)], now + timedelta(seconds=i * 0.1))
    assert await throttle.failed([("a" * 64, 2)], now) is False
    assert await throttle.failed([("a" * 64, 2)], now) is True
    assert (await throttle.blocked(["a" * 64, "b" * 64], now)) == {"a" * 64: 60}
    # the window restarts after it has passed
    await throttle.failed([("c" * 64, 2)], now)
    assert await throttle.failed([("c" * 64, 2)], now + timedelta(seconds=61)) is False
    removed = await throttle.prune(now + timedelta(seconds=30))
    async with engine.connect() as conn:
        keys = set((await conn.execute(sa.select(login_throttle.c.key_sha256))).scalars())
    assert len(keys) == 100 and removed == 52 and "a" * 64 in keys and "c" * 64 in keys
    await throttle.prune(now + timedelta(seconds=200))
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(login_throttle))).scalar_one() == 0


async def test_a_flood_of_address_counters_does_not_push_out_the_username_counter(engine):
    """Guesses at the configured username from many addresses (IPv6 /64s are plenty) count on the username's
    counter; failures from yet more addresses must not make room by forgetting that counter."""
    from datetime import datetime, timezone

    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    throttle = LoginThrottle(engine, Limits(failures_per_address=5, failures_per_user=20, window_seconds=300,
                                            max_rows=100))
    by_user = user_key("default", USER)
    for i in range(19):  # 19 guesses at the real username, each from an address of its own
        await throttle.failed([(address_key("default", f"2001:db8:{i:x}::"), 5), (by_user, 20)], now)
    for i in range(150):  # then one failure each from 150 more addresses, with another username
        await throttle.failed([(address_key("default", f"2001:db9:{i:x}::"), 5)], now + timedelta(seconds=1 + i * 0.1))
    await throttle.prune(now + timedelta(seconds=30))
    async with engine.connect() as conn:
        keys = set((await conn.execute(sa.select(login_throttle.c.key_sha256))).scalars())
    assert len(keys) == 100 and by_user in keys
    assert await throttle.failed([(by_user, 20)], now + timedelta(seconds=40)) is True  # the 20th guess locks


async def test_logins_beyond_the_waiting_cap_are_turned_away(aiohttp_server, tmp_path, db_url, clock, monkeypatch):
    """A flood of logins from many addresses does not queue without bound behind scrypt: past the cap of checks
    under way (one per address) the answer is 503."""
    import asyncio
    import time

    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock, server={"trusted_proxies": ["127.0.0.1/32"]},
                          challenge={"scrypt_log2_n": 10, "hash_workers": 1, "max_waiting_checks": 2})
    await add_profile(srv, "jamf", "dynamic", dynamic())
    original = CredentialChecker.check

    def slow(self, *args):
        time.sleep(0.3)
        return original(self, *args)

    monkeypatch.setattr(CredentialChecker, "check", slow)
    url = f"{srv.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        codes = await asyncio.gather(*(status(s, url, basic(USER, f"wrong-{i}", f"203.0.113.{i}"))
                                       for i in range(4)))
    assert sorted(codes) == [401, 401, 503, 503], codes


async def test_guesses_sent_together_get_no_more_checks_than_the_address_limit(aiohttp_server, tmp_path, db_url,
                                                                              clock, monkeypatch):
    """16 wrong passwords from one address at once: 8 wait their turn (the rest are busy, 503, for that address
    only), as many are checked as the address may fail (5), the others are refused as the lockout they arrive in,
    not each given a password check."""
    import asyncio
    import time

    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock, challenge={"scrypt_log2_n": 10})
    await add_profile(srv, "jamf", "dynamic", dynamic())
    checked = []
    original = CredentialChecker.check

    def slow(self, profile, creds, user, password):
        checked.append(password)
        time.sleep(0.05)  # scrypt at its real cost takes longer
        return original(self, profile, creds, user, password)

    monkeypatch.setattr(CredentialChecker, "check", slow)
    url = f"{srv.url}/scep/jamf/challenge"
    async with aiohttp.ClientSession() as s:
        codes = await asyncio.gather(*(status(s, url, basic(USER, f"guess-{i}")) for i in range(16)))
    assert len(checked) == 5, (len(checked), sorted(codes))
    assert sorted(codes) == [401] * 5 + [429] * 3 + [503] * 8


async def test_a_locked_out_address_does_not_take_the_page_away_from_others(aiohttp_server, tmp_path, db_url, clock,
                                                                             monkeypatch):
    """An address that is locked out keeps many logins in flight: each waits for its own address's turn, and none
    counts against the checks other addresses may have under way; the right password from another address is
    answered."""
    import asyncio

    srv = await start_app(aiohttp_server, tmp_path, db_url, clock=clock, server={"trusted_proxies": ["127.0.0.1/32"]},
                          challenge={"scrypt_log2_n": 10})
    await add_profile(srv, "jamf", "dynamic", dynamic())
    url = f"{srv.url}/scep/jamf/challenge"
    attacker = basic("nobody", "wrong", "198.51.100.66")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        assert [await status(s, url, attacker) for _ in range(6)][-1] == 429
        throttle = srv.runtime.challenges.throttle
        original = throttle.blocked

        async def slow_blocked(*args):  # each lockout look-up takes a while: the attacker's logins pile up
            await asyncio.sleep(0.05)
            return await original(*args)
        monkeypatch.setattr(throttle, "blocked", slow_blocked)
        flood = [asyncio.create_task(status(s, url, attacker)) for _ in range(40)]
        await asyncio.sleep(0.1)
        legit = await asyncio.gather(*(status(s, url, basic(USER, PASSWORD, f"203.0.113.{i}")) for i in range(3)))
        codes = await asyncio.gather(*flood)
    assert legit == [200, 200, 200], legit
    assert set(codes) <= {429, 503}, codes
