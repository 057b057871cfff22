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
from tests.scep.test_decryption_stage import SECRET, _contents, _request, _service, ca, device_key  # noqa: F401 - fixtures

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


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


@SQLITE
async def test_the_compromised_key_check_costs_no_round_trip_through_the_async_engine(engine, ca, device_key,
                                                                                      monkeypatch):
    """On SQLite the compromised-key lookup of every enrolment runs beside the transaction lookup, on the decryption
    thread's own connection, not as a query of its own through the async engine; a key revoked as compromised is
    still refused."""
    from scep_server.ca.inventory import Reason
    from trustkit.db import writer

    scep = await _service(engine, ca)
    first = await scep.send(_request(ca, device_key, MessageType.PKCS_REQ, _contents(ca, device_key)[MessageType.PKCS_REQ]),
                            device_key)
    assert first.status is PKIStatus.SUCCESS, first.fail_text
    async with writer(engine).begin() as conn:
        await conn.execute(certificates.update().values(status="revoked", revocation_reason=int(Reason.KEY_COMPROMISE)))

    async def no_round_trip(self, public_key_sha256):
        raise AssertionError("compromised_key went through the async engine")

    monkeypatch.setattr(SqliteRepository, "compromised_key", no_round_trip)
    await _compromised_refused_fresh_issued(scep, ca, device_key)


@POSTGRESQL
async def test_the_compromised_key_check_shares_the_transaction_lookups_round_trip(engine, ca, device_key,
                                                                                  monkeypatch):
    """On PostgreSQL the compromised-key lookup of every enrolment is one statement with the transaction lookup:
    no round trip of its own; a key revoked as compromised is still refused, a retry still recognised."""
    from scep_server.ca.inventory import Reason
    from scep_server.enrolment.sql import PostgresRepository
    from trustkit.db import writer

    scep = await _service(engine, ca)
    body = _request(ca, device_key, MessageType.PKCS_REQ, _contents(ca, device_key)[MessageType.PKCS_REQ])

    async def no_round_trip(self, *args):
        raise AssertionError("a lookup of its own")

    monkeypatch.setattr(PostgresRepository, "compromised_key", no_round_trip)
    monkeypatch.setattr(PostgresRepository, "find", no_round_trip)
    first = await scep.send(body, device_key)
    assert first.status is PKIStatus.SUCCESS, first.fail_text
    retry = await scep.send(body, device_key)  # the transaction found: the same certificate
    assert retry.status is PKIStatus.SUCCESS and retry.certs == first.certs, retry.fail_text
    async with writer(engine).begin() as conn:
        await conn.execute(certificates.update().values(status="revoked", revocation_reason=int(Reason.KEY_COMPROMISE)))
    await _compromised_refused_fresh_issued(scep, ca, device_key)


async def _compromised_refused_fresh_issued(scep, ca, device_key) -> None:
    """A new transaction for the revoked key is refused as compromised; another key's is issued."""
    from tests.factories import rsa_key

    again = await scep.send(_request(ca, device_key, MessageType.PKCS_REQ, _contents(ca, device_key)[MessageType.PKCS_REQ],
                                     transaction_id="again"), device_key)
    assert again.status is PKIStatus.FAILURE and "the public key is compromised" in again.fail_text, again.fail_text
    other = rsa_key()
    fresh = await scep.send(_request(ca, other, MessageType.PKCS_REQ, client.make_csr(other, "device-2", SECRET),
                                     transaction_id="fresh"), other)
    assert fresh.status is PKIStatus.SUCCESS, fresh.fail_text
