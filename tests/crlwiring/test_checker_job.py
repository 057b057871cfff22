"""The checker of external CAs' CRLs runs as a supervised job: a round that raises is logged, the schedule is
started again with backoff, and /readyz shows the job failing meanwhile."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import structlog

from crl.check import CrlChecker
from scep_server.app import JOBS
from scep_server.binding.service import services
from tests.server import start_app


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _check(url: str, name: str) -> str | None:
    async with aiohttp.ClientSession() as s, s.get(url + "/readyz") as r:
        return json.loads(await r.text())["checks"].get(name)


async def test_a_raising_checker_round_is_restarted_and_reported(aiohttp_server, tmp_path, db_url, monkeypatch, fast_job_backoff):
    broken = False
    rounds = 0
    real_round = CrlChecker.run_round

    def run_round(self):
        nonlocal rounds
        rounds += 1
        if broken:
            raise KeyError("a source vanished under /srv/secret")
        return real_round(self)

    monkeypatch.setattr(CrlChecker, "run_round", run_round)
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    assert "binding.external_crls" in srv.app[JOBS].states
    await _until(lambda: _value(rounds >= 1))  # the schedule runs as the job
    assert await _check(srv.url, "job:binding.external_crls") == "ok"

    checker = services(srv.runtime).external.checker
    with structlog.testing.capture_logs() as logs:
        broken = True
        checker._wake.set()  # what registering a CA or finishing a fetch does: the schedule runs a round
        await _until(lambda: _is(_check(srv.url, "job:binding.external_crls"), "failed"))
        await _until(lambda: _value(srv.app[JOBS].states["binding.external_crls"].restarts >= 2))  # not left dead
        broken = False
        await _until(lambda: _is(_check(srv.url, "job:binding.external_crls"), "ok"))
    crashed = [e for e in logs if e["event"] == "job.crashed" and e["job"] == "binding.external_crls"]
    assert crashed and "KeyError" in crashed[0]["error"]
    # after recovery the schedule works: a watched URL registered now is fetched by the job
    fetched = asyncio.Event()

    async def fetch(self, src):
        fetched.set()

    monkeypatch.setattr(CrlChecker, "_fetch", fetch)
    ca_pem = (srv.data_dir / "ca" / "default" / "ca.crt").read_bytes()
    checker.add_ca(ca_pem, name="customer", crl_urls=["http://crl.example.com/customer.crl"], require_cdp=False)
    await asyncio.wait_for(fetched.wait(), 5)


async def _value(value):
    return value


async def _is(awaitable, expected):
    return (await awaitable) == expected
