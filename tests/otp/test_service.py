"""The OTP service on SQLite and PostgreSQL: import, enrolment, replay, throttling, revoke, delete, report."""
from __future__ import annotations

import asyncio
import base64
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from otp import yubico
from otp.config import OtpSettings, ThrottleSettings
from otp.errors import Conflict, InvalidInput, NotFound, Reason
from otp.report import ReportFilter
from trustkit.paging import PageRequest
from otp.service import OtpService
from otp.tables import metadata, otp_yubikeys
from tests.otp.conftest import PausedConnection, import_keys, key_h, make_key, secrets_file

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "otp"


async def protocol(service: OtpService, client_id: int, key: bytes, otp: str, *, nonce: str | None = None,
                   sign_with: bytes | None = None, **extra: str) -> dict[str, str]:
    """One signed /wsapi/2.0/verify exchange; the reply's own signature is checked."""
    params = {"id": str(client_id), "otp": otp, "nonce": nonce or secrets.token_hex(10), **extra}
    params["h"] = yubico.sign(params, key if sign_with is None else sign_with)
    fields = yubico.decode_response(await service.verify_protocol(params))
    assert yubico.signature_matches(fields, key), fields
    return fields


@pytest.fixture
async def client(service):
    info, key = await service.add_client("tests")
    return info.id, base64.b64decode(key)


# ---- schema -----------------------------------------------------------------------------------

async def test_migration_matches_table_definitions(engine):
    def columns(conn):
        insp = sa.inspect(conn)
        return {t: sorted(c["name"] for c in insp.get_columns(t)) for t in metadata.tables}
    async with engine.connect() as conn:
        found = await conn.run_sync(columns)
    assert found == {name: sorted(c.name for c in t.columns) for name, t in metadata.tables.items()}


# ---- import -----------------------------------------------------------------------------------

async def test_import_yubico_format_and_report(service):
    result = await service.import_secrets((FIXTURES / "yubico-format.csv").read_bytes(), actor="admin")
    assert result.ok and result.imported == 3 and result.import_id
    rows = await service.report()
    assert [(r.serial, r.status, r.user) for r in rows] == [
        (7886622, "UNASSIGNED", None), (12345678, "UNASSIGNED", None), (12345680, "UNASSIGNED", None)]
    assert rows[0].history[0]["event"] == "otp.key.imported" and rows[0].history[0]["actor"] == "admin"


@pytest.mark.parametrize("name,count", [("ykman-config-output.csv", 2), ("ykksm-provisioning.csv", 2),
                                        ("traditional-serial-public-id.csv", 2), ("bom-crlf.csv", 2),
                                        ("mixed-configurations.csv", 1)])
async def test_import_other_formats(service, name, count):
    result = await service.import_secrets((FIXTURES / name).read_bytes())
    assert result.ok and result.imported == count
    assert len(await service.report()) == count


@pytest.mark.parametrize("name,lines", [("bad-line-in-middle.csv", [3]), ("duplicates.csv", [3, 4]),
                                        ("traditional-log.csv", [2, 3]), ("bad-lengths.csv", [1, 2, 3, 4, 5, 6])])
async def test_import_is_all_or_nothing(service, name, lines):
    result = await service.import_secrets((FIXTURES / name).read_bytes())
    assert not result.ok and result.imported == 0
    assert sorted({e.line for e in result.errors}) == lines
    assert await service.report() == []


async def test_import_refuses_keys_already_in_the_inventory(service):
    await import_keys(service, [make_key(100), make_key(101, public_id="ccccccbbbbbc")])
    again_serial = make_key(100, public_id="ccccccccbbbb")
    again_public_id = make_key(102, public_id="ccccccbbbbbc")
    fresh = make_key(103)
    result = await service.import_secrets(secrets_file([fresh, again_serial, again_public_id]))
    assert not result.ok and result.imported == 0
    assert [(e.line, e.reason.split(" ")[0]) for e in result.errors] == [(2, "serial"), (3, "public")]
    assert "already" in result.errors[0].reason and "already" in result.errors[1].reason
    assert [r.serial for r in await service.report()] == [100, 101]


async def test_dry_run_imports_nothing(service):
    result = await service.import_secrets((FIXTURES / "yubico-format.csv").read_bytes(), dry_run=True)
    assert result.ok and result.dry_run and result.records == 3 and result.imported == 0
    assert await service.report() == []
    bad = await service.import_secrets((FIXTURES / "duplicates.csv").read_bytes(), dry_run=True)
    assert not bad.ok and len(bad.errors) == 2 and bad.warnings


