"""On SQLite the durable commit of an issued certificate overlaps the CertRep's signature, and the reply still
leaves only once the rows are committed: a commit that fails sends no certificate."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa
from cryptography import x509

from scep_server.enrolment.sql import SqliteRepository
from scep_server.scep import MessageType, PKIStatus, client
from scep_server.store.tables import certificates
from tests.scep.test_decryption_stage import _contents, _request, _service, ca, device_key  # noqa: F401 - fixtures

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@SQLITE
async def test_the_certrep_is_signed_while_the_commit_waits_and_sent_after_it(engine, ca, device_key, monkeypatch):
    scep = await _service(engine, ca)
    assert isinstance(scep.service.repository, SqliteRepository)
    seen: dict[str, float | str] = {}
    record, reply = SqliteRepository.record_sync, type(scep.service)._reply

    def slow_record(self, *rows):
        seen["commit_thread"] = threading.current_thread().name
        seen["commit_start"] = time.monotonic()
        time.sleep(0.3)  # the disk is slow today
        record(self, *rows)
        seen["commit_end"] = time.monotonic()

    def timed_reply(self, *args, **kwargs):
        seen["sign_thread"] = threading.current_thread().name
        seen["sign_start"] = time.monotonic()
        return reply(self, *args, **kwargs)

    monkeypatch.setattr(SqliteRepository, "record_sync", slow_record)
    monkeypatch.setattr(type(scep.service), "_reply", timed_reply)
    rep = await scep.send(_request(ca, device_key, MessageType.PKCS_REQ, _contents(ca, device_key)[MessageType.PKCS_REQ]),
                          device_key)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert seen["commit_thread"] != seen["sign_thread"]
    assert seen["commit_start"] <= seen["sign_start"] < seen["commit_end"]  # the two overlapped
    async with engine.connect() as conn:  # and what was answered is recorded
        serials = (await conn.execute(sa.select(certificates.c.serial))).scalars().all()
    issued = x509.load_der_x509_certificate(rep.certs[0])
    assert serials == [format(issued.serial_number, "x")]


@SQLITE
async def test_a_commit_that_fails_sends_no_certificate(engine, ca, device_key, monkeypatch):
    scep = await _service(engine, ca)

    def broken(self, *rows):
        time.sleep(0.05)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SqliteRepository, "record_sync", broken)
    body = _request(ca, device_key, MessageType.PKCS_REQ, _contents(ca, device_key)[MessageType.PKCS_REQ])
    with pytest.raises(sqlite3.OperationalError):
        await scep.service.pki_operation("p", body)
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(certificates))).scalar() == 0
    monkeypatch.undo()
    rep = await scep.send(body, device_key)  # the same request again, once the disk is back: issued
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
