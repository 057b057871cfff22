"""`scep-server cert revoke` and `crl publish|show` as separate processes against running `scep-server serve`
instances sharing one database: every instance serves the change within the configured bound."""
from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.ca.inventory import Reason, serial_hex
from scep_server.crlwiring.changes import ChangeFeed
from scep_server.runtime import Uses, open_runtime
from scep_server.store.events import announce, record_event
from tests.server import run, serve_processes, start_app
from trustkit.clock import utcnow
from trustkit.db import create_engine, writer

from .conftest import (cdp_of, crl_serials, enrol_with_codec, enrol_with_scepclient, fetch, publisher, service,
                       wait_for)

POLL = 0.5
ENV = {"SCEP_SERVER_CRL__POLL_INTERVAL": str(POLL), "SCEP_SERVER_CRL__COALESCE_DELAY": "0.1"}
# promised: a CRL recorded by any process is served by every instance within poll_interval, plus the adoption
# (load + signature check); asserted with room for a loaded CI machine
CROSS_PROCESS_BOUND = POLL + 1.5


def _crl_number(der: bytes) -> int:
    return x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


async def _cli(data_dir, db_url, *args: str):
    return await run(sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), *args,
                     env={"SCEP_SERVER_DATABASE__URL": db_url, "SCEP_SERVER_CA__KEY_SIZE": "2048", **ENV})


async def _served_everywhere(session, urls, predicate, timeout: float, same: bool = False
                             ) -> tuple[list[bytes], float]:
    started = time.monotonic()
    while True:
        bodies = [await fetch(session, f"{u}/crl/default.crl") for u in urls]
        if all(predicate(b) for b in bodies) and (not same or len(set(bodies)) == 1):
            return bodies, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not served by every instance within {timeout}s")
        await asyncio.sleep(0.02)


async def test_cli_revoke_reaches_every_running_instance_within_the_bound(tmp_path, db_url, scepclient):
    data_dir = tmp_path / "data"
    with serve_processes(data_dir, db_url, count=2, env=ENV) as urls:
        challenge = (data_dir / "default-challenge.txt").read_text().strip()
        cert = await enrol_with_scepclient(scepclient, urls[0], challenge, tmp_path / "dev", "cli-device")
        assert cdp_of(cert).endswith("/crl/default.crl")
        async with aiohttp.ClientSession() as session:
            first, _ = await _served_everywhere(session, urls, lambda b: True, timeout=10)
            assert cert.serial_number not in crl_serials(first[0])

            started = time.monotonic()
            rc, out, err = await _cli(data_dir, db_url, "cert", "revoke", f"{cert.serial_number:X}",
                                      "--reason", "key-compromise")
            cli_done = time.monotonic()
            assert rc == 0, out + err
            assert out.strip() == f"{serial_hex(cert.serial_number)}: revoked (key_compromise)"
            # nobody signed in the command: a server steps in, and every instance ends up serving the same CRL
            # (were two to sign at once, the higher number is adopted by the other)
            bodies, after_cli = await _served_everywhere(
                session, urls, lambda b: cert.serial_number in crl_serials(b), timeout=10, same=True)
            total = time.monotonic() - started
            print(f"cert revoke (CLI process) -> served by 2 instances: {after_cli * 1000:.0f} ms after the "
                  f"command ended, {total * 1000:.0f} ms including the command ({(cli_done - started) * 1000:.0f} ms)")
            assert after_cli < CROSS_PROCESS_BOUND
            # every instance serves the same CRL: same number, same bytes
            assert bodies[0] == bodies[1]
            assert crl_serials(bodies[0])[cert.serial_number] == x509.ReasonFlags.key_compromise

            # `crl publish` signs a higher number; both instances serve it within the bound
            rc, out, err = await _cli(data_dir, db_url, "crl", "publish")
            assert rc == 0, out + err
            fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
            number = int(fields["number"])
            assert number > _crl_number(bodies[0])
            assert int(fields["entries"]) == 1 and fields["this_update"] and fields["next_update"]
            bodies, waited = await _served_everywhere(session, urls, lambda b: _crl_number(b) >= number,
                                                      timeout=10)
            assert waited < CROSS_PROCESS_BOUND

            # `crl show` reads what is recorded (a server may have re-signed since: numbers only grow)
            rc, out, err = await _cli(data_dir, db_url, "crl", "show", "--format", "json")
            assert rc == 0, out + err
            assert json.loads(out)["number"] >= number
            rc, out, err = await _cli(data_dir, db_url, "crl", "show", "--pem")
            assert rc == 0, out + err
            shown = x509.load_pem_x509_crl(out.encode()).public_bytes(serialization.Encoding.DER)
            assert _crl_number(shown) >= number and cert.serial_number in crl_serials(shown)