async def test_secrets_are_encrypted_at_rest(service, engine):
    key = make_key(200)
    access = "a1b2c3d4e5f6"
    data = f"200,{key.public_id},{key.private_id.hex()},{key.aes_key.hex()},{access},2026-11-22T10:01:00,\n"
    assert (await service.import_secrets(data.encode())).ok
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(otp_yubikeys))).mappings().one()
    blob = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values() if v is not None)
    for secret in (key.aes_key, key.private_id, bytes.fromhex(access)):
        assert secret not in blob and secret.hex().encode() not in blob
    assert row["kek_id"] == service.kek_id


# ---- sign-in API ------------------------------------------------------------------------------

async def test_first_use_enrols_then_verifies_only_for_that_user(service):
    k = make_key(300)
    await import_keys(service, [k])
    first = await service.verify_signin("alice", k.otp())
    assert first.reason is Reason.ENROLLED and first.enrolled and first.serial == 300
    assert (await service.verify_signin("alice", k.otp())).reason is Reason.VERIFIED
    wrong = await service.verify_signin("bob", k.otp())
    assert wrong.reason is Reason.WRONG_USER and not wrong.ok
    row = (await service.report())[0]
    assert (row.status, row.user, row.enrolled_at is not None, row.last_used_at is not None) == \
        ("ACTIVE", "alice", True, True)
    assert [h["event"] for h in row.history] == ["otp.key.imported", "otp.key.enrolled", "security.otp.wrong_user"]
    events = await service.security_events()
    assert [(e["kind"], e["user_name"], e["detail"]) for e in events] == [
        ("security.otp.wrong_user", "bob", {"enrolled_user": "alice"})]


async def test_newest_otp_invalidates_earlier_ones(service):
    k = make_key(301)
    await import_keys(service, [k])
    older = k.otp(usage_ctr=4, session_use=1)
    newer = k.otp(usage_ctr=4, session_use=2)
    assert (await service.verify_signin("u", newer)).ok
    assert (await service.verify_signin("u", older)).reason is Reason.REPLAYED_OTP
    assert (await service.verify_signin("u", newer)).reason is Reason.REPLAYED_OTP
    # next power-up: usage counter +1, session use restarts at 0
    assert (await service.verify_signin("u", k.otp(usage_ctr=5, session_use=0))).ok
    assert (await service.verify_signin("u", k.otp(usage_ctr=4, session_use=200))).reason is Reason.REPLAYED_OTP


async def test_capslock_bit_is_masked_before_comparing(service):
    k = make_key(302)
    await import_keys(service, [k])
    assert (await service.verify_signin("u", k.otp(usage_ctr=2, session_use=5, capslock=True))).ok
    # compared raw, 0x8002 > 3 would make this newer OTP look replayed
    assert (await service.verify_signin("u", k.otp(usage_ctr=3, session_use=0))).ok
    assert (await service.verify_signin("u", k.otp(usage_ctr=2, session_use=9, capslock=True))).reason \
        is Reason.REPLAYED_OTP


async def test_failure_reasons_and_security_events(service):
    k = make_key(303)
    await import_keys(service, [k])
    assert (await service.verify_signin("u", "not an otp")).reason is Reason.MALFORMED_OTP
    stranger = make_key(999)
    assert (await service.verify_signin("u", stranger.otp())).reason is Reason.UNKNOWN_KEY
    forged = make_key(303, public_id=k.public_id)  # right public ID, wrong AES key
    assert (await service.verify_signin("u", forged.otp())).reason is Reason.INVALID_OTP
    same_key_other_uid = k.otp()
    k2 = make_key(303, public_id=k.public_id)
    k2.aes_key = k.aes_key
    assert (await service.verify_signin("u", k2.otp())).reason is Reason.PRIVATE_ID_MISMATCH
    assert (await service.verify_signin("u", same_key_other_uid)).reason is Reason.ENROLLED
    kinds = [e["kind"] for e in await service.security_events()]
    assert kinds == ["security.otp.unknown_key"]
    with pytest.raises(InvalidInput):
        await service.verify_signin("", k.otp())
    with pytest.raises(InvalidInput):
        await service.verify_signin("u\n", k.otp())


async def garbage_with(public_id: str) -> str:
    """An OTP carrying `public_id` that no key's AES key decrypts (anyone who saw one OTP can make it)."""
    return make_key(1, public_id=public_id).otp()


