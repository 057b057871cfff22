"""Reads of the certificate inventory for administrators: filtered pages, one certificate with its history.

Used by the admin API (`scep_server.web.admin_certs`) and the command line (`cert list|show`), which share
the filters' syntax and the JSON of a certificate:

- :func:`parse_filters`: the filters of a list from a query string (400 ``invalid_input`` naming the
  parameter); :func:`parse_serial` and :func:`parse_time` for one value.
- :class:`CertificateQueries`: a page of certificates (newest first, docs/api.md "Pagination") and the
  detail of one (its PEM, issuing CA, device binding and audit events).
- :func:`summary`: the JSON of a certificate in a list.

The device a certificate belongs to lives in the binding capability's tables, which this package does not
import: the composition root hands in a :class:`DeviceLinks` (``scep_server.binding.certlinks``) when the
capability is on. Without it a device filter matches the device id named at enrolment only.
"""
from __future__ import annotations

import json
from typing import Any, Protocol

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustkit.clock import aware
from trustkit.paging import Page, PageRequest

from ..store.tables import cas, certificates, events
from . import inventory
from .inventory import UnknownCertificate
from .records import (  # noqa: F401 - the filters and the JSON of a list (scep_server.ca.records), re-exported
    FILTERS, MAX_SERIAL_DIGITS, CertFilter, CertRecord, _bad, _iso, parse_hex, parse_serial, parse_time, reason_name,
    summary)
from .status import EventKind

MAX_EVENTS = 500  # the newest events of one certificate shown with it
# events whose subject is a certificate's serial (others name a device, a transaction or a key by that column)
CERT_EVENT_KINDS = (EventKind.ISSUE.value, EventKind.RENEW.value, EventKind.REVOKE.value, EventKind.HOLD.value,
                    EventKind.ACTIVATE.value, "scep.enrolment.reconcile")


def parse_filters(query: Any) -> CertFilter:
    """The filters of a request's query (a MultiDict); a filter given twice is a 400."""
    for key in FILTERS:
        if len(query.getall(key, [])) > 1:
            raise _bad(f"{key}: given more than once")
    return CertFilter.parse({key: query.get(key) for key in FILTERS})


class DeviceLinks(Protocol):
    """The binding capability's side of a certificate (``scep_server.binding.certlinks``)."""

    def bound_serials(self, device_id: str) -> sa.Select:
        """The serials of our certificates that are (or were) bound to `device_id`."""

    async def binding_of(self, conn: AsyncConnection, ca: str, serial: str) -> dict[str, Any] | None:
        """The binding of one of our certificates, as JSON, or None."""


class CertificateQueries:
    """Administrators' reads of the inventory (``runtime.certificates``)."""

    def __init__(self, engine: AsyncEngine, *, device_links: DeviceLinks | None = None) -> None:
        self.engine = engine
        self.device_links = device_links

    def conditions(self, f: CertFilter) -> list[sa.ColumnElement[bool]]:
        c = certificates.c
        where: list[sa.ColumnElement[bool]] = []
        if f.device is not None:
            # one IN over the union of the two lookups (each by its index): PostgreSQL joins the few serials
            # to the primary key, where an OR of two conditions would filter a walk of the whole table
            enrolled = certificates.alias("enrolled")
            serials = sa.select(enrolled.c.serial).where(enrolled.c.enrolled_device_id == f.device)
            if self.device_links is not None:
                serials = sa.union(serials, self.device_links.bound_serials(f.device))
            where.append(c.serial.in_(serials))
        for column, low, high in ((c.issued_at, f.issued_after, f.issued_before),
                                  (c.not_after, f.expires_after, f.expires_before)):
            if low is not None:
                where.append(column >= low)
            if high is not None:
                where.append(column < high)
        if f.serial_prefix is not None:
            # a range of the primary key (every hex digit sorts below "g" in byte order and in the usual
            # collations), and LIKE for exactness whatever the collation (hex digits hold no wildcard)
            where += [c.serial >= f.serial_prefix, c.serial < f.serial_prefix + "g",
                      c.serial.like(f.serial_prefix + "%")]
        return where

    async def list(self, page: PageRequest, f: CertFilter = CertFilter()) -> Page[CertRecord]:
        """One page of the certificates `f` selects, newest first."""
        async with self.engine.connect() as conn:
            return await inventory.list_certs(conn, page, status=f.status.value if f.status else None,
                                              profile=f.profile, where=self.conditions(f))

    async def get(self, serial: str) -> CertRecord:
        async with self.engine.connect() as conn:
            record = await inventory.get(conn, serial)
        if record is None:
            raise UnknownCertificate(f"no certificate with serial {serial}")
        return record

    async def show(self, serial: str) -> dict[str, Any]:
        """One certificate: its summary, PEM, issuing CA, lineage, device binding and audit events (oldest
        first, the newest `MAX_EVENTS`); UnknownCertificate (404) when there is none."""
        async with self.engine.connect() as conn:
            r = await inventory.get(conn, serial)
            if r is None:
                raise UnknownCertificate(f"no certificate with serial {serial}")
            issuer = (await conn.execute(sa.select(cas.c.subject, cas.c.fingerprint_sha256)
                                         .where(cas.c.name == r.ca))).first()
            renewed_by = (await conn.execute(sa.select(certificates.c.serial)
                                             .where(certificates.c.renewal_of == r.serial)
                                             .order_by(certificates.c.issued_at).limit(1))).scalar()
            rows = (await conn.execute(
                sa.select(events.c.at, events.c.kind, events.c.actor, events.c.data)
                .where(events.c.subject == r.serial, events.c.kind.in_(CERT_EVENT_KINDS))
                .order_by(events.c.at.desc(), events.c.id.desc()).limit(MAX_EVENTS))).all()
            binding = await self.device_links.binding_of(conn, r.ca, r.serial) if self.device_links else None
        pem = x509.load_der_x509_certificate(r.der).public_bytes(serialization.Encoding.PEM).decode("ascii")
        return {**summary(r), "public_key_sha256": r.public_key_sha256, "first_used_at": _iso(r.first_used_at),
                "renewal_of": r.renewal_of, "renewed_by": renewed_by,
                "issuer": {"ca": r.ca, "subject": issuer.subject if issuer else None,
                           "fingerprint_sha256": issuer.fingerprint_sha256 if issuer else None},
                "binding": binding, "pem": pem,
                "events": [{"at": aware(e.at).isoformat(), "kind": e.kind, "actor": e.actor, "data": _data(e.data)}
                           for e in reversed(rows)]}


def _data(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {"value": value}
