"""The binding capability's side of a certificate, for the inventory's reads (`scep_server.ca.queries`):
which certificates a device holds or held, and the binding of one certificate."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from trustkit.clock import aware

from .tables import device_certs, devices


class BoundCertificates:
    """`scep_server.ca.queries.DeviceLinks` over ``device_certs`` (our certificates only, not external CAs')."""

    def bound_serials(self, device_id: str) -> sa.Select:
        """The serials of our certificates bound to the device (now or before), by ix_device_certs_device."""
        d = device_certs.c
        return sa.select(d.serial).where(d.device_id == device_id, sa.not_(d.external))

    async def binding_of(self, conn: AsyncConnection, ca: str, serial: str) -> dict[str, Any] | None:
        d = device_certs.c
        row = (await conn.execute(
            sa.select(d.device_id, d.current, d.state, d.retired_reason, d.bound_at, d.retired_at,
                      devices.c.status.label("device_status"))
            .select_from(device_certs.join(devices, devices.c.id == d.device_id))
            .where(d.ca == ca, d.serial == serial, sa.not_(d.external)))).first()
        if row is None:
            return None
        return {"device_id": row.device_id, "device_status": row.device_status, "current": bool(row.current),
                "state": row.state, "retired_reason": row.retired_reason,
                "bound_at": aware(row.bound_at).isoformat(),
                "retired_at": aware(row.retired_at).isoformat() if row.retired_at is not None else None}