async def test_garbage_with_a_victims_public_id_never_locks_the_key_or_its_user(service, client):
    cid, key = client
    k = make_key(304)
    await import_keys(service, [k])
    assert (await service.verify_signin("victim", k.otp())).enrolled
    used = k.otp()
    assert (await service.verify_signin("victim", used)).ok
    for i in range(30):  # far beyond any limit, from one source and from many
        source = "203.0.113.9" if i % 2 else f"198.51.100.{i}"
        assert (await service.verify_signin("victim", await garbage_with(k.public_id), source=source)).reason in (
            Reason.INVALID_OTP, Reason.THROTTLED)
        fields = await protocol(service, cid, key, await garbage_with(k.public_id))
        assert fields["status"] in ("BAD_OTP", "OPERATION_NOT_ALLOWED")
    assert (await service.verify_signin("victim", used, source="203.0.113.9")).reason is Reason.REPLAYED_OTP
    assert (await service.verify_signin("victim", k.otp(), source="203.0.113.9")).ok
    assert (await protocol(service, cid, key, k.otp()))["status"] == "OK"
    assert (await service.report())[0].blocked_until is None


async def test_failures_that_prove_nothing_are_throttled_per_source(engine, kek, clock):
    limits = ThrottleSettings(max_failures=3, window_seconds=60, lockout_seconds=300)
    async with OtpService(engine, OtpSettings(throttle_source=limits), kek, clock=clock) as service:
        k = make_key(305)
        await import_keys(service, [k])
        attacker, other = "192.0.2.66", "192.0.2.77"
        reasons = [(await service.verify_signin("u", otp, source=attacker)).reason
                   for otp in ("z" * 44, make_key(999).otp(), await garbage_with(k.public_id))]
        assert reasons == [Reason.MALFORMED_OTP, Reason.UNKNOWN_KEY, Reason.INVALID_OTP]
        assert (await service.verify_signin("u", await garbage_with(k.public_id), source=attacker)).reason \
            is Reason.THROTTLED
        assert (await service.verify_signin("u", "z" * 44, source=other)).reason is Reason.MALFORMED_OTP
        # a valid OTP from the blocked source is accepted; a replay still says so
        valid = k.otp()
        assert (await service.verify_signin("u", valid, source=attacker)).enrolled
        assert (await service.verify_signin("u", valid, source=attacker)).reason is Reason.REPLAYED_OTP
        clock.advance(301)
        assert (await service.verify_signin("u", "z" * 44, source=attacker)).reason is Reason.MALFORMED_OTP
        events = await service.security_events()
        assert [e["source"] for e in events if e["kind"] == "security.otp.source_throttled"] == [attacker]


async def test_failures_that_prove_nothing_are_throttled_per_client(engine, kek, clock):
    limits = ThrottleSettings(max_failures=4, window_seconds=60, lockout_seconds=300)
    async with OtpService(engine, OtpSettings(throttle_client=limits), kek, clock=clock) as service:
        info, b64 = await service.add_client("relying party")
        other_info, other_b64 = await service.add_client("another")
        key, other_key = base64.b64decode(b64), base64.b64decode(other_b64)
        k = make_key(306)
        await import_keys(service, [k])

        async def status(cid, api_key, otp, source):
            params = {"id": str(cid), "otp": otp, "nonce": secrets.token_hex(10)}
            params["h"] = yubico.sign(params, api_key)
            return yubico.decode_response(await service.verify_protocol(params, source=source))["status"]

        statuses = [await status(info.id, key, await garbage_with(k.public_id), f"192.0.2.{i}") for i in range(6)]
        assert statuses == ["BAD_OTP"] * 4 + ["OPERATION_NOT_ALLOWED"] * 2
        assert await status(other_info.id, other_key, await garbage_with(k.public_id), "192.0.2.1") == "BAD_OTP"
        valid = k.otp()
        assert await status(info.id, key, valid, "192.0.2.1") == "OK"
        assert await status(info.id, key, valid, "192.0.2.1") == "REPLAYED_OTP"


async def test_a_block_is_shared_by_every_process(db_url, kek, clock):
    from trustkit.db import create_engine

    limits = ThrottleSettings(max_failures=2, window_seconds=60, lockout_seconds=300)
    engines = [create_engine(db_url), create_engine(db_url)]
    try:
        async with OtpService(engines[0], OtpSettings(throttle_source=limits), kek, clock=clock) as one, \
                OtpService(engines[1], OtpSettings(throttle_source=limits), kek, clock=clock) as two:
            for service in (one, two):
                assert (await service.verify_signin("u", "z" * 44, source="2001:db8:1:2::5")).reason \
                    is Reason.MALFORMED_OTP
            # the same /64, through the first process
            assert (await one.verify_signin("u", "z" * 44, source="2001:db8:1:2::99")).reason is Reason.THROTTLED
            assert (await two.verify_signin("u", "z" * 44, source="2001:db8:1:3::5")).reason is Reason.MALFORMED_OTP
    finally:
        for e in engines:
            await e.dispose()


