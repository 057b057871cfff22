"""Audit events (who did what, when): pki.cert.*, device.*, security.* ..."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import events


async def record_event(conn: AsyncConnection, *, at: datetime, kind: str, subject: str | None = None,
                       actor: str | None = None, data: dict[str, Any] | None = None) -> None:
    """Append one audit event inside the caller's transaction."""
    await conn.execute(events.insert().values(
        at=at, kind=kind, subject=subject, actor=actor, data=json.dumps(data or {}, sort_keys=True, default=str)))