def test_cli_errors_are_clear(tmp_path, monkeypatch):
    """Usage errors exit 2, refused operations exit 1, each with a message naming the problem."""
    from click.testing import CliRunner

    # in-process: keep the commands from reconfiguring this test process's logging
    monkeypatch.setattr("scep_server.logs.configure", lambda *args, **kwargs: None)

    from scep_server.cli import main
    from scep_server.runtime import initialise
    from tests.factories import settings_for

    data_dir = tmp_path / "data"
    asyncio.run(initialise(settings_for(data_dir)))
    runner = CliRunner()
    env = {"SCEP_SERVER_CA__KEY_SIZE": "2048"}

    def cli(*args):
        result = runner.invoke(main, ["--data-dir", str(data_dir), *args], env=env)
        return result.exit_code, result.output

    code, out = cli("cert", "revoke", "nothex")
    assert code == 2 and "not a hexadecimal serial" in out
    code, out = cli("cert", "revoke", "abc")
    assert code == 1 and "no certificate with serial abc" in out
    code, out = cli("cert", "release", "abc")
    assert code == 1 and "no certificate with serial abc" in out
    code, out = cli("cert", "revoke", "abc", "--reason", "certificate-hold")
    assert code == 2 and "unknown revocation reason" in out
    code, out = cli("crl", "show")
    assert code == 1 and "no CRL published yet" in out
    code, out = cli("crl", "show", "--ca", "other")
    assert code == 1 and "no CA named 'other'" in out
    code, out = cli("crl", "publish", "--format", "json")
    assert code == 0, out
    assert json.loads(out[out.index("{"):])["number"] == 1


# ---- the fast path: another process's change is noticed at once (LISTEN/NOTIFY, SQLite data_version)

# the periodic poll is set far beyond the bound, so only the change feed can deliver within it
SLOW_POLL = {"coalesce_delay": 0.1, "poll_interval": 60, "retry_interval": 0.5}
# the target is 1 s from the CRL being recorded to every instance serving it; asserted with room for a loaded CI
FEED_BOUND = 2.0


async def _served(session, url: str, serial: int, timeout: float = 10) -> float:
    """Seconds until `url` serves a CRL listing `serial` (polled every 20 ms)."""
    async def listed():
        return serial in crl_serials(await fetch(session, f"{url}/crl/default.crl"))

    _, waited = await wait_for(listed, timeout=timeout)
    return waited


async def test_a_revocation_by_a_command_line_process_is_served_within_a_second(aiohttp_server, tmp_path, db_url):
    """What `scep-server cert revoke` does (its own runtime and engine, signing no CRL) reaches a running server
    through the change feed, not through its poll: the server signs the change once its grace has passed."""
    srv = await start_app(aiohttp_server, tmp_path, db_url, crl=SLOW_POLL)
    await publisher(srv).wait_newer(None, timeout=10)
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, srv.url, srv.challenge(), "cli-revoked")
        await asyncio.sleep(0.5)  # the server's own re-sign after the issue has run
        assert cert.serial_number not in crl_serials(await fetch(session, f"{srv.url}/crl/default.crl"))
        async with open_runtime(srv.settings) as other:
            await other.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="cli:test")
        # the command's process has signed nothing: the running server notices the change and signs it
        waited = await _served(session, srv.url, cert.serial_number)
        print(f"command-line revocation served by the running server {waited * 1000:.0f} ms after it was committed")
        assert waited < FEED_BOUND
        assert publisher(srv).current.entries == 1