async def test_wrong_user_counts_against_the_presented_key_only(engine, kek, clock):
    limits = ThrottleSettings(max_failures=3, window_seconds=60, lockout_seconds=120)
    async with OtpService(engine, OtpSettings(throttle_key=limits), kek, clock=clock) as service:
        victim, insider = make_key(307), make_key(308)
        await import_keys(service, [victim, insider])
        old = [victim.otp() for _ in range(5)]
        assert (await service.verify_signin("victim", old[-1])).enrolled
        assert (await service.verify_signin("insider", insider.otp())).enrolled
        # the victim's old OTPs (seen over a shoulder, in a log) presented for someone else: replays
        for otp in old * 3:
            assert (await service.verify_signin("insider", otp)).reason is Reason.REPLAYED_OTP
        # the insider's own key, presented as the victim: counts against the insider's key only
        for _ in range(3):
            assert (await service.verify_signin("victim", insider.otp())).reason is Reason.WRONG_USER
        assert (await service.verify_signin("insider", insider.otp())).reason is Reason.THROTTLED
        assert (await service.verify_signin("victim", victim.otp())).ok
        by_key = {r.serial: r.blocked_until for r in await service.report()}
        assert by_key == {307: None, 308: clock.now + timedelta(seconds=120)}
        kinds = [e["kind"] for e in await service.security_events()]
        assert kinds == ["security.otp.wrong_user", "security.otp.key_throttled"]


async def test_one_captured_otp_presented_for_another_user_counts_once(engine, kek, clock):
    """A fresh OTP of the victim's key, captured (a phishing page) and presented for the attacker's own user
    name again and again: used up by the first attempt, a replay after it, so it cannot block the key."""
    limits = ThrottleSettings(max_failures=3, window_seconds=600, lockout_seconds=900)
    async with OtpService(engine, OtpSettings(throttle_key=limits), kek, clock=clock) as service:
        victim = make_key(310)
        await import_keys(service, [victim])
        assert (await service.verify_signin("victim", victim.otp())).enrolled
        captured = victim.otp()
        reasons = [(await service.verify_signin("mallory", captured)).reason for _ in range(10)]
        assert reasons == [Reason.WRONG_USER] + [Reason.REPLAYED_OTP] * 9
        assert (await service.verify_signin("victim", captured)).reason is Reason.REPLAYED_OTP
        assert (await service.verify_signin("victim", victim.otp())).ok
        assert [r.blocked_until for r in await service.report()] == [None]
        assert [e["kind"] for e in await service.security_events()] == ["security.otp.wrong_user"]


async def test_security_events_are_aggregated_per_source_and_minute_and_pruned(engine, kek, clock):
    settings = OtpSettings(throttle_source=ThrottleSettings(max_failures=1000), security_event_retention_days=30)
    async with OtpService(engine, settings, kek, clock=clock) as service:
        k = make_key(309)
        await import_keys(service, [k])
        assert (await service.verify_signin("owner", k.otp())).enrolled
        for i in range(40):
            source = "192.0.2.1" if i < 30 else "192.0.2.2"
            assert (await service.verify_signin("x", make_key(5000 + i).otp(), source=source)).reason \
                is Reason.UNKNOWN_KEY
        clock.advance(60)
        assert (await service.verify_signin("x", make_key(6000).otp(), source="192.0.2.1")).reason \
            is Reason.UNKNOWN_KEY
        events = await service.security_events()
        assert [(e["source"], e["occurrences"]) for e in events] == [("192.0.2.1", 30), ("192.0.2.2", 10),
                                                                       ("192.0.2.1", 1)]
        clock.advance(29 * 86400)
        assert await service.prune() == (0, 2)  # throttle rows of the two sources; events kept 30 days
        clock.advance(86400 + 1)
        events_deleted, _ = await service.prune()
        assert events_deleted == 3 and await service.security_events() == []
        history = (await service.report())[0].history
        assert [h["event"] for h in history] == ["otp.key.imported", "otp.key.enrolled"]  # history is kept


# ---- protocol 2.0 -----------------------------------------------------------------------------

