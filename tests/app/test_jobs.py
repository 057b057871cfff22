"""Background jobs run supervised (a job that raises is logged, restarted with backoff and shown in /readyz),
and every readiness check is computed when /readyz is asked."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import sqlalchemy as sa
import structlog

from otp.tables import otp_yubikeys
from scep_server.app import JOBS
from scep_server.challenge.store import ChallengeStore
from scep_server.jobs import Supervisor
from tests.otp.conftest import make_key, secrets_file
from tests.server import start_app


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_job_that_raises_is_logged_restarted_and_reported_until_it_works():
    sup = Supervisor(initial_backoff=0.01, max_backoff=0.04, settle=0.1)
    runs = 0
    forever = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError("database hiccup at /srv/secret")
        await forever.wait()

    readiness: dict = {}
    with structlog.testing.capture_logs() as logs:
        sup.start("flaky", flaky, readiness)
        await _until(lambda: _async(runs >= 2))
        state = readiness["job:flaky"]()
        assert state.startswith("error: failing since") and "RuntimeError" in state
        await _until(lambda: _async(readiness["job:flaky"]() == "ok"))
        assert runs == 4 and sup.states["flaky"].restarts == 3
        await sup.stop()
    crashed = [e for e in logs if e["event"] == "job.crashed"]
    assert len(crashed) == 3 and all(e["job"] == "flaky" and "database hiccup" in e["error"] for e in crashed)
    assert [e["restart_in"] for e in crashed] == [0.01, 0.02, 0.04]  # doubling, bounded
    assert any(e["event"] == "job.recovered" for e in logs)


async def test_a_cancelled_job_stops_without_a_restart():
    sup = Supervisor(initial_backoff=0.01, settle=0.05)
    started, stopped = asyncio.Event(), asyncio.Event()
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            return  # a restart after the cancellation (that must not happen) ends at once
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    task = sup.start("loop", loop)
    await started.wait()
    with structlog.testing.capture_logs() as logs:
        stopping = asyncio.create_task(sup.stop())
        done, _ = await asyncio.wait({stopping}, timeout=2)
    assert stopping in done, "the job did not stop when cancelled"
    assert stopped.is_set() and task.cancelled() and runs == 1
    assert not [e for e in logs if e["event"] == "job.crashed"]
    await asyncio.sleep(0.05)
    assert runs == 1


async def _async(value):
    return value


async def _readyz(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url + "/readyz") as r:
        return r.status, await r.text()


async def test_a_crashing_app_job_is_restarted_and_readyz_shows_it(aiohttp_server, tmp_path, db_url, monkeypatch, fast_job_backoff):
    broken = True
    calls = 0
    real_prune = ChallengeStore.prune

    async def prune(self, **kwargs):
        nonlocal calls
        calls += 1
        if broken:
            raise OSError("disk gone under /srv/secret")
        return await real_prune(self, **kwargs)

    monkeypatch.setattr(ChallengeStore, "prune", prune)
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    assert set(srv.app[JOBS].states) == {  # every background job of the server runs supervised
        "crl.run_publishers", "crl.listen_changes", "crl.watch_changes", "crl.revoke_unused",
        "ocsp.scan_changes", "ocsp.renew_signers", "otp.prune", "otp.flush",
        "challenge.prune", "binding.external_cas", "binding.external_crls", "binding.purge_nonces", "mdm.sync_sources",
        "scep.ack_reconciler", "scep.pending_expiry", "ca.ra_lifecycle"}

    async def failing() -> bool:
        status, text = await _readyz(srv.url)
        return status == 503 and json.loads(text)["checks"].get("job:challenge.prune") == "failed"

    await _until(failing)
    _, text = await _readyz(srv.url)
    assert "OSError" not in text and "secret" not in text  # which job failed, never why
    await _until(lambda: _async(calls >= 3))  # restarted, not left dead
    broken = False

    async def recovered() -> bool:
        status, text = await _readyz(srv.url)
        return json.loads(text)["checks"].get("job:challenge.prune") == "ok"

    await _until(recovered)
    assert srv.runtime.readiness["job:challenge.prune"]() == "ok"


async def test_otp_readiness_follows_the_stored_keys_without_a_restart(aiohttp_server, tmp_path, db_url):
    srv = await start_app(aiohttp_server, tmp_path, db_url)

    async def otp_check() -> str:
        return json.loads((await _readyz(srv.url))[1])["checks"]["otp"]

    assert await otp_check() == "ok"
    service = srv.runtime.otp
    assert (await service.import_secrets(secrets_file([make_key(600_300)]))).ok
    assert await otp_check() == "ok"
    async with srv.runtime.engine.begin() as conn:  # the key is now sealed under a KEK this server lacks
        await conn.execute(sa.update(otp_yubikeys).values(kek_id="elsewhere"))
    assert await otp_check() == "failed"
    async with srv.runtime.engine.begin() as conn:
        await conn.execute(sa.update(otp_yubikeys).values(kek_id=service.kek_id))
    assert await otp_check() == "ok"
