"""A bad-signature SCEP message replayed many times costs one RA signature, not one per copy."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from scep_server.replycache import FailureReplies
from scep_server.scep import FailInfo, PKIStatus, client
from tests.interop.conftest import pkcs_req, ra_and_ca
from tests.factories import rsa_key
from tests.server import start_app


class CountingKey:
    """The RA key, counting its signatures."""

    def __init__(self, inner):
        self._inner, self.signatures = inner, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def sign(self, data, digest):
        self.signatures += 1
        return self._inner.sign(data, digest)


@pytest.fixture
async def server(aiohttp_server, tmp_path, db_url):
    return await start_app(aiohttp_server, tmp_path, db_url)


def _bad_signature(body: bytes) -> bytes:
    """The last octet of a pkiMessage is the end of its SignerInfo's signature."""
    return body[:-1] + bytes((body[-1] ^ 0x01,))


async def test_500_identical_bad_signature_bodies_cost_one_ra_signature(server):
    ca = next(iter(server.runtime.scep.cas.values()))
    counter = CountingKey(ca.ra_key)
    ca.ra_key = counter
    key = rsa_key()
    url = f"{server.url}/scep/default"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as session:
        ra_der, _ = await ra_and_ca(session, url)
        hostile = _bad_signature(pkcs_req(key, ra_der, challenge=server.challenge()))

        async def post(body):
            async with session.post(f"{url}?operation=PKIOperation", data=body) as resp:
                assert resp.status == 200
                return await resp.read()

        replies = await asyncio.gather(*(post(hostile) for _ in range(500)))
        assert counter.signatures == 1, f"{counter.signatures} RA signatures for one replayed body"
        rep = client.parse_cert_rep(replies[0], key, ra_cert_der=ra_der)
        assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_MESSAGE_CHECK
        assert len(set(replies)) == 1

        # another body is answered on its own; a good request still enrols (the cache holds failures only)
        await post(_bad_signature(pkcs_req(key, ra_der, challenge=server.challenge(), cn="other")))
        assert counter.signatures == 2
        good = pkcs_req(key, ra_der, challenge=server.challenge(), cn="good")
        for _ in range(2):
            rep = client.parse_cert_rep(await post(good), key, ra_cert_der=ra_der)
            assert rep.status is PKIStatus.SUCCESS, rep.fail_text


def test_the_cache_is_bounded_and_entries_expire():
    now = [0.0]
    cache = FailureReplies(size=3, ttl=10, clock=lambda: now[0])
    for i in range(5):
        cache.put("p", bytes([i]), b"reply%d" % i)
    assert len(cache) == 3
    assert cache.get("p", b"\x00") is None and cache.get("p", b"\x04") == b"reply4"
    assert cache.get("other", b"\x04") is None  # per profile
    now[0] = 10.0
    assert cache.get("p", b"\x04") is None



def test_the_cache_is_bounded_in_bytes_too():
    cache = FailureReplies(size=100, max_bytes=1000)
    for i in range(10):
        cache.put("p", bytes([i]), bytes(300))
    assert len(cache) == 3 and cache.get("p", b"\x09") is not None and cache.get("p", b"\x06") is None
    cache.put("p", b"big", bytes(5000))  # a reply beyond the bound is not kept, and keeps nothing out
    assert cache.get("p", b"big") is None and len(cache) == 3


async def test_failures_echoing_a_long_transaction_id_are_held_within_the_byte_bound(server):
    """A FAILURE echoes the transactionID as it came: 200 bad-signature requests whose transactionID is 60,000
    characters leave at most 8 MiB of replies in the cache (not 200 of 60 KB each)."""
    ca = next(iter(server.runtime.scep.cas.values()))
    key = rsa_key()
    url = f"{server.url}/scep/default"
    async with aiohttp.ClientSession() as session:
        ra_der, _ = await ra_and_ca(session, url)
        size = 0
        for i in range(200):
            body = _bad_signature(pkcs_req(key, ra_der, challenge=None, transaction_id=f"{i:06d}" + "T" * 60_000))
            async with session.post(f"{url}?operation=PKIOperation", data=body) as resp:
                assert resp.status == 200
                size = len(await resp.read())
    assert size > 60_000
    assert 0 < len(ca.failure_replies) <= (8 << 20) // size < 200


async def test_a_request_body_is_hashed_once(server, monkeypatch):
    """The HTTP layer's digest of a pkiMessage (identical copies in flight share one answer) is also the key of
    the cache of FAILUREs: each body is hashed once, whatever the answer."""
    import hashlib

    real, hashed = hashlib.sha256, []

    def counting(data=b"", **kwargs):
        hashed.append(bytes(data))
        return real(data, **kwargs)

    key = rsa_key()
    url = f"{server.url}/scep/default"
    async with aiohttp.ClientSession() as session:
        ra_der, _ = await ra_and_ca(session, url)
        good = pkcs_req(key, ra_der, challenge=server.challenge(), cn="hashed-once")
        for body in (_bad_signature(pkcs_req(key, ra_der, challenge=server.challenge(), cn="bad")), good):
            hashed.clear()
            monkeypatch.setattr(hashlib, "sha256", counting)
            try:
                async with session.post(f"{url}?operation=PKIOperation", data=body) as resp:
                    assert resp.status == 200
                    reply = await resp.read()
            finally:
                monkeypatch.setattr(hashlib, "sha256", real)
            assert sum(body in data for data in hashed) == 1
    assert client.parse_cert_rep(reply, key, ra_cert_der=ra_der).status is PKIStatus.SUCCESS