async def test_protocol_ok_replayed_request_replayed_otp(service, client):
    cid, key = client
    k = make_key(400)
    await import_keys(service, [k])
    otp = k.otp()
    ok = await protocol(service, cid, key, otp, nonce="abcdefghijklmnop", timestamp="1")
    assert ok["status"] == "OK" and ok["otp"] == otp and ok["nonce"] == "abcdefghijklmnop" and ok["sl"] == "100"
    assert (ok["sessioncounter"], ok["sessionuse"]) == ("1", "1")
    assert int(ok["timestamp"]) == 0x0F8D40 + 8
    again = await protocol(service, cid, key, otp, nonce="abcdefghijklmnop")
    assert again["status"] == "REPLAYED_REQUEST" and "timestamp" not in again
    other = await protocol(service, cid, key, otp, nonce="abcdefghijklmnoq")
    assert other["status"] == "REPLAYED_OTP" and other["otp"] == otp
    # protocol verification does not enrol anybody
    assert (await service.report())[0].status == "UNASSIGNED"


async def test_an_otp_used_up_elsewhere_with_an_old_nonce_is_a_replayed_otp_not_a_replayed_request(service, client):
    """REPLAYED_REQUEST says this very request was answered before; a wrong-user sign-in that uses up a phished
    OTP moves the counters on, and that OTP sent with the key's last protocol nonce was never a request."""
    cid, key = client
    k = make_key(402)
    await import_keys(service, [k])
    assert (await service.verify_signin("alice", k.otp())).enrolled
    nonce = "capturednonce12345"
    assert (await protocol(service, cid, key, k.otp(), nonce=nonce))["status"] == "OK"
    phished = k.otp()
    assert (await service.verify_signin("mallory", phished)).reason.value == "wrong_user"
    answer = await protocol(service, cid, key, phished, nonce=nonce)
    assert answer["status"] == "REPLAYED_OTP", answer


async def test_protocol_statuses(service, client):
    cid, key = client
    k = make_key(401)
    await import_keys(service, [k])
    assert (await protocol(service, cid, key, "cccccc"))["status"] == "BAD_OTP"
    bad = await protocol(service, cid, key, make_key(402).otp())
    assert bad["status"] == "BAD_OTP" and "otp" not in bad and "nonce" not in bad
    assert (await protocol(service, cid, key, k.otp(), sign_with=b"wrong"))["status"] == "BAD_SIGNATURE"
    params = {"id": str(cid), "otp": k.otp()}
    fields = yubico.decode_response(await service.verify_protocol(params))
    assert fields["status"] == "MISSING_PARAMETER" and yubico.signature_matches(fields, key)
    unknown = yubico.decode_response(await service.verify_protocol({"id": "987654", "otp": k.otp(),
                                                                    "nonce": "abcdefghijklmnop"}))
    assert unknown["status"] == "NO_SUCH_CLIENT" and yubico.signature_matches(unknown, b"")
    no_id = yubico.decode_response(await service.verify_protocol({"otp": k.otp(), "nonce": "abcdefghijklmnop"}))
    assert no_id["status"] == "MISSING_PARAMETER"
    await service.disable_client(cid)
    disabled = yubico.decode_response(await service.verify_protocol({"id": str(cid), "otp": k.otp(),
                                                                     "nonce": "abcdefghijklmnop"}))
    assert disabled["status"] == "NO_SUCH_CLIENT"


async def test_protocol_unsigned_requests_policy(engine, kek, clock):
    async with OtpService(engine, OtpSettings(require_signed_requests=True), kek, clock=clock) as service:
        info, _ = await service.add_client()
        k = make_key(403)
        await import_keys(service, [k])
        body = await service.verify_protocol({"id": str(info.id), "otp": k.otp(), "nonce": "abcdefghijklmnop"})
        assert yubico.decode_response(body)["status"] == "MISSING_PARAMETER"


async def test_protocol_can_refuse_unassigned_keys(engine, kek, clock):
    async with OtpService(engine, OtpSettings(wsapi_accept_unassigned=False), kek, clock=clock) as service:
        info, b64 = await service.add_client()
        key = base64.b64decode(b64)
        k = make_key(404)
        await import_keys(service, [k])
        assert (await protocol(service, info.id, key, k.otp()))["status"] == "BAD_OTP"
        assert (await service.verify_signin("dave", k.otp())).enrolled
        assert (await protocol(service, info.id, key, k.otp()))["status"] == "OK"


async def test_protocol_dvorak_and_upper_case_echoed_as_sent(service, client):
    cid, key = client
    k = make_key(405)
    await import_keys(service, [k])
    from otp.modhex import ALPHABET, DVORAK

    dvorak = k.otp().translate(str.maketrans(ALPHABET, DVORAK))
    r = await protocol(service, cid, key, dvorak)
    assert r["status"] == "OK" and r["otp"] == dvorak
    upper = k.otp().upper()
    r = await protocol(service, cid, key, upper)
    assert r["status"] == "OK" and r["otp"] == upper


