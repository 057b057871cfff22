"""Two guarantees that the rest of the suite cannot see fail, checked where they live.

- Enrolment signs again with a fresh serial when the one it drew is taken (the serial source is made to
  repeat one; with 127 random bits it never does by itself).
- The OTP counter compare-and-set accepts only a strictly newer (usage counter, session use) pair: the
  service classifies an OTP before it reaches the store, so only a direct call shows an equal pair
  slipping through.
"""
from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone

import aiohttp
import pytest
import sqlalchemy as sa
from cryptography import x509

from otp.config import OtpSettings
from otp.service import OtpService
from otp.store import CounterUpdate, OtpStore
from otp.tables import ACTIVE, UNASSIGNED, otp_yubikeys
from scep_server.enrolment import service as enrolment_service
from scep_server.ca.authority import random_serial
from scep_server.scep import ContentCipher, MessageType, PKIStatus, client
from scep_server.store.tables import certificates
from tests.factories import rsa_key
from tests.otp.conftest import make_key, secrets_file
from tests.server import start_app


async def _enrol(session, srv, key, cn: str) -> client.CertRepResult:
    ca = srv.runtime.cas["default"]
    body = client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(key, cn, srv.challenge()),
        signer_cert_der=client.make_self_signed_signer(key, cn=cn), signer_key=key, recipient_cert_der=ca.ra_cert_der,
        transaction_id=f"seeded-{cn}", sender_nonce=os.urandom(16), cek=os.urandom(16), iv=os.urandom(16),
        cipher=ContentCipher.AES128_CBC)
    async with session.post(f"{srv.url}/scep/default?operation=PKIOperation", data=body) as resp:
        assert resp.status == 200, await resp.text()
        return client.parse_cert_rep(await resp.read(), key, ra_cert_der=ca.ra_cert_der)


async def test_a_serial_collision_is_signed_again_with_a_fresh_serial(aiohttp_server, tmp_path, db_url, monkeypatch):
    srv = await start_app(aiohttp_server, tmp_path, db_url)
    repeated = random_serial()
    drawn: list[int] = []

    def repeating() -> int:  # the first two draws give the same serial, then the real source
        serial = repeated if len(drawn) < 2 else random_serial()
        drawn.append(serial)
        return serial

    monkeypatch.setattr(enrolment_service, "random_serial", repeating)
    async with aiohttp.ClientSession() as session:
        first = await _enrol(session, srv, rsa_key(), "first")
        second = await _enrol(session, srv, rsa_key(), "second")
    assert first.status is PKIStatus.SUCCESS and second.status is PKIStatus.SUCCESS, (second.fail_info, second.fail_text)
    a, b = (x509.load_der_x509_certificate(r.certs[0]) for r in (first, second))
    assert a.serial_number == repeated and b.serial_number not in (repeated, 0)
    assert drawn[:2] == [repeated, repeated] and len(drawn) == 3  # the collision was met, and signed once more
    async with srv.runtime.engine.connect() as conn:
        serials = sorted((await conn.execute(sa.select(certificates.c.serial))).scalars())
    assert serials == sorted([format(a.serial_number, "x"), format(b.serial_number, "x")])


NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)


async def _stored_key(engine, ctr: int, use: int, *, status: str = UNASSIGNED) -> int:
    """One imported key whose stored counter pair is (ctr, use); its row id."""
    async with OtpService(engine, OtpSettings(), secrets.token_bytes(32), clock=lambda: NOW) as svc:
        assert (await svc.import_secrets(secrets_file([make_key(800_001)]))).ok
    async with engine.begin() as conn:
        key_id = (await conn.execute(sa.select(otp_yubikeys.c.id))).scalar_one()
        await conn.execute(otp_yubikeys.update().values(usage_ctr=ctr, session_use=use, status=status,
                                                        user_name="ada" if status == ACTIVE else None))
    return key_id


async def _pair(engine, key_id: int) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(otp_yubikeys.c.usage_ctr, otp_yubikeys.c.session_use).where(
            otp_yubikeys.c.id == key_id))).one()
    return row.usage_ctr, row.session_use


NOT_NEWER = [(5, 3), (5, 2), (4, 200), (0, 0)]  # the stored pair itself, and lower ones


@pytest.mark.parametrize("mode", ["plain", "enrol", "user"])
async def test_the_single_row_compare_and_set_refuses_the_stored_counter_pair(engine, mode):
    key_id = await _stored_key(engine, 5, 3, status=ACTIVE if mode == "user" else UNASSIGNED)
    store = OtpStore(engine)
    kwargs = {"plain": {}, "enrol": {"user": "ada", "enrol": True}, "user": {"user": "ada"}}[mode]
    for ctr, use in NOT_NEWER:
        async with store.begin_write() as conn:
            ok = await store.compare_and_set(conn, CounterUpdate(key_id, ctr, use, 1, None), NOW, **kwargs)
        assert not ok, f"({ctr}, {use}) accepted over the stored (5, 3)"
        assert await _pair(engine, key_id) == (5, 3)
    async with store.begin_write() as conn:
        assert await store.compare_and_set(conn, CounterUpdate(key_id, 5, 4, 1, None), NOW, **kwargs)
    assert await _pair(engine, key_id) == (5, 4)


async def test_the_batched_compare_and_set_refuses_the_stored_counter_pair(engine):
    key_id = await _stored_key(engine, 5, 3, status=ACTIVE)
    store = OtpStore(engine)
    for ctr, use in NOT_NEWER:
        assert await store.compare_and_set_batch([CounterUpdate(key_id, ctr, use, 1, "n")], [ACTIVE], NOW) == set()
        assert await _pair(engine, key_id) == (5, 3)
    assert await store.compare_and_set_batch([CounterUpdate(key_id, 6, 0, 1, "n")], [ACTIVE], NOW) == {key_id}
    assert await _pair(engine, key_id) == (6, 0)
