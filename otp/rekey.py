"""Re-sealing every stored secret under a new key-encryption key (`scep-server otp kek rotate`).

:func:`reseal_all` opens every YubiKey's sealed material and every API client's key with the current KEK
and seals it again with the new one, in the caller's transaction: either every row moves to the new KEK or
none does. A row sealed under another KEK than the current one stops the rotation (nothing is written), as
does a value that does not open. Deleted and revoked keys hold no material (their sealed value is empty)
and are left as they are.

The rows are locked as they are read (FOR UPDATE on PostgreSQL; SQLite's write transaction excludes every
other writer), and a key's new value is written only while it still holds one: a revocation running
meanwhile waits for the rotation, and a wiped secret is never written back.

The new KEK's id is recorded in ``otp_kek``. An import or a new OTP client, sealed before its write
transaction, compares that record with its own KEK after its writes and seals again if a rotation came
in between (otp/service.py). On PostgreSQL the rotation first locks the keys' and clients' tables against
writers (SHARE ROW EXCLUSIVE): a transaction that wrote rows before it is waited for, and its rows are
re-sealed here; one that writes after it waits for the commit, then sees the record.
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .kek import KekError, SecretBox
from .service import _client_aad, _key_aad
from .tables import otp_clients, otp_kek, otp_yubikeys


async def reseal_all(conn: AsyncConnection, old_kek: bytes, new_kek: bytes) -> tuple[int, int]:
    """Re-seal every key and client secret from ``old_kek`` to ``new_kek`` within ``conn``'s transaction;
    (keys, clients) re-sealed. KekError (nothing usable written: the caller rolls back) when a value was
    sealed under another KEK or does not open."""
    old, new = SecretBox(old_kek), SecretBox(new_kek)
    if old.kek_id == new.kek_id:
        raise KekError("the new key-encryption key is the current one")
    k, c = otp_yubikeys, otp_clients
    key_rows = (sa.select(k.c.id, k.c.public_id, k.c.secret_sealed, k.c.kek_id)
                .where(sa.func.length(k.c.secret_sealed) > 0).order_by(k.c.id))
    client_rows = sa.select(c.c.id, c.c.secret_sealed, c.c.kek_id).order_by(c.c.id)
    if conn.dialect.name == "postgresql":  # SQLite: the caller's BEGIN IMMEDIATE excludes every other writer
        await conn.execute(sa.text(f"LOCK TABLE {k.name}, {c.name} IN SHARE ROW EXCLUSIVE MODE"))
        key_rows, client_rows = key_rows.with_for_update(), client_rows.with_for_update()
    keys = (await conn.execute(key_rows)).all()
    clients = (await conn.execute(client_rows)).all()
    key_updates, client_updates = [], []
    for row in keys:
        if row.kek_id != old.kek_id:
            raise KekError(f"YubiKey {row.public_id} is sealed under KEK {row.kek_id}, not the current {old.kek_id}")
        aad = _key_aad(row.public_id)
        key_updates.append({"row_id": row.id, "sealed": new.seal(old.open(row.secret_sealed, aad), aad)})
    for row in clients:
        if row.kek_id != old.kek_id:
            raise KekError(f"OTP client {row.id} is sealed under KEK {row.kek_id}, not the current {old.kek_id}")
        aad = _client_aad(row.id)
        client_updates.append({"row_id": row.id, "sealed": new.seal(old.open(row.secret_sealed, aad), aad)})
    if key_updates:
        await conn.execute(sa.update(k).where(k.c.id == sa.bindparam("row_id"), sa.func.length(k.c.secret_sealed) > 0)
                           .values(secret_sealed=sa.bindparam("sealed"), kek_id=new.kek_id), key_updates)
    if client_updates:
        await conn.execute(sa.update(c).where(c.c.id == sa.bindparam("row_id"))
                           .values(secret_sealed=sa.bindparam("sealed"), kek_id=new.kek_id), client_updates)
    await conn.execute(sa.delete(otp_kek))
    await conn.execute(otp_kek.insert().values(id=1, kek_id=new.kek_id, rotated_at=datetime.now(timezone.utc)))
    return len(key_updates), len(client_updates)