async def test_kek_mismatch_is_a_backend_error(engine, service, client, clock):
    cid, key = client
    k = make_key(406)
    await import_keys(service, [k])
    async with OtpService(engine, OtpSettings(), secrets.token_bytes(32), clock=clock) as other:
        body = await other.verify_protocol({"id": str(cid), "otp": k.otp(), "nonce": "abcdefghijklmnop"})
        assert yubico.decode_response(body)["status"] == "BACKEND_ERROR"
        # the key's own data can't be opened either
        other._clients.put(cid, type("C", (), {"id": cid, "key": key})(), other._clients.generation)  # noqa: SLF001
        assert (await protocol(other, cid, key, k.otp()))["status"] == "BACKEND_ERROR"
    assert (await protocol(service, cid, key, k.otp()))["status"] == "OK"


# ---- concurrency ------------------------------------------------------------------------------

async def test_parallel_submissions_of_one_otp_give_one_ok(service, client):
    cid, key = client
    k = make_key(500)
    await import_keys(service, [k])
    otp = k.otp()
    results = await asyncio.gather(*[protocol(service, cid, key, otp) for _ in range(50)])
    statuses = [r["status"] for r in results]
    assert statuses.count("OK") == 1 and statuses.count("REPLAYED_OTP") == 49


async def test_parallel_submissions_across_two_services(db_url, kek, clock):
    """Two services with their own engines (as two processes): exactly one OK for one OTP."""
    from trustkit.db import create_engine

    engines = [create_engine(db_url), create_engine(db_url)]
    try:
        async with OtpService(engines[0], OtpSettings(), kek, clock=clock) as a, \
                OtpService(engines[1], OtpSettings(), kek, clock=clock) as b:
            info, b64 = await a.add_client()
            key = base64.b64decode(b64)
            keys = [make_key(600 + i) for i in range(5)]
            await import_keys(a, keys)
            for k in keys:
                otp = k.otp()
                results = await asyncio.gather(*[protocol(s, info.id, key, otp, nonce=f"nonce{i:012d}")
                                                 for i, s in enumerate([a, b] * 10)])
                statuses = [r["status"] for r in results]
                assert statuses.count("OK") == 1, statuses
                assert set(statuses) <= {"OK", "REPLAYED_OTP", "REPLAYED_REQUEST"}
            signins = await asyncio.gather(*[s.verify_signin("erin", otp) for s in [a, b] * 5
                                             for otp in [keys[0].otp(usage_ctr=9, session_use=0)]])
            assert sum(o.ok for o in signins) == 1
    finally:
        for e in engines:
            await e.dispose()


async def test_stale_cache_in_another_process(db_url, kek, clock):
    """Process A cached a key; B revokes, deletes and re-imports it with new secrets: A follows."""
    from trustkit.db import create_engine

    engines = [create_engine(db_url), create_engine(db_url)]
    try:
        async with OtpService(engines[0], OtpSettings(), kek, clock=clock) as a, \
                OtpService(engines[1], OtpSettings(), kek, clock=clock) as b:
            old = make_key(700)
            await import_keys(a, [old])
            assert (await a.verify_signin("frank", old.otp())).enrolled
            await b.revoke(700)
            assert (await a.verify_signin("frank", old.otp())).reason is Reason.REVOKED_KEY
            await b.delete(700)
            new = make_key(700)  # the same hardware, reprogrammed: same serial and public ID, new secrets
            await import_keys(b, [new])
            assert (await a.verify_signin("grace", new.otp(usage_ctr=1, session_use=1))).enrolled
            assert (await a.verify_signin("frank", old.otp())).reason is Reason.INVALID_OTP  # old secrets are gone
    finally:
        for e in engines:
            await e.dispose()


# ---- revoke, delete, delete-factor ------------------------------------------------------------

async def test_revoke(service):
    k = make_key(800)
    await import_keys(service, [k])
    await service.verify_signin("heidi", k.otp())
    row = await service.revoke(800, actor="admin")
    assert (row.status, row.user, row.last_user, row.revoked_at is not None) == ("REVOKED", None, "heidi", True)
    assert (await service.verify_signin("heidi", k.otp())).reason is Reason.REVOKED_KEY
    assert [e["kind"] for e in await service.security_events()] == ["security.otp.revoked_key"]
    with pytest.raises(Conflict):
        await service.revoke(800)
    with pytest.raises(NotFound):
        await service.revoke(801)
    assert [h["event"] for h in (await service.report())[0].history][-2:] == ["otp.key.revoked",
                                                                                "security.otp.revoked_key"]


