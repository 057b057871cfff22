"""Pending enrolments (profiles with ``require_approval``): listing for the CLI and the admin API."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit import paging
from trustkit.clock import aware, utcnow
from trustkit.paging import Page, PageRequest

from ..enrolment.model import EXPIRY_ACTOR, expired_text, pending_expiry
from ..profilemodel import ProfileError, ProfileSettings, profile_from_row
from ..store.tables import profiles, scep_transactions
from .store import csr_sans, san_strings

STATES = ("pending", "issued", "rejected")


ENROLMENT_KEY = (datetime, str, str)
"""The kinds of an enrolment list's cursor: creation time, profile, transaction id (oldest first)."""


class _Expiry:
    """The profiles' ``pending_expiry_days`` as a listing applies them (a read: the rows stay as they are until
    the enrolment service rejects them, scep_server.enrolment.expiry): a pending enrolment past its profile's
    expiry is listed, filtered and shown as the rejection it is about to become."""

    def __init__(self, settings: dict[str, ProfileSettings], now: datetime):
        self.settings = settings
        self.cutoffs = {name: now - expiry for name, s in settings.items()
                        if (expiry := pending_expiry(s)) is not None}

    @classmethod
    async def read(cls, conn, profile: str | None, now: datetime) -> "_Expiry":
        q = sa.select(profiles)
        if profile:
            q = q.where(profiles.c.name == profile)
        settings = {}
        for r in (await conn.execute(q)).all():
            try:
                settings[r.name] = profile_from_row(r._mapping).settings
            except ProfileError:  # unreadable settings: its enrolments are listed as stored
                continue
        return cls(settings, now)

    def expired(self) -> sa.ColumnElement[bool]:
        """The SQL condition of a row (of any state) received before its profile's expiry cutoff."""
        t = scep_transactions.c
        return sa.or_(sa.false(), *(sa.and_(t.profile == name, t.created_at <= cutoff)
                                    for name, cutoff in self.cutoffs.items()))

    def shown(self, row: dict[str, Any], created_at: datetime) -> dict[str, Any]:
        cutoff = self.cutoffs.get(row["profile"])
        if row["state"] != "pending" or cutoff is None or aware(created_at) > cutoff:
            return row
        return {**row, "state": "rejected", "fail_text": expired_text(self.settings[row["profile"]]),
                "decided_by": EXPIRY_ACTOR}


async def page_enrolments(engine: AsyncEngine, page: PageRequest, *, state: str | None = "pending",
                          profile: str | None = None, now: datetime | None = None) -> Page[dict[str, Any]]:
    """One page of the enrolments in `state` (all when None), of one profile or all, oldest first
    (docs/api.md "Pagination"): an index range of ix_scep_transactions_state_created or _created_state. A
    pending enrolment past its profile's ``pending_expiry_days`` (at ``now``) is a rejected one."""
    t = scep_transactions.c
    key = [t.created_at, t.profile, t.transaction_id]
    q = (sa.select(scep_transactions).where(paging.after(key, page.after)).order_by(*paging.order(key))
         .limit(page.limit + 1))
    if profile:
        q = q.where(t.profile == profile)
    async with engine.connect() as conn:
        expiry = await _Expiry.read(conn, profile, now or utcnow())
        if state == "pending":
            q = q.where(t.state == "pending", sa.not_(expiry.expired()))
        elif state == "rejected":
            q = q.where(sa.or_(t.state == "rejected", sa.and_(t.state == "pending", expiry.expired())))
        elif state:
            q = q.where(t.state == state)
        rows = (await conn.execute(q)).all()
    # the cursor carries the creation time as the ISO text the row shows: the same instant
    return paging.take([expiry.shown(_row(r, expiry.settings.get(r.profile)), r.created_at) for r in rows],
                       page.limit, key=lambda r: (r["created_at"], r["profile"], r["transaction_id"]))


