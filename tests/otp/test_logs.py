"""Log lines are JSON objects with their fields, whether written through structlog or the stdlib (`extra=`)."""
from __future__ import annotations

import json
import logging

import pytest
import structlog

from otp.errors import Reason
from scep_server.logs import configure
from tests.otp.conftest import import_keys, make_key


@pytest.fixture
def json_logs():
    before = list(logging.getLogger().handlers), logging.getLogger().level
    configure("info", "json")
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in before[0]:
            root.removeHandler(handler)
    root.setLevel(before[1])


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_stdlib_and_structlog_lines_are_json_with_their_fields(json_logs, capsys):
    logging.getLogger("otp.service").warning("otp.security", extra={"reason": "unknown_key", "source": "192.0.2.7",
                                                                    "client_id": 3})
    structlog.get_logger("scep").info("scep.transaction", profile="default", outcome="SUCCESS")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("otp.batching").error("otp.batch.failed", exc_info=True)
    lines = json_lines(capsys.readouterr().err)
    assert lines[0]["event"] == "otp.security" and lines[0]["level"] == "warning"
    assert (lines[0]["reason"], lines[0]["source"], lines[0]["client_id"]) == ("unknown_key", "192.0.2.7", 3)
    assert lines[0]["logger"] == "otp.service" and "timestamp" in lines[0]
    assert lines[1]["event"] == "scep.transaction" and lines[1]["outcome"] == "SUCCESS"
    assert lines[2]["event"] == "otp.batch.failed" and "ValueError: boom" in lines[2]["exception"]


def test_configured_twice_logs_once(json_logs, capsys):
    configure("info", "json")
    logging.getLogger("otp").info("otp.import", extra={"keys": 2})
    assert [line["keys"] for line in json_lines(capsys.readouterr().err)] == [2]


async def test_otp_security_event_reaches_the_log_with_its_fields(json_logs, capsys, service):
    await import_keys(service, [make_key(800)])
    outcome = await service.verify_signin("eve", make_key(801).otp(), source="198.51.100.9")
    assert outcome.reason is Reason.UNKNOWN_KEY
    events = [line for line in json_lines(capsys.readouterr().err) if line["event"] == "otp.security"]
    assert len(events) == 1
    assert (events[0]["reason"], events[0]["user"], events[0]["source"]) == ("unknown_key", "eve", "198.51.100.9")
    assert events[0]["public_id"] == make_key(801).public_id


def test_migrations_do_not_announce_their_plugins_at_info(json_logs, capsys):
    """At info an operator sees what the server does, not alembic's plugin set-up at every start."""
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade")
    events = [line["event"] for line in json_lines(capsys.readouterr().err)]
    assert events == ["Running upgrade"]


async def test_a_served_otp_failure_logs_json_with_its_fields_and_request_id(tmp_path):
    """`scep-server serve` with log.format=json: every stderr line is a JSON object; the OTP library's stdlib
    security event keeps its `extra=` fields and carries the request's id, as does the access line."""
    import os
    import subprocess
    import sys

    import aiohttp

    from scep_server.runtime import initialise
    from scep_server.tokens import TokenStore
    from tests.factories import NOW, settings_for
    from tests.server import _wait_ready, free_port
    from trustkit.db import create_engine

    settings = settings_for(tmp_path / "data")
    await initialise(settings)
    engine = create_engine(settings.database_url())
    try:
        token = (await TokenStore(engine).create(scope="signin", name="served-logs", now=NOW))[1]
    finally:
        await engine.dispose()
    port = free_port()
    env = {**os.environ, "SCEP_SERVER_LOG__FORMAT": "json", "SCEP_SERVER_LOG__LEVEL": "info",
           "SCEP_SERVER_LOG__ACCESS": "true", "SCEP_SERVER_CA__KEY_SIZE": "2048"}
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "scep_server.cli", "--data-dir", str(settings.data_dir),
                                 "serve", "--listen", f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            _wait_ready(f"http://127.0.0.1:{port}", proc)
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{port}/api/v1/otp/verify",
                                     json={"user": "eve", "otp": make_key(901).otp()},
                                     headers={"Authorization": f"Bearer {token}", "X-Request-ID": "otp-901"}) as r:
                    assert r.status == 403 and (await r.json())["reason"] == "unknown_key"
                    assert r.headers["X-Request-ID"] == "otp-901"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    text = stderr.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    (security,) = [line for line in lines if line["event"] == "otp.security"]
    assert (security["reason"], security["user"], security["public_id"], security["source"]) == (
        "unknown_key", "eve", make_key(901).public_id, "127.0.0.1")
    assert (security["level"], security["logger"], security["request_id"]) == ("warning", "otp.service", "otp-901")
    (verify,) = [line for line in lines if line["event"] == "otp.verify"]
    assert verify["request_id"] == "otp-901" and verify["api"] == "signin"
    access = [line for line in lines if line["event"] == "http.access" and line["request_id"] == "otp-901"]
    assert [(a["route"], a["status"]) for a in access] == [("/api/v1/otp/verify", 403)]
