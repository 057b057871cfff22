"""Normal enrolments go through while hostile bodies arrive at the same time: the hostile ones cost what a
normal request costs, so the enrolments wait for a bounded share of the server, never for seconds per body.

The server runs in the test's process, so its work is counted in the process's CPU time (every thread), which
other processes on a loaded machine do not inflate as they do the elapsed time."""
from __future__ import annotations

import asyncio
import time

import aiohttp

from scep_server.scep import PKIStatus, client
from trustkit import der
from scep_server.web.scep import MAX_MESSAGE_BYTES
from tests.factories import rsa_key
from tests.interop.conftest import pkcs_req, ra_and_ca
from tests.server import start_app

from .corpus import replace_element, elements, seeds

HOSTILE_EACH = 40


def hostile_bodies() -> list[bytes]:
    """Distinct bodies of the costliest kinds (no two alike, so nothing is answered from a cache)."""
    seed = seeds().scep[0]
    nodes = elements(seed)
    oid = next(i for i, (el, _) in enumerate(nodes) if el[0] == der.OID)
    certs = next(i for i, (el, parent) in enumerate(nodes) if el[0] == der.ctx(0) and parent == 3)  # SignedData [0]
    out = []
    for i in range(HOSTILE_EACH):
        body = b"\x2a" + b"\xff" * (60_000 + i) + b"\x01"  # oversized OID in the outer ContentInfo
        out.append(replace_element(seed, nodes, oid, der.tlv(der.OID, body)))
        out.append(replace_element(seed, nodes, certs, der.tlv(der.ctx(0), b"\x30\x00" * (30_000 - i))))  # many certificates
        depth = 39 - i % 5
        out.append(b"\x30\x80" * depth + seed[:-i - 1] + b"\x00\x00" * depth)  # deep indefinite nesting, truncated
        out.append(seed[:-1 - i % 200] + bytes((seed[-1 - i % 200] ^ 0xFF,)) + seed[len(seed) - i % 200:])  # bad sig
    assert all(len(b) <= MAX_MESSAGE_BYTES for b in out)
    return out


async def _enrol_all(session, url, ra_der, challenge, keys, tag) -> float:
    """The CPU time of this process (server and client) until the enrolments of `keys` are all issued."""
    async def one(i, key):
        body = pkcs_req(key, ra_der, challenge=challenge, cn=f"{tag}-{i}")
        async with session.post(f"{url}?operation=PKIOperation", data=body) as resp:
            assert resp.status == 200
            rep = client.parse_cert_rep(await resp.read(), key, ra_cert_der=ra_der)
            assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    started = time.process_time()
    await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))
    return time.process_time() - started


async def test_enrolments_are_not_starved_by_concurrent_hostile_bodies(aiohttp_server, tmp_path):
    server = await start_app(aiohttp_server, tmp_path)
    url = f"{server.url}/scep/default"
    keys = [rsa_key() for _ in range(4)]
    bodies = hostile_bodies()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        ra_der, _ = await ra_and_ca(session, url)
        await _enrol_all(session, url, ra_der, server.challenge(), keys, "warm")
        alone = await _enrol_all(session, url, ra_der, server.challenge(), keys, "alone")

        async def attack(body):
            async with session.post(f"{url}?operation=PKIOperation", data=body) as resp:
                await resp.read()
                return resp.status

        attack_started = time.perf_counter()
        attack_task = asyncio.gather(*(attack(b) for b in bodies))
        await asyncio.sleep(0.02)
        under_attack = await _enrol_all(session, url, ra_der, server.challenge(), keys, "attacked")
        statuses = await attack_task
        attack_time = time.perf_counter() - attack_started
    assert all(s in (200, 400) for s in statuses), sorted(set(statuses))
    # 160 hostile bodies at once: the enrolments take longer, by a bounded amount (each hostile body costs
    # about what one normal request does), not by seconds of parsing per body
    assert under_attack < 10 * alone + 3.0, (
        f"4 enrolments took {under_attack:.2f} s of CPU under attack, {alone:.2f} s alone "
        f"({len(bodies)} hostile bodies answered in {attack_time:.2f} s)")
