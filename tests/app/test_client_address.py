"""The client address behind (and not behind) a trusted reverse proxy."""
from __future__ import annotations

from ipaddress import ip_network

import aiohttp
import pytest
from aiohttp import web

from scep_server.config import ConfigError, load_settings
from scep_server.web.client import client_address, middleware, resolve, throttle_key

PROXIES = [ip_network("10.0.0.0/8"), ip_network("2001:db8:ffff::/48")]


@pytest.mark.parametrize("peer,hops,expected", [
    # an untrusted peer: whatever it claims is ignored
    ("198.51.100.7", ["1.2.3.4"], "198.51.100.7"),
    ("198.51.100.7", [], "198.51.100.7"),
    # a trusted proxy: the address it appended
    ("10.0.0.5", ["203.0.113.9"], "203.0.113.9"),
    # a client-written entry left of the proxy's is ignored (the spoof), proxies chained on the right skipped
    ("10.0.0.5", ["1.2.3.4", "203.0.113.9"], "203.0.113.9"),
    ("10.0.0.5", ["1.2.3.4", "203.0.113.9", "10.1.1.1"], "203.0.113.9"),
    ("10.0.0.5", ["1.2.3.4", " 203.0.113.9:5555 "], "203.0.113.9"),
    ("2001:db8:ffff::1", ["[2001:db8:1::7]:443"], "2001:db8:1::7"),
    ("10.0.0.5", ["::ffff:203.0.113.9"], "203.0.113.9"),
    # only proxies: the farthest one; unreadable: the nearest address vouched for
    ("10.0.0.5", ["10.2.2.2"], "10.2.2.2"),
    ("10.0.0.5", ["203.0.113.9", "unknown"], "10.0.0.5"),
    ("10.0.0.5", ["_hidden", "10.3.3.3"], "10.3.3.3"),
])
def test_resolve(peer, hops, expected):
    assert resolve(peer, hops, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer():
    assert resolve("10.0.0.5", ["203.0.113.9"], ()) == "10.0.0.5"


def test_throttle_key_groups_ipv6_by_64():
    assert throttle_key("2001:db8:1:2:aaaa::1") == throttle_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert throttle_key("203.0.113.9") == "203.0.113.9"


def test_trusted_proxies_setting_is_validated():
    assert load_settings(None, server={"trusted_proxies": ["10.0.0.0/8", "::1"]}).server.trusted_proxies
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings(None, server={"trusted_proxies": ["not-a-network"]})


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"client": client_address(request), "remote": request.remote})


@pytest.mark.parametrize("trusted,header,sent,expected", [
    ([], "x-forwarded-for", {"X-Forwarded-For": "203.0.113.9"}, "127.0.0.1"),
    (["10.0.0.0/8"], "x-forwarded-for", {"X-Forwarded-For": "203.0.113.9"}, "127.0.0.1"),
    (["127.0.0.1/32"], "x-forwarded-for", {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}, "203.0.113.9"),
    (["127.0.0.1/32"], "forwarded", {"Forwarded": 'for=6.6.6.6, for="[2001:db8::5]:80";proto=https'},
     "2001:db8::5"),
    # the proxy appends to Forwarded: a client's X-Forwarded-For is not read
    (["127.0.0.1/32"], "forwarded", {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=203.0.113.9"}, "203.0.113.9"),
    (["127.0.0.1/32"], "x-forwarded-for", {"Forwarded": "for=6.6.6.6"}, "127.0.0.1"),
])
async def test_middleware_and_function_agree(aiohttp_server, trusted, header, sent, expected):
    app = web.Application(middlewares=[middleware(trusted, header)])
    app.router.add_get("/", _echo)
    server = await aiohttp_server(app, host="127.0.0.1")
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/", headers=sent) as resp:
        assert await resp.json() == {"client": expected, "remote": expected}
