"""Every enrolment repository keeps the same guarantees: the in-memory one (used by test_rules.py) and the SQL
ones on SQLite and PostgreSQL. Writes are all or nothing, duplicates are refused, states are compare-and-set."""
from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from scep_server.ca import inventory
from scep_server.ca.authority import random_serial
from scep_server.ca.inventory import Reason
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from scep_server.enrolment.memory import InMemoryRepository
from scep_server.enrolment.repository import Duplicate, NotPending, SignerChanged
from scep_server.enrolment.sql import PostgresRepository, SqliteRepository, repository_for
from trustkit.db import create_engine
from tests.conftest import _truncate_pg
from tests.factories import NOW, csr, make_ca, register_ca, rsa_key

POLICY = IssuancePolicy(CertificateTemplate())
AT = NOW + timedelta(minutes=1)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def key():
    return rsa_key()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def repo_url(request, tmp_path, sqlite_template):
    """None for the in-memory repository, else a migrated, empty database."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        shutil.copy(sqlite_template, tmp_path / "test.db")
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    url = request.getfixturevalue("pg_url")
    asyncio.run(_truncate_pg(url))
    return url


@pytest.fixture
async def repo(repo_url, ca):
    if repo_url is None:
        yield InMemoryRepository()
        return
    engine = create_engine(repo_url)
    try:
        await register_ca(engine, ca)
        repository = repository_for(engine)
        assert isinstance(repository, (SqliteRepository, PostgresRepository))
        await repository.prepare()
        yield repository
    finally:
        await engine.dispose()


def rows(ca, key, txid: str, *, state: str = "issued", renewal_of: str | None = None):
    cert = ca.issue(csr(key, f"cn-{txid}"), POLICY, serial=random_serial(), now=AT)
    der = cert.public_bytes(serialization.Encoding.DER)
    pub = inventory.public_key_sha256(cert.public_key())
    cert_row = inventory.certificate_row(cert, der, ca.name, "p", txid, pub, AT)
    cert_row.update(renewal_of=renewal_of, unused_since=None, enrolled_device_id=None)
    tx_row = dict(profile="p", transaction_id=txid, state=state, message_type=19, csr_der=b"csr",
                  public_key_sha256=pub, serial=cert_row["serial"], created_at=AT, updated_at=AT)
    event = dict(at=AT, kind="pki.cert.issue", subject=cert_row["serial"], actor="scep:p", data={"transaction_id": txid})
    return cert_row, tx_row, event


async def test_record_then_find_and_a_duplicate_transaction_writes_nothing(repo, ca, key):
    first = rows(ca, key, "t1")
    await repo.record(*first)
    found = await repo.find("p", "t1")
    assert found["serial"] == first[0]["serial"] and found["state"] == "issued"
    assert (await repo.certificate(first[0]["serial"])).status == "valid"
    again = rows(ca, key, "t1")
    with pytest.raises(Duplicate):
        await repo.record(*again)
    assert await repo.certificate(again[0]["serial"]) is None
    assert await repo.find("p", "t2") is None


async def test_a_renewal_is_recorded_only_while_its_signer_is_valid(repo, ca, key):
    signer = rows(ca, key, "s")
    await repo.record(*signer)
    renewal = rows(ca, key, "r", renewal_of=signer[0]["serial"])
    await repo.record_guarded(*renewal, renewal_of=signer[0]["serial"], now=AT, supersede=True)
    old = await repo.certificate(signer[0]["serial"])
    assert (old.status, old.revocation_reason) == ("revoked", int(Reason.SUPERSEDED))
    assert (await repo.signer_standing(old.fingerprint_sha256)).successor == renewal[0]["serial"]

    late = rows(ca, key, "r2", renewal_of=signer[0]["serial"])
    with pytest.raises(SignerChanged, match="revoked"):
        await repo.record_guarded(*late, renewal_of=signer[0]["serial"], now=AT, supersede=True)
    assert await repo.certificate(late[0]["serial"]) is None and await repo.find("p", "r2") is None


async def test_pending_transactions_are_decided_once(repo, ca, key):
    cert_row, tx_row, event = rows(ca, key, "pend", state="pending")
    pending = {k: v for k, v in tx_row.items() if k != "serial"}
    assert await repo.insert_transaction(pending) is None
    assert (await repo.insert_transaction(pending))["state"] == "pending"  # the existing row
    await repo.reject_pending("p", "pend", "no", event, actor="a", now=AT)
    with pytest.raises(NotPending):
        await repo.reject_pending("p", "pend", "no", event, actor="a", now=AT)
    with pytest.raises(NotPending):
        await repo.approve("p", "pend", cert_row, event, renewal_of=None, now=AT, supersede=False, actor="b")
    assert await repo.certificate(cert_row["serial"]) is None  # the approval's certificate was not kept
    assert (await repo.find("p", "pend"))["fail_text"] == "no"


async def test_an_acknowledgement_is_confirmed_once_and_leftovers_are_claimed_once(repo, ca, key):
    cert_row, tx_row, event = rows(ca, key, "ack", state="awaiting_ack")
    await repo.record_guarded(cert_row, tx_row, event, renewal_of=None, now=AT, supersede=False)
    [left] = await repo.awaiting_ack(AT + timedelta(minutes=15))
    assert left["serial"] == cert_row["serial"] and left["raw_txid"] == "ack"
    assert await repo.claim(left, AT + timedelta(minutes=16))
    assert not await repo.claim(left, AT + timedelta(minutes=17))  # updated_at moved on
    await repo.confirm_ack("p", "ack", renewal_of=None, now=AT, supersede=False)
    with pytest.raises(NotPending):
        await repo.confirm_ack("p", "ack", renewal_of=None, now=AT, supersede=False)
    assert await repo.awaiting_ack(AT + timedelta(days=1)) == []


async def test_withdraw_revokes_and_rejects(repo, ca, key):
    cert_row, tx_row, event = rows(ca, key, "w")
    await repo.record(cert_row, tx_row, event)
    await repo.withdraw(cert_row["serial"], "p", "w", "refused", dict(event, kind="pki.cert.revoke"), now=AT)
    record = await repo.certificate(cert_row["serial"])
    assert (record.status, record.revocation_reason) == ("revoked", int(Reason.CESSATION_OF_OPERATION))
    assert (await repo.find("p", "w"))["state"] == "rejected"
    assert await repo.valid_serials_for_key("p", cert_row["public_key_sha256"], AT) == []


async def test_a_key_revoked_for_key_compromise_is_found_by_its_public_key(repo, ca, key):
    withdrawn = rows(ca, key, "w")
    await repo.record(*withdrawn)
    await repo.withdraw(withdrawn[0]["serial"], "p", "w", "refused", dict(withdrawn[2], kind="pki.cert.revoke"), now=AT)
    pub = withdrawn[0]["public_key_sha256"]
    assert await repo.compromised_key(pub) is None  # revoked, but not as compromised
    serial = withdrawn[0]["serial"]
    if isinstance(repo, InMemoryRepository):
        repo.certificates[serial]["revocation_reason"] = int(Reason.KEY_COMPROMISE)
    else:
        from scep_server.store.tables import certificates
        from trustkit.db import writer

        async with writer(repo.engine).begin() as conn:
            await conn.execute(certificates.update().where(certificates.c.serial == serial).values(
                revocation_reason=int(Reason.KEY_COMPROMISE)))
    assert await repo.compromised_key(pub) == serial
    assert await repo.compromised_key("0" * 64) is None


# ---------------------------------------------------------------- SQLite: signing threads share one durable commit

@pytest.fixture
async def sqlite_repo(tmp_path, sqlite_template, ca):
    shutil.copy(sqlite_template, tmp_path / "test.db")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    try:
        await register_ca(engine, ca)
        repository = repository_for(engine)
        assert isinstance(repository, SqliteRepository)
        await repository.prepare()
        yield repository
    finally:
        await engine.dispose()


async def test_writes_queued_while_one_commits_share_the_next_commit_and_a_duplicate_fails_alone(sqlite_repo, ca, key):
    import threading

    from trustkit import batching

    batches: list[tuple[str, int]] = []
    previous = batching.set_observer(lambda name, items, seconds: batches.append((name, items)))
    try:
        sqlite_repo.record_sync(*rows(ca, key, "first"))
        assert batches == [("enrolment_record", 1)]  # a lone write commits at once
        writes = [rows(ca, key, f"g{i}") for i in range(5)] + [rows(ca, key, "first")]  # the last: a duplicate
        outcomes: dict[str, object] = {}

        def write(r):
            try:
                sqlite_repo.record_sync(*r)
                outcomes[r[1]["transaction_id"] + r[0]["serial"]] = "ok"
            except Duplicate as exc:
                outcomes[r[1]["transaction_id"] + r[0]["serial"]] = exc

        sqlite_repo._write_lock.acquire()  # a commit in progress: the six writes queue behind it
        threads = [threading.Thread(target=write, args=(r,)) for r in writes]
        for t in threads:
            t.start()
        for _ in range(500):  # bounded: until all six are queued
            if len(sqlite_repo._queue) == 6:
                break
            await asyncio.sleep(0.01)
        assert len(sqlite_repo._queue) == 6
        sqlite_repo._write_lock.release()
        for t in threads:
            t.join(10)
        assert batches[1:] == [("enrolment_record", 6)]  # one commit carried all six
        assert sorted(map(str, outcomes.values())).count("ok") == 5
        assert sum(isinstance(v, Duplicate) for v in outcomes.values()) == 1
        for r in writes[:5]:
            assert (await sqlite_repo.find("p", r[1]["transaction_id"]))["serial"] == r[0]["serial"]
        # the duplicate wrote nothing: the transaction still names the first certificate only
        assert (await sqlite_repo.find("p", "first"))["serial"] != writes[5][0]["serial"]
    finally:
        batching.set_observer(previous)


async def test_each_worker_thread_keeps_one_connection_and_never_reuses_it_mid_transaction(sqlite_repo, ca, key):
    """The inline reads and writes run on a connection per thread, kept across calls (no pool checkout per
    enrolment); one found inside a transaction (a write cut short) is rolled back before it is used again."""
    import threading

    first = rows(ca, key, "kept")
    sqlite_repo.record_sync(*first)
    db = sqlite_repo._db()
    assert sqlite_repo.lookup_sync("p", "kept")[0]["serial"] == first[0]["serial"]
    assert sqlite_repo._db() is db
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM scep_transactions")  # never committed
    assert sqlite_repo._db() is db and not db.in_transaction
    assert sqlite_repo.find_sync("p", "kept") is not None
    other: list = []
    worker = threading.Thread(target=lambda: other.append(sqlite_repo._db()))
    worker.start()
    worker.join()
    assert other[0] is not db  # a connection of its own
    sqlite_repo.record_sync(*rows(ca, key, "after"))  # the write lock was given back
    assert await sqlite_repo.find("p", "after") is not None


async def test_a_recorded_issue_keeps_its_savepoint_journal_in_memory(sqlite_repo, ca, key):
    """Each write of a group commit runs in a savepoint, whose journal holds the original of every page the
    write changes: a leaf of each of the three tables and their indexes, more than SQLite keeps in memory by
    default (64 KiB). Spilled, every commit created, wrote and deleted a temporary file. The repository's
    connections keep temporary storage in memory: no such file is opened while a write is in its savepoint."""
    import os

    db = sqlite_repo._db()  # record_sync below runs on this thread: on this connection
    open_during_write: list[list[str]] = []

    def temporary_files() -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if "etilqs_" in target:  # SQLite's name for its temporary files (unlinked once opened)
                found.append(target)
        return found

    def traced(statement: str) -> None:
        if statement.startswith("RELEASE"):  # the write's inserts ran: its savepoint journal is complete
            open_during_write.append(temporary_files())

    db.set_trace_callback(traced)
    try:
        for txid in ("one", "two"):
            sqlite_repo.record_sync(*rows(ca, key, txid))
    finally:
        db.set_trace_callback(None)
    assert open_during_write == [[], []]
    assert db.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    assert (await sqlite_repo.find("p", "two")) is not None


async def test_pending_transactions_are_found_by_profile_and_age_oldest_first(repo, ca, key):
    """What the sweep of expired pending enrolments reads (scep_server.enrolment.expiry)."""
    for name, profile, age in (("a", "p", 3), ("b", "p", 1), ("c", "q", 5), ("d", "p", 4)):
        _, tx_row, _ = rows(ca, key, name, state="pending")
        at = AT - timedelta(days=age)
        await repo.insert_transaction({**{k: v for k, v in tx_row.items() if k != "serial"}, "profile": profile,
                                       "created_at": at, "updated_at": at})
    issued = rows(ca, key, "e")
    await repo.record(*issued)
    assert sorted(await repo.pending_profiles()) == ["p", "q"]
    found = await repo.pending_before("p", AT - timedelta(days=2), limit=10)
    assert [r["transaction_id"] for r in found] == ["d", "a"]
    assert [r["transaction_id"] for r in await repo.pending_before("p", AT, limit=1)] == ["d"]
    await repo.reject_pending("p", "d", "expired", dict(at=AT, kind="scep.enrolment.expire", subject="d",
                                                        actor="system:expiry", data={}), actor="system:expiry", now=AT)
    assert [r["transaction_id"] for r in await repo.pending_before("p", AT, limit=10)] == ["a", "b"]
