"""Prometheus metrics (scep_server.metrics, /metrics): what real enrolments, OTP checks, attestation answers and
CRL publications record; the scrape-time gauges; the token and the separate listen address; a two-worker server
whose workers' counts are summed (prometheus-client's multiprocess mode), on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import base64
import os
import secrets

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cryptography import x509

from otp import yubico
from scep_server.ca.inventory import Reason, serial_hex
from scep_server.config import ConfigError, load_settings
from scep_server.metrics import FLUSH_SECONDS
from scep_server.scep import client
from scep_server.scep.types import MessageType, PKIStatus
from scep_server.tokens import TokenStore
from tests.factories import NOW, rsa_key
from tests.otp.conftest import make_key, secrets_file
from tests.server import free_port, serve_processes, start_app
from trustkit.db import create_engine

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly these labels (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample `name` whose labels include these."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


async def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics", headers=headers) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(text)


async def ra_der(url: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/scep/default?operation=GetCACert") as resp:
        assert resp.status == 200
        return client.certs_in_order(await resp.read())[0]


async def enrol(session: aiohttp.ClientSession, url: str, ra: bytes, key, challenge: str, cn: str, *,
                full: bool = False):
    """One PKCSReq on a connection of its own (so the kernel may hand it to any worker)."""
    body = client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(key, cn, challenge=challenge),
        signer_cert_der=client.make_self_signed_signer(key, cn=cn), signer_key=key, recipient_cert_der=ra,
        transaction_id=secrets.token_hex(16), sender_nonce=secrets.token_bytes(16), cek=secrets.token_bytes(16),
        iv=secrets.token_bytes(16))
    async with session.post(f"{url}/scep/default?operation=PKIOperation", data=body,
                            headers={"Connection": "close"}) as resp:
        assert resp.status == 200
        rep = client.parse_cert_rep(await resp.read(), key, ra_cert_der=ra)
        return rep if full else rep.status


async def make_tokens(db_url: str) -> dict[str, str]:
    engine = create_engine(db_url)
    try:
        store = TokenStore(engine)
        return {scope: (await store.create(scope=scope, name=f"metrics-{scope}-{secrets.token_hex(3)}", now=NOW))[1]
                for scope in ("admin", "signin")}
    finally:
        await engine.dispose()


async def first_crl(app):
    """The CRL served, once the publisher has signed or adopted its first one."""
    publisher = app.runtime.crl.publishers["default"]
    return publisher.current or await publisher.wait_newer(None, timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Connection": "close"}


# ---------------------------------------------------------------- one process (the tests' in-process server)

async def test_enrolments_otp_attestation_and_crl_are_recorded(aiohttp_server, tmp_path, db_url):
    app = await start_app(aiohttp_server, tmp_path, db_url)
    url = app.url
    tok = await make_tokens(app.settings.database_url())
    before = await scrape(url)
    ra = await ra_der(url)
    key = rsa_key()
    async with aiohttp.ClientSession() as http:
        assert await enrol(http, url, ra, key, app.challenge(), "metrics-1") is PKIStatus.SUCCESS
        assert await enrol(http, url, ra, rsa_key(), "wrong", "metrics-2") is PKIStatus.FAILURE
        # a profile that does not exist never becomes a label value
        async with http.post(url + "/scep/no-such-profile-%0a?operation=PKIOperation", data=b"\x30\x00") as r:
            assert r.status == 404
        otp_key = make_key(710_001)
        async with http.post(url + "/api/v1/yubikeys/import", data=secrets_file([otp_key]),
                             headers=bearer(tok["admin"])) as r:
            assert r.status == 201, await r.text()
        otp = otp_key.otp()
        for expected in (200, 403):  # enrolled, then the same OTP replayed
            async with http.post(url + "/api/v1/otp/verify", json={"user": "ada", "otp": otp},
                                 headers=bearer(tok["signin"])) as r:
                assert r.status == expected
        # the validation protocol 2.0: a client that exists is its id, any other is "unknown"
        info, api_key = await app.runtime.otp.add_client("metrics")
        wsapi_key = make_key(710_002)
        async with http.post(url + "/api/v1/yubikeys/import", data=secrets_file([wsapi_key]),
                             headers=bearer(tok["admin"])) as r:
            assert r.status == 201
        for client_id, key_b64 in ((str(info.id), api_key), ("987654", api_key)):
            params = {"id": client_id, "otp": wsapi_key.otp(), "nonce": secrets.token_hex(10)}
            params["h"] = yubico.sign(params, base64.b64decode(key_b64))
            async with http.get(url + "/wsapi/2.0/verify", params=params) as r:
                assert r.status == 200
        async with http.post(url + "/api/v1/attestation/verify", json={"device_id": "x"},
                             headers=bearer(tok["signin"])) as r:
            assert r.status == 400
    after = await scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("scep_enrolments_total", profile="default", message_type="PKCSReq", outcome="SUCCESS",
                 fail_info="none") == 1
    assert delta("scep_enrolments_total", profile="default", message_type="PKCSReq", outcome="FAILURE",
                 fail_info="BAD_REQUEST") == 1
    assert delta("scep_enrolment_duration_seconds_count", profile="default") == 2
    assert not any(dict(ls).get("profile", "").startswith("no-such-profile") for (_, ls) in after)
    assert delta("otp_verifications_total", client="signin", status="enrolled") == 1
    assert delta("otp_verifications_total", client="signin", status="replayed_otp") == 1
    assert total(after, "group_commit_batch_size_count", store="otp.keys") \
        > total(before, "group_commit_batch_size_count", store="otp.keys")
    assert delta("otp_verifications_total", client=str(info.id), status="OK") == 1
    assert delta("otp_verifications_total", client="unknown", status="NO_SUCH_CLIENT") == 1
    assert total(after, "group_commit_batch_size_count", store="otp.counters") \
        > total(before, "group_commit_batch_size_count", store="otp.counters")
    assert delta("attestation_verdicts_total", reason="bad_request") == 1
    # the state of the worker answering, computed at the scrape
    current = await first_crl(app)
    after = await scrape(url)
    assert value(after, "crl_number", ca="default") == current.number
    assert value(after, "crl_next_update_timestamp_seconds", ca="default") == current.next_update.timestamp()
    assert value(after, "crl_this_update_timestamp_seconds", ca="default") == current.this_update.timestamp()
    assert value(after, "crl_entries", ca="default") == current.entries
    ca = app.runtime.cas["default"]
    assert value(after, "ca_certificate_not_after_timestamp_seconds", ca="default", role="ca") \
        == ca.cert.not_valid_after_utc.timestamp()
    assert value(after, "ca_certificate_not_after_timestamp_seconds", ca="default", role="ra") \
        == ca.ra_cert.not_valid_after_utc.timestamp()
    assert value(after, "scep_server_ready", check="database") == 1
    assert value(after, "scep_server_ready", check="otp") == 1
    assert value(after, "scep_server_scrape_worker", pid=str(os.getpid())) == 1
    assert total(after, "process_cpu_seconds_total") > 0


async def test_revocation_to_publication_latency(aiohttp_server, tmp_path, db_url):
    app = await start_app(aiohttp_server, tmp_path, db_url, crl={"coalesce_delay": 0.05})
    url = app.url
    ra = await ra_der(url)
    key = rsa_key()
    async with aiohttp.ClientSession() as http:
        rep = await enrol(http, url, ra, key, app.challenge(), "revoked-1", full=True)
    assert rep.status is PKIStatus.SUCCESS
    serial = serial_hex(x509.load_der_x509_certificate(rep.certs[0]).serial_number)
    publisher = app.runtime.crl.publishers["default"]
    first = await first_crl(app)
    before = await scrape(url)
    await app.runtime.revocation.revoke(serial, Reason.KEY_COMPROMISE, actor="test")
    newer = await publisher.wait_newer(first.number, timeout=10)
    assert newer.entries == first.entries + 1
    after = await scrape(url)
    assert value(after, "crl_revocation_to_publication_seconds_count", ca="default") \
        - value(before, "crl_revocation_to_publication_seconds_count", ca="default") == 1
    assert value(after, "crl_publish_duration_seconds_count", ca="default") \
        > value(before, "crl_publish_duration_seconds_count", ca="default")
    assert value(after, "crl_entries", ca="default") == newer.entries
    # a re-sign that lists nothing new observes no latency
    await publisher.publish_now()
    again = await scrape(url)
    assert value(again, "crl_revocation_to_publication_seconds_count", ca="default") \
        == value(after, "crl_revocation_to_publication_seconds_count", ca="default")


# ---------------------------------------------------------------- settings: off, token, listen address

async def test_metrics_off_has_no_route(aiohttp_server, tmp_path):
    app = await start_app(aiohttp_server, tmp_path, metrics={"enabled": False})
    async with aiohttp.ClientSession() as s, s.get(app.url + "/metrics") as resp:
        assert resp.status == 404


async def test_token_is_required_when_configured(aiohttp_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_METRICS_TOKEN", "s3cret-scrape-token")
    app = await start_app(aiohttp_server, tmp_path, metrics={"token_env": "TEST_METRICS_TOKEN"})
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret-scrape-token2"},
                        {"Authorization": "Basic czNjcmV0LXNjcmFwZS10b2tlbg=="},
                        {"Authorization": "Bearer \udcff"[:-1] + "é"}):
            async with s.get(app.url + "/metrics", headers=headers) as resp:
                assert resp.status == 401, headers
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
                assert resp.content_type == "application/problem+json"
    samples = await scrape(app.url, "s3cret-scrape-token")
    assert value(samples, "scep_server_ready", check="database") == 1


def test_token_sources_are_checked(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="token_env or token_file"):
        load_settings(None, metrics={"token_env": "X", "token_file": "/x"})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_settings(None, metrics={"listen": "9100"})
    monkeypatch.delenv("TEST_METRICS_UNSET", raising=False)
    with pytest.raises(ConfigError, match="TEST_METRICS_UNSET"):
        load_settings(None, metrics={"token_env": "TEST_METRICS_UNSET"}).metrics.token()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="holds no token"):
        load_settings(None, metrics={"token_file": str(empty)}).metrics.token()
    good = tmp_path / "token"
    good.write_text("from-a-file\nsecond line ignored\n")
    assert load_settings(None, metrics={"token_file": str(good)}).metrics.token() == "from-a-file"


async def test_separate_listen_address(aiohttp_server, tmp_path):
    port = free_port()
    app = await start_app(aiohttp_server, tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
    async with aiohttp.ClientSession() as s:
        async with s.get(app.url + "/metrics") as resp:
            assert resp.status == 404  # only on the metrics address
        async with s.get(app.url + "/healthz") as resp:
            assert resp.status == 200
    current = await first_crl(app)
    samples = await scrape(f"http://127.0.0.1:{port}")
    assert value(samples, "scep_server_ready", check="database") == 1
    assert value(samples, "crl_number", ca="default") == current.number


# ---------------------------------------------------------------- two workers: the counts of both, summed

@pytest.mark.slow
async def test_two_workers_are_summed(tmp_path, db_url):
    port = free_port()
    token_file = tmp_path / "metrics-token"
    token_file.write_text("two-workers-token\n")
    env = {"SCEP_SERVER_METRICS__LISTEN": f"127.0.0.1:{port}", "SCEP_SERVER_METRICS__TOKEN_FILE": str(token_file)}
    metrics_url = f"http://127.0.0.1:{port}"
    enrolments, otps = 12, 16
    with serve_processes(tmp_path / "data", db_url, workers=2, env=env) as (url,):
        tok = await make_tokens(db_url)
        ra = await ra_der(url)
        challenge = (tmp_path / "data" / "default-challenge.txt").read_text().strip()
        keys = [make_key(720_000 + i) for i in range(otps)]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(url + "/metrics") as resp:
                assert resp.status == 404  # the metrics address only
            async with http.get(metrics_url + "/metrics") as resp:
                assert resp.status == 401
            async with http.post(url + "/api/v1/yubikeys/import", data=secrets_file(keys),
                                 headers=bearer(tok["admin"])) as r:
                assert r.status == 201, await r.text()
            rsa_keys = [rsa_key() for _ in range(enrolments)]
            statuses = await asyncio.gather(*(enrol(http, url, ra, k, challenge, f"w-{i}")
                                              for i, k in enumerate(rsa_keys)))
            assert set(statuses) == {PKIStatus.SUCCESS}

            async def verify(k) -> int:
                async with http.post(url + "/api/v1/otp/verify", json={"user": f"u{k.serial}", "otp": k.otp()},
                                     headers=bearer(tok["signin"])) as r:
                    return r.status
            assert set(await asyncio.gather(*(verify(k) for k in keys))) == {200}

            # more requests, on fresh connections, until both workers have answered some (bounded)
            served: dict[str, float] = {}
            for _ in range(50):
                samples = await scrape(metrics_url, "two-workers-token")
                served = {s["pid"]: value(samples, "scep_server_worker_requests", **s)
                          for s in series(samples, "scep_server_worker_requests")}
                if len(served) == 2 and all(v > 0 for v in served.values()):
                    break
                await asyncio.gather(*(http.get(url + "/healthz") for _ in range(8)))
        assert len(served) == 2 and all(v > 0 for v in served.values()), served
        # a worker applies its increments within FLUSH_SECONDS: the sums are complete by then
        await asyncio.sleep(FLUSH_SECONDS * 2)
        # every scrape, whichever worker answers it, reports the sum of both workers (scrapes four at a time: one
        # after another, the same idle worker may accept every connection)
        answered_by = set()
        for _ in range(25):
            for samples in await asyncio.gather(*(scrape(metrics_url, "two-workers-token") for _ in range(4))):
                answered_by |= {s["pid"] for s in series(samples, "scep_server_scrape_worker")}
                assert value(samples, "scep_enrolments_total", profile="default", message_type="PKCSReq",
                             outcome="SUCCESS", fail_info="none") == enrolments
                assert value(samples, "otp_verifications_total", client="signin", status="enrolled") == otps
                assert value(samples, "scep_enrolment_duration_seconds_count", profile="default") == enrolments
                assert value(samples, "crl_number", ca="default") >= 1
            if len(answered_by) == 2:
                break
        assert answered_by == set(served), (answered_by, served)


# ---------------------------------------------------------------- the multiprocess directory of one start

def test_multiprocess_directory_is_made_per_start_and_removed(tmp_path, monkeypatch):
    from scep_server import metrics

    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    first = metrics.prepare_multiprocess(tmp_path)
    try:
        assert first.is_dir() and list(first.iterdir()) == []
        assert os.environ[metrics.MULTIPROC_ENV] == str(first)
        (first / "gauge_liveall_4242.db").write_bytes(b"")
        (first / "counter_4242.db").write_bytes(b"")
        metrics.worker_exited(4242)  # its live gauges go, its counts stay
        assert [p.name for p in first.iterdir()] == ["counter_4242.db"]
    finally:
        metrics.cleanup_multiprocess(first)
    assert not first.exists() and metrics.MULTIPROC_ENV not in os.environ
    second = metrics.prepare_multiprocess(tmp_path)
    metrics.cleanup_multiprocess(second)
    assert second != first


# ---------------------------------------------------------------- increments on the loop, applied together

@pytest.fixture
def otp_writes():
    """(status -> the writes made to the OTP counter's series of that status), recorded."""
    from scep_server import metrics

    metrics.activate()
    m = metrics._active
    watched = []

    def watch(status: str) -> list[float]:
        child = m.child(m.otp, "signin", status)
        writes: list[float] = []
        real_inc = child.inc
        child.inc = lambda amount=1.0: (writes.append(amount), real_inc(amount))
        watched.append(child)
        return writes

    yield watch
    for child in watched:
        del child.inc


def otp_count(status: str) -> float:
    from scep_server import metrics

    return value(parse(metrics.render(metrics.Snapshot())[0].decode()), "otp_verifications_total",
                 client="signin", status=status)


async def test_the_increments_on_the_loop_are_applied_together_within_the_flush_period(otp_writes):
    from scep_server import metrics

    writes = otp_writes("REPLAYED_OTP")
    before = otp_count("REPLAYED_OTP")
    for _ in range(3):
        metrics.otp_verified("signin", "REPLAYED_OTP")
        await asyncio.sleep(0)  # turns of the loop go by
    assert writes == []  # nothing written yet
    await asyncio.sleep(metrics.FLUSH_SECONDS * 2)
    assert writes == [3.0]  # one write for the three
    metrics.otp_verified("signin", "REPLAYED_OTP")
    assert otp_count("REPLAYED_OTP") == before + 4  # a scrape reports what this worker holds
    assert writes == [3.0, 1.0]
    await asyncio.sleep(metrics.FLUSH_SECONDS * 2)
    assert writes == [3.0, 1.0]  # nothing counted twice


def test_increments_left_by_a_closed_loop_are_applied_with_the_next_loops(otp_writes):
    from scep_server import metrics

    writes = otp_writes("DELAYED_OTP")

    async def count(then_wait: bool) -> None:
        metrics.otp_verified("signin", "DELAYED_OTP")
        if then_wait:
            await asyncio.sleep(metrics.FLUSH_SECONDS * 2)

    asyncio.run(count(False))  # the loop closes before its flush is due
    assert writes == []
    asyncio.run(count(True))  # another loop on the same thread: it schedules a flush of its own
    assert writes == [2.0]


def test_an_increment_outside_a_loop_is_applied_at_once(otp_writes):
    from scep_server import metrics

    writes = otp_writes("BAD_OTP")
    metrics.otp_verified("signin", "BAD_OTP")
    assert writes == [1.0]


async def test_histogram_observations_on_the_loop_wait_and_are_applied_in_order():
    """A group commit's batch histograms are observed off the request's path: queued on the loop, applied within
    the flush period (or by a scrape), each value once; outside a loop at once."""
    from scep_server import metrics

    metrics.activate()
    m = metrics._active
    child = m.child(m.batch_size, "deferred-test")
    seen: list[float] = []
    real_observe = child.observe
    child.observe = lambda value: (seen.append(value), real_observe(value))
    try:
        for items in (3, 5):
            metrics.group_commit("deferred-test", items, 0.002)
            await asyncio.sleep(0)
        assert seen == []  # not yet: the requests of the batch are answered first
        await asyncio.sleep(metrics.FLUSH_SECONDS * 2)
        assert seen == [3, 5]
        metrics.group_commit("deferred-test", 7, 0.002)
        metrics.flush()  # what a scrape does first
        assert seen == [3, 5, 7]
        await asyncio.sleep(metrics.FLUSH_SECONDS * 2)
        assert seen == [3, 5, 7]  # nothing observed twice
        await asyncio.to_thread(metrics.group_commit, "deferred-test", 9, 0.002)
        assert seen == [3, 5, 7, 9]  # a thread applies at once
    finally:
        del child.observe


def test_a_metric_write_that_fails_is_logged_once_and_never_raises(caplog):
    """A metrics file that cannot grow: the increment or observation is dropped with one log line per kind, and
    the caller (a request) carries on."""
    from scep_server import metrics

    metrics.activate()
    metrics._log_failure_once.cache_clear()
    m = metrics._active
    counter, histogram = m.child(m.otp, "signin", "FAILING_WRITE"), m.child(m.batch_size, "failing-write")

    def inc(_value):  # named as prometheus-client's methods
        raise OSError("no space left on device")

    def observe(_value):
        raise OSError("no space left on device")

    counter.inc, histogram.observe = inc, observe
    try:
        for _ in range(3):
            metrics.otp_verified("signin", "FAILING_WRITE")  # outside a loop: applied (and failing) at once
            metrics.group_commit("failing-write", 2, 0.001)
    finally:
        del counter.inc, histogram.observe
    failures = sorted(r.getMessage() for r in caplog.records if "metrics.record_failed" in r.getMessage())
    assert failures == ["metrics.record_failed: inc", "metrics.record_failed: observe"]  # once per kind
