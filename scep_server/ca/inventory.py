"""The certificate inventory: every certificate the CA issued and its revocation state.

Status values (`status.CertStatus`): ``valid``, ``hold`` (certificateHold: reversible), ``revoked`` (final).
This module reads; status changes are written by `revocation.change_status` only.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import AsyncConnection

from crl.build import Reason  # RFC 5280 §5.3.1 CRLReason, one definition shared with the CRL builder
from trustkit import paging
from trustkit.clock import aware
from trustkit.paging import Page, PageRequest
from trustkit.problems import Conflict, NotFound

from ..store.tables import cas, certificates
from .records import CERT_KEY, CertRecord, record_from_row, serial_hex  # noqa: F401 - re-exported
from .status import LISTED, CertStatus


class InventoryError(Exception):
    """A status change the inventory refuses (unknown serial, or a revoked certificate)."""


class UnknownCertificate(InventoryError, NotFound):
    """No certificate with this serial (404 in the API)."""

    code = "certificate_not_found"


class InvalidTransition(InventoryError, Conflict):
    """The certificate's state forbids the change: a revocation is final, only a hold is released (409)."""

    code = "invalid_transition"


def _record(row) -> CertRecord:
    return record_from_row(row._mapping)


async def get(conn: AsyncConnection, serial: str) -> CertRecord | None:
    row = (await conn.execute(sa.select(certificates).where(certificates.c.serial == serial))).first()
    return _record(row) if row else None


async def get_by_fingerprint(conn: AsyncConnection, fingerprint_sha256: str) -> CertRecord | None:
    row = (await conn.execute(
        sa.select(certificates).where(certificates.c.fingerprint_sha256 == fingerprint_sha256))).first()
    return _record(row) if row else None


async def list_certs(conn: AsyncConnection, page: PageRequest, *, status: str | None = None,
                     profile: str | None = None, where: Sequence[sa.ColumnElement[bool]] = ()) -> Page[CertRecord]:
    """One page of the inventory, newest first (docs/api.md "Pagination"); `where`: more conditions over
    ``certificates`` (the filters of `scep_server.ca.queries`)."""
    key = [certificates.c.issued_at, certificates.c.serial]
    q = (sa.select(certificates).where(paging.after(key, page.after, descending=True), *where)
         .order_by(*paging.order(key, descending=True)).limit(page.limit + 1))
    if status:
        q = q.where(certificates.c.status == status)
    if profile:
        q = q.where(certificates.c.profile == profile)
    rows = [_record(r) for r in (await conn.execute(q))]
    return paging.take(rows, page.limit, key=lambda r: (r.issued_at, r.serial))


async def mark_used(conn: AsyncConnection, serial: str, at: datetime) -> bool:
    """Record the first successful management attestation (read by the day-91 rule) of a certificate still valid;
    False when it is no longer valid (revoked or held since it was read: the day-91 rule got there first, or a
    deactivation); :func:`get` then says what it is."""
    res = await conn.execute(certificates.update()
                             .where(certificates.c.serial == serial, certificates.c.first_used_at.is_(None),
                                    certificates.c.status == CertStatus.VALID.value)
                             .values(first_used_at=at))
    if res.rowcount == 1:
        return True
    status = (await conn.execute(sa.select(certificates.c.status).where(certificates.c.serial == serial))).scalar()
    return status == CertStatus.VALID.value  # used meanwhile by another attestation


def _utc_text(value: "str | None") -> "datetime | None":
    """A time as SQLAlchemy's SQLite dialect stores it (UTC, no offset), aware; None stays None."""
    return None if value is None else datetime.fromisoformat(value + "+00:00")


async def revoked_entries(conn: AsyncConnection, ca: str, *, now: datetime, partition: int | None = None):
    """Rows for the CRL: (serial int, revoked_at, reason, invalidity_date) of held/revoked, unexpired certs (of
    one CRL partition when `partition` is given).

    On SQLite the rows come from the driver in one call, without SQLAlchemy's row and type processing (a
    partition of 100,000 entries: 0.2 s instead of 0.75 s); the statement is the one below, the times read as
    the dialect stores them (tests/app/test_revocation.py compares both)."""
    listed = sorted(s.value for s in LISTED)
    if conn.dialect.name == "sqlite":
        from trustkit.sqlitereads import bind_time

        sql = (f"SELECT serial, revoked_at, revocation_reason, invalidity_date FROM certificates WHERE ca = ? AND "
               f"status IN ({', '.join('?' * len(listed))}) AND not_after > ?")
        params = [ca, *listed, bind_time(now)]  # the fields as given, as the dialect binds them
        if partition is not None:
            sql += " AND crl_partition = ?"
            params.append(partition)
        driver = (await conn.get_raw_connection()).driver_connection
        rows = await driver.execute_fetchall(sql, params)
        return [(int(serial, 16), _utc_text(revoked), reason, _utc_text(invalid))
                for serial, revoked, reason, invalid in rows]
    return await revoked_entries_core(conn, ca, now=now, partition=partition)