async def test_a_command_line_change_is_signed_at_once_not_after_the_servers_coalescing(aiohttp_server, tmp_path,
                                                                                       db_url):
    """A command-line process signs no CRL: a running server signs its change as soon as it learns of it, not after
    the grace it leaves a server that made a change (its coalescing delay, here 3 s, and a margin)."""
    srv = await start_app(aiohttp_server, tmp_path, db_url,
                          crl={"coalesce_delay": 3, "poll_interval": 60, "retry_interval": 0.5})
    await publisher(srv).wait_newer(None, timeout=10)
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, srv.url, srv.challenge(), "cli-at-once")
        async with open_runtime(srv.settings, uses=Uses(revocation=True)) as cli:  # what `cert revoke` opens
            await cli.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="cli")
        waited = await _served(session, srv.url, cert.serial_number)
        print(f"command-line revocation served {waited * 1000:.0f} ms after it was committed")
        assert waited < FEED_BOUND
        assert service(srv).grace().total_seconds() > 3  # a server's own change would still be in its grace


async def test_a_revocation_on_a_peer_instance_is_served_by_the_other_within_a_second(aiohttp_server, tmp_path,
                                                                                    db_url):
    """Two servers on one database: a change made on one is served by the other once the first has published."""
    a = await start_app(aiohttp_server, tmp_path, db_url, crl=SLOW_POLL)
    b = await start_app(aiohttp_server, tmp_path, db_url, crl=SLOW_POLL)
    for srv in (a, b):
        await publisher(srv).wait_newer(None, timeout=10)
    async with aiohttp.ClientSession() as session:
        _, cert = await enrol_with_codec(session, a.url, a.challenge(), "peer-revoked")
        await asyncio.sleep(0.5)
        await b.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="api:test")
        on_b = await _served(session, b.url, cert.serial_number)
        on_a = await _served(session, a.url, cert.serial_number)
        print(f"peer revocation: served by the instance that made it after {on_b * 1000:.0f} ms, "
              f"by the other {on_a * 1000:.0f} ms later")
        assert on_a < FEED_BOUND
        assert publisher(a).current.number == publisher(b).current.number


async def test_the_change_feed_reports_commits_of_other_connections(db_url):
    """PostgreSQL: the NOTIFY sent with a status change's audit event; SQLite: data_version moved, and a
    status-change event is among the new ones. Either way a write that changes no status is not reported."""
    feed_engine, other = create_engine(db_url), create_engine(db_url)
    seen: list[str] = []
    feed = ChangeFeed(feed_engine, seen.append)
    task = asyncio.create_task(feed.run())
    try:
        await wait_for(_async(lambda: feed.connected), timeout=10)
        assert seen == ["resync"]
        async with writer(other).begin() as conn:
            await record_event(conn, at=utcnow(), kind="device.create", subject="d1", actor="t")
            await record_event(conn, at=utcnow(), kind="pki.cert.issue", subject="00", actor="t")
        await asyncio.sleep(0.5)  # events that change no status are not announced
        assert seen == ["resync"]
        seen.clear()
        async with writer(other).begin() as conn:
            await record_event(conn, at=utcnow(), kind="device.create", subject="d2", actor="t")
            await record_event(conn, at=utcnow(), kind="pki.cert.revoke", subject="01", actor="t")
        _, waited = await wait_for(_async(lambda: "status" in seen), timeout=FEED_BOUND)
        assert seen == ["status"]
        # a transaction that rolls back announces nothing
        seen.clear()
        with pytest.raises(RuntimeError):
            async with writer(other).begin() as conn:
                await record_event(conn, at=utcnow(), kind="pki.cert.revoke", subject="02", actor="t")
                raise RuntimeError("rolled back")
        await asyncio.sleep(0.5)
        assert seen == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await feed_engine.dispose()
        await other.dispose()


async def test_the_change_feed_reconnects_after_losing_its_connection(pg_url):
    """A listening connection killed on the server side is re-opened; the listener hears `resync` (notifications
    sent meanwhile are lost) and then the notifications again."""
    engine, other = create_engine(pg_url), create_engine(pg_url)
    seen: list[str] = []
    feed = ChangeFeed(engine, seen.append)
    task = asyncio.create_task(feed.run())
    try:
        await wait_for(_async(lambda: feed.connected), timeout=10)
        async with other.begin() as conn:
            killed = (await conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND datname = current_database() AND pid <> pg_backend_pid()"))).scalar()
        assert killed == 1
        await wait_for(_async(lambda: feed.connections == 2 and feed.connected), timeout=10)
        assert seen == ["resync", "resync"]
        async with other.begin() as conn:
            await announce(conn, "crl:default")
        await wait_for(_async(lambda: "crl:default" in seen), timeout=FEED_BOUND)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.dispose()
        await other.dispose()


def _async(fn):
    async def predicate():
        return fn()

    return predicate
