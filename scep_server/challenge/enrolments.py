"""Pending enrolments (profiles with ``require_approval``): listing for the CLI and the admin API."""
from __future__ import annotations

from datetime import timezone
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncEngine

from ..store.tables import scep_transactions
from .store import csr_sans

STATES = ("pending", "issued", "rejected")


async def list_enrolments(engine: AsyncEngine, *, state: str | None = "pending", profile: str | None = None,
                          limit: int = 500) -> list[dict[str, Any]]:
    t = scep_transactions.c
    q = sa.select(scep_transactions).order_by(t.created_at, t.transaction_id).limit(limit)
    if state:
        q = q.where(t.state == state)
    if profile:
        q = q.where(t.profile == profile)
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    out = []
    for row in rows:
        m = row._mapping
        try:
            csr = x509.load_der_x509_csr(m["csr_der"])
            subject, sans = csr.subject.rfc4514_string(), csr_sans(csr)
        except ValueError:
            subject, sans = None, []
        created = m["created_at"]
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        out.append({"profile": m["profile"], "transaction_id": m["transaction_id"], "state": m["state"],
                    "subject": subject, "sans": sans, "public_key_sha256": m["public_key_sha256"],
                    "created_at": created.isoformat(), "serial": m["serial"], "decided_by": m["decided_by"],
                    "fail_text": m["fail_text"]})
    return out