async def find_enrolment(engine: AsyncEngine, profile: str, transaction_id: str,
                         now: datetime | None = None) -> dict[str, Any] | None:
    """One enrolment (any state) as the list shows it, with what an approver checks of its request: the
    public key's algorithm and size, whether it renews a certificate, when it last changed; None when absent."""
    from ..ca.keyinfo import describe

    t = scep_transactions.c
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(scep_transactions).where(
            t.profile == profile, t.transaction_id == transaction_id))).first()
        if row is None:
            return None
        expiry = await _Expiry.read(conn, profile, now or utcnow())
    try:
        key = describe(x509.load_der_x509_csr(row.csr_der).public_key())
    except (ValueError, TypeError):  # an unreadable request or key
        key = None
    return {**expiry.shown(_row(row, expiry.settings.get(row.profile)), row.created_at), "key": key,
            "renewal_of": row.renewal_of, "message_type": row.message_type,
            "updated_at": aware(row.updated_at).isoformat()}


def names(csr: x509.CertificateSigningRequest, settings: ProfileSettings | None) -> tuple[str, list[str]]:
    """The subject (RFC 4514) and SANs (``kind:value``) an approver decides on: those the certificate gets, as the
    profile's template computes them now (an e-mail SAN for each subject emailAddress beside the CSR's own, the
    subject `cn_only` keeps), which an approval issues; the CSR's own where the template refuses the request (an
    approval is then refused too) or the profile is gone or unreadable."""
    from ..ca.policy import IssuancePolicy, PolicyViolation

    if settings is not None:
        try:
            subject, sans = IssuancePolicy(settings.template).subject_and_sans(csr)
            return subject.rfc4514_string(), san_strings(sans)
        except (PolicyViolation, ValueError):
            pass
    return csr.subject.rfc4514_string(), csr_sans(csr)


def _row(row, settings: ProfileSettings | None = None) -> dict[str, Any]:
    """An enrolment as the API, the console and the command line show it (`settings`: its profile's)."""
    m = row._mapping
    try:
        csr = x509.load_der_x509_csr(m["csr_der"])
        subject, sans = names(csr, settings)
    except ValueError:
        subject, sans = None, []
    return {"profile": m["profile"], "transaction_id": m["transaction_id"], "state": m["state"],
            "subject": subject, "sans": sans, "public_key_sha256": m["public_key_sha256"],
            "created_at": aware(m["created_at"]).isoformat(), "serial": m["serial"], "decided_by": m["decided_by"],
            "fail_text": m["fail_text"]}


def _hour(dialect: str, column: sa.ColumnElement) -> sa.ColumnElement:
    """The start of the UTC hour of a timestamp column, computed by the database: a timestamp on PostgreSQL, the
    text ``YYYY-MM-DD HH`` on SQLite (which keeps UTC timestamps as ISO text: "YYYY-MM-DD HH:MM:SS...")."""
    if dialect == "postgresql":
        return sa.func.date_trunc(sa.literal_column("'hour'"), column, sa.literal_column("'UTC'"))
    return sa.func.substr(column, 1, 13)


def _hour_start(value: datetime | str) -> datetime:
    if isinstance(value, str):
        return datetime.strptime(value, "%Y-%m-%d %H").replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


CHART_STATES = ("issued", "pending", "rejected", "awaiting_ack")
"""The states of scep_transactions the enrolment chart names; any other is counted as "other"."""


async def hourly_outcomes(engine: AsyncEngine, since: datetime, until: datetime) -> list[tuple[datetime, str, int]]:
    """(hour start, state, count) of the enrolments received in [since, until), by the hour they were received
    and their state now (CHART_STATES, else "other"), hours and states in order: one GROUP BY hour over an index
    range of ix_scep_transactions_created_state, which holds every column it reads (a count per state within
    each group, cheaper than grouping by hour and state)."""
    t = scep_transactions.c
    hour = _hour(engine.dialect.name, t.created_at).label("hour")
    counts = [sa.func.count().filter(t.state == state).label(f"n{i}") for i, state in enumerate(CHART_STATES)]
    q = (sa.select(hour, sa.func.count().label("total"), *counts)
         .where(t.created_at >= since.astimezone(timezone.utc), t.created_at < until.astimezone(timezone.utc))
         .group_by(hour).order_by(hour))
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    out = []
    for r in rows:
        at = _hour_start(r.hour)
        named = {state: int(r[2 + i]) for i, state in enumerate(CHART_STATES)}
        named["other"] = int(r.total) - sum(named.values())
        out += [(at, state, n) for state, n in sorted(named.items()) if n]
    return out