async def test_delete_rules(service):
    unassigned, active = make_key(810), make_key(811)
    await import_keys(service, [unassigned, active])
    await service.verify_signin("ivan", active.otp())
    assert await service.delete(810) == "UNASSIGNED"
    assert [r.serial for r in await service.report()] == [811]
    with pytest.raises(NotFound):
        await service.delete(810)
    with pytest.raises(Conflict) as exc:
        await service.delete(811)
    assert "ACTIVE" in exc.value.detail and "revoke" in exc.value.detail
    await service.revoke(811)
    assert await service.delete(811) == "REVOKED"
    rows = await service.report()
    assert [(r.serial, r.status, r.deleted, r.last_user) for r in rows] == [(811, "REVOKED", True, "ivan")]
    assert await service.report(ReportFilter(include_deleted=False)) == []


async def test_reprogrammed_key_uploaded_again_starts_afresh(service):
    k = make_key(820)
    await import_keys(service, [k])
    await service.verify_signin("judy", k.otp(usage_ctr=50, session_use=3))
    await service.revoke(820)
    await service.delete(820)
    k2 = make_key(820, public_id=k.public_id)
    await import_keys(service, [k2])
    # counters start afresh: an OTP far below the old key's counters is accepted
    assert (await service.verify_signin("mike", k2.otp(usage_ctr=1, session_use=0))).enrolled
    rows = await service.report(ReportFilter(serial=820))
    assert [(r.status, r.user, r.deleted) for r in rows] == [("REVOKED", None, True), ("ACTIVE", "mike", False)]
    assert [h["event"] for h in rows[0].history] == ["otp.key.imported", "otp.key.enrolled", "otp.key.revoked",
                                                     "otp.key.deleted"]


async def test_delete_factor(service, client):
    cid, key = client
    keys = [make_key(830 + i) for i in range(4)]
    await import_keys(service, keys)
    await service.verify_signin("a", keys[1].otp())
    await service.verify_signin("b", keys[2].otp())
    await service.revoke(832)
    counts = await service.delete_factor(actor="admin")
    assert counts == {"unassigned_removed": 2, "assigned_retired": 2}
    rows = await service.report()
    assert [(r.serial, r.status, r.deleted) for r in rows] == [(831, "REVOKED", True), (832, "REVOKED", True)]
    assert (await protocol(service, cid, key, keys[0].otp()))["status"] == "BAD_OTP"
    assert (await service.verify_signin("a", keys[1].otp())).reason is Reason.UNKNOWN_KEY
    assert await service.delete_factor() == {"unassigned_removed": 0, "assigned_retired": 0}
    # all keys can be imported again
    await import_keys(service, keys)


# ---- report filters ---------------------------------------------------------------------------

async def test_report_filters(service, clock):
    keys = [make_key(900 + i) for i in range(4)]
    await import_keys(service, keys[:2])
    clock.advance(86400)
    await import_keys(service, keys[2:])
    await service.verify_signin("kate", keys[0].otp())
    clock.advance(3600)
    await service.verify_signin("leo", keys[2].otp())
    await service.revoke(900)

    async def serials(**kw):
        return [r.serial for r in await service.report(ReportFilter.from_mapping(kw))]

    assert await serials(status="unassigned") == [901, 903]
    assert await serials(status="ACTIVE") == [902]
    assert await serials(status="REVOKED") == [900]
    assert await serials(serial="902") == [902]
    assert await serials(user="kate") == [900]  # former user of a revoked key
    assert await serials(user="leo") == [902]
    assert await serials(public_id=keys[3].public_id.upper()) == [903]
    day2 = clock.now.date().isoformat()
    assert await serials(imported_after=day2) == [902, 903]
    assert await serials(imported_before=day2) == [900, 901]
    assert await serials(enrolled_after=(clock.now - timedelta(minutes=30)).isoformat()) == [902]
    assert await serials(last_used_before=(clock.now - timedelta(minutes=30)).isoformat()) == [900]
    assert await serials(limit="1") == [900]
    with pytest.raises(InvalidInput):
        ReportFilter.from_mapping({"status": "LOST"})
    with pytest.raises(InvalidInput):
        ReportFilter.from_mapping({"imported_after": "yesterday"})
    for out_of_range in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):  # past year 1 or 9999 in UTC
        with pytest.raises(InvalidInput):
            ReportFilter.from_mapping({"imported_after": out_of_range})
    assert ReportFilter.from_mapping({"enrolled_before": "2026-12-01T01:00:00+01:00"}).enrolled_before == \
        datetime(2026, 12, 1, tzinfo=timezone.utc)


# ---- API clients ------------------------------------------------------------------------------