async def revoked_entries_core(conn: AsyncConnection, ca: str, *, now: datetime, partition: int | None = None,
                               serials: Collection[int] | None = None):
    """:func:`revoked_entries` through SQLAlchemy Core, on any database (among the certificates with these serial
    numbers when `serials` is given)."""
    listed = sorted(s.value for s in LISTED)
    q = (sa.select(certificates.c.serial, certificates.c.revoked_at, certificates.c.revocation_reason,
                   certificates.c.invalidity_date)
         .where(certificates.c.ca == ca, certificates.c.status.in_(listed),
                certificates.c.not_after > now))
    if partition is not None:
        q = q.where(certificates.c.crl_partition == partition)
    if serials is not None:
        q = q.where(certificates.c.serial.in_([serial_hex(s) for s in serials]))
    return [(int(r.serial, 16), aware(r.revoked_at), r.revocation_reason, aware(r.invalidity_date))
            for r in (await conn.execute(q))]


async def listed_entries(conn: AsyncConnection, ca: str, serials: Collection[int], *, now: datetime) -> list[tuple]:
    """The rows of :func:`revoked_entries` among the certificates with these serial numbers (a partition's
    re-sign from its previous CRL: a few rows, by the primary key)."""
    return await revoked_entries_core(conn, ca, now=now, serials=serials)


async def partition_changes(conn: AsyncConnection, ca: str, *, since: datetime) -> list[tuple]:
    """(CRL partition, serial number, updated_at, status) of the certificates of `ca` in a CRL partition whose row changed
    at or after `since` (crl.partitions.PartitionSet.publish_changed)."""
    c = certificates.c
    q = (sa.select(c.crl_partition, c.serial, c.updated_at, c.status)
         .where(c.ca == ca, c.crl_partition.is_not(None), c.updated_at >= since))
    return [(int(r.crl_partition), int(r.serial, 16), aware(r.updated_at), r.status) for r in (await conn.execute(q))]


def public_key_sha256(pub) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: identifies a key across CSR, signer and certificate."""
    return hashlib.sha256(pub.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


_SAN_KINDS = {x509.DNSName: "dns", x509.RFC822Name: "email", x509.UniformResourceIdentifier: "uri",
              x509.IPAddress: "ip"}


def san_strings(cert: x509.Certificate) -> list[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return _san_strings(names)


def _san_strings(names: Iterable[x509.GeneralName]) -> list[str]:
    return [f"{_SAN_KINDS.get(type(n), type(n).__name__)}:{n.value}" for n in names]


def certificate_row(cert: x509.Certificate, der: bytes, ca: str, profile: str | None, txid: str | None,
                    pub_sha: str, now: datetime, crl_partition: int | None = None,
                    names: tuple[x509.Name, list[x509.GeneralName]] | None = None) -> dict:
    """The inventory row of a newly issued certificate (`crl_partition`: the CRL partition its CDP names).

    ``names``: the subject and SANs the certificate was built with, when the caller has them (they are not read
    back from the certificate then)."""
    if names is None:
        subject, sans = cert.subject, san_strings(cert)
    else:
        subject, sans = names[0], _san_strings(names[1])
    return dict(serial=serial_hex(cert.serial_number), ca=ca, profile=profile,
                subject=subject.rfc4514_string(), sans=json.dumps(sans),
                not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, status=CertStatus.VALID.value,
                transaction_id=txid, fingerprint_sha256=hashlib.sha256(der).hexdigest(), public_key_sha256=pub_sha,
                der=der, issued_at=now, updated_at=now, crl_partition=crl_partition)


async def register_ca(conn: AsyncConnection, ca, now: datetime, *, kind: str = "issuing") -> None:
    """Record a CA (issuing, or a customer's external CA) once."""
    exists = (await conn.execute(sa.select(cas.c.name).where(cas.c.name == ca.name))).first()
    if exists is None:
        await conn.execute(cas.insert().values(
            name=ca.name, kind=kind, subject=ca.cert.subject.rfc4514_string(), cert_der=ca.cert_der,
            ski_hex=ca.ski.digest.hex(), fingerprint_sha256=ca.fingerprint_sha256, created_at=now))
