"""Renewal and delegated issuance against the full application, with a settable clock."""
from __future__ import annotations

import asyncio
import os

import pytest
import sqlalchemy as sa
from cryptography import x509

from scep_server.ca import inventory
from scep_server.profiles import ProfileSettings
from scep_server.scep import MessageType, client
from scep_server.scep.client import CertRepResult
from scep_server.store.tables import certificates, scep_transactions
from tests.challenge.conftest import clock, enrol, pki, server  # noqa: F401 - fixtures used by these tests
from tests.factories import rsa_key

SECRET = "renewal-secret"


async def static_profile(srv, name: str, **settings) -> None:
    rt = srv.runtime
    await rt.profiles.create(name, ca=next(iter(rt.cas)), challenge_kind="static", static_secret=SECRET,
                             now=rt.clock(), settings=ProfileSettings(**settings))


async def change_settings(srv, name: str, **update) -> None:
    rt = srv.runtime
    current = await rt.profiles.get(name)
    await rt.profiles.update(name, now=rt.clock(), settings=current.settings.model_copy(update=update))


async def issue(session, srv, profile: str, key, *, cn: str = "device", sans=()) -> bytes:
    rep = await enrol(session, srv, profile, key, SECRET, cn=cn, sans=sans)
    assert rep.status.name == "SUCCESS", rep.fail_text
    return rep.certs[0]


def renewal_body(srv, signer_der: bytes, signer_key, new_key, *, cn: str = "device", sans=(),
                 transaction_id: str | None = None) -> bytes:
    ca = next(iter(srv.runtime.cas.values()))
    return client.build_request(
        MessageType.RENEWAL_REQ, content=client.make_csr(new_key, cn, None, sans), signer_cert_der=signer_der,
        signer_key=signer_key, recipient_cert_der=ca.ra_cert_der,
        transaction_id=transaction_id or client.transaction_id_for(new_key.public_key()),
        sender_nonce=os.urandom(16), cek=os.urandom(16), iv=os.urandom(16))


async def renew(session, srv, profile: str, signer_der: bytes, signer_key, **kw) -> CertRepResult:
    """A RenewalReq signed by ``signer_der`` for a new key (answered to the signer's key)."""
    body = renewal_body(srv, signer_der, signer_key, kw.pop("new_key", None) or rsa_key(), **kw)
    return await pki(session, srv, profile, body, signer_key)


def serial_of(der: bytes) -> str:
    return inventory.serial_hex(x509.load_der_x509_certificate(der).serial_number)


async def cert_row(srv, der_or_serial) -> dict | None:
    serial = der_or_serial if isinstance(der_or_serial, str) else serial_of(der_or_serial)
    async with srv.runtime.engine.connect() as conn:
        row = (await conn.execute(sa.select(certificates).where(certificates.c.serial == serial))).first()
    return dict(row._mapping) if row is not None else None


async def certs_of(srv, profile: str) -> list[dict]:
    async with srv.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(certificates).where(certificates.c.profile == profile))).all()
    return [dict(r._mapping) for r in rows]


async def transactions(srv, profile: str) -> list[dict]:
    async with srv.runtime.engine.connect() as conn:
        rows = (await conn.execute(sa.select(scep_transactions).where(scep_transactions.c.profile == profile))).all()
    return [dict(r._mapping) for r in rows]


async def eventually(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)
