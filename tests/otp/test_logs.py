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
