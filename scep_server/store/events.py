"""Audit events (who did what, when): pki.cert.* (`scep_server.ca.status.EventKind`), device.*, security.* ..."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import events


async def record_event(conn: AsyncConnection, *, at: datetime, kind: str, subject: str | None = None,
                       actor: str | None = None, data: dict[str, Any] | None = None) -> None:
    """Append one audit event inside the caller's transaction (``kind``: a string or a string enum's member)."""
    await conn.execute(events.insert().values(
        at=at, kind=str(kind), subject=subject, actor=actor, data=json.dumps(data or {}, sort_keys=True, default=str)))