async def test_clients(service):
    info, key = await service.add_client("vpn")
    assert len(base64.b64decode(key)) == 20
    listed = await service.list_clients(PageRequest(limit=10, after=None))
    assert [(c.id, c.name, c.active) for c in listed.items] == [(info.id, "vpn", True)] and listed.next_cursor is None
    disabled = await service.disable_client(info.id)
    assert not disabled.active
    with pytest.raises(Conflict):
        await service.disable_client(info.id)
    with pytest.raises(NotFound):
        await service.disable_client(info.id + 100)
    with pytest.raises(InvalidInput):
        await service.add_client("bad\nname")


async def test_key_h_vector_verifies(service, client):
    """The published vector H OTP verifies against its imported secrets (counter 1, use 0)."""
    cid, key = client
    await import_keys(service, [key_h()])
    r = await protocol(service, cid, key, "idkfefrdhtrutjduvtcjbfeuvhehdvjjlbchtlenfgku", timestamp="1")
    assert (r["status"], r["sessioncounter"], r["sessionuse"], r["timestamp"]) == ("OK", "1", "0", str(0x0F8D40))
    bad = await protocol(service, cid, key, "idkfefrdhtrutjduvtcjbfeuvhehdvjjlbchtlenfgkv")
    assert bad["status"] == "BAD_OTP"


async def test_a_first_use_during_delete_factor_finds_the_key_gone(db_url, service, kek, clock, monkeypatch):
    """Another process enrols a never-used key while the factor is being deleted: once "delete the OTP
    factor" has answered, the key is gone either way and none of its OTPs verifies."""
    from trustkit.db import create_engine

    key = make_key(840)
    await import_keys(service, [key])
    reached, gate = asyncio.Event(), asyncio.Event()
    real = service.store.delete_factor

    async def paused_delete_factor(conn, now, actor):
        return await real(PausedConnection(conn, sa.Delete, reached, gate), now, actor)

    monkeypatch.setattr(service.store, "delete_factor", paused_delete_factor)
    other_engine = create_engine(db_url)
    try:
        async with OtpService(other_engine, OtpSettings(), kek, clock=clock) as other:
            deleting = asyncio.create_task(service.delete_factor(actor="admin"))
            await asyncio.wait_for(reached.wait(), 10)
            first_use = asyncio.create_task(other.verify_signin("alice", key.otp()))
            await asyncio.wait({first_use}, timeout=1)  # it waits for the deletion (or, unguarded, enrols)
            gate.set()
            counts = await deleting
            outcome = await first_use
            assert not outcome.ok, outcome
            assert not (await other.verify_signin("alice", key.otp())).ok
            assert not (await service.verify_signin("alice", key.otp())).ok
    finally:
        await other_engine.dispose()
    rows = await service.report(ReportFilter(serial=840))
    assert all(r.deleted for r in rows), [(r.status, r.deleted) for r in rows]
    assert counts["unassigned_removed"] + counts["assigned_retired"] == 1


async def test_import_racing_another_import_imports_nothing(service, monkeypatch):
    """The duplicate check and the bulk insert are not one statement: a key added in between by another
    import makes the bulk insert fail on the unique index, and nothing of the file is kept."""
    first = [make_key(880_001), make_key(880_002)]
    await import_keys(service, first)

    async def nothing_found(serials, public_ids):  # as if the other import committed right after the check
        return set(), set()

    monkeypatch.setattr(service.store, "live_duplicates", nothing_found)
    result = await service.import_secrets(secrets_file([make_key(880_003), first[1]]))
    assert not result.ok and result.imported == 0
    assert "another import added some of these keys at the same time" in result.errors[0].reason
    rows = await service.report(ReportFilter())
    assert sorted(r.serial for r in rows) == [880_001, 880_002]


async def test_bulk_import_rows_read_back(service, clock):
    keys = [make_key(881_000 + i) for i in range(2500)]
    await import_keys(service, keys)
    rows = await service.report(ReportFilter(), with_history=False)
    assert len(rows) == 2500 and {r.status for r in rows} == {"UNASSIGNED"}
    assert {r.imported_at for r in rows} == {clock()}
    # the sealed secrets open: a key from the middle of the file verifies
    assert (await service.verify_signin("bulk", keys[1234].otp())).reason is Reason.ENROLLED


async def test_a_revocation_whose_key_is_deleted_meanwhile_is_not_found(service, monkeypatch):
    """Another request deletes the key between the revocation's commit and the report it answers with."""
    from otp.errors import NotFound

    key = make_key(7301)
    await import_keys(service, [key])

    async def deleted_meanwhile(flt, *args, **kwargs):
        return []
    monkeypatch.setattr(service, "report", deleted_meanwhile)
    with pytest.raises(NotFound):
        await service.revoke(7301)
