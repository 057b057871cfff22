"""The `mdm` capability (on with device binding): Jamf Pro webhooks, the MDM sources' admin routes, and the
periodic sync of every configured source (one process of the deployment per source and period)."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from ..config import Settings
    from ..runtime import Runtime
    from .service import MdmService

log = structlog.get_logger("mdm")

def open_mdm(runtime: "Runtime") -> "MdmService":
    """The MDM service of a runtime in which device binding is open (``runtime.mdm`` makes it once)."""
    from ..binding.service import services
    from .readers import make_reader
    from .service import MdmService

    cfg = runtime.settings.mdm
    return MdmService(runtime.engine, services(runtime).devices, cfg, reader=make_reader(timeout=cfg.timeout_seconds),
                      clock=runtime.clock)


class MdmFeature:
    name = "mdm"

    def enabled(self, settings: "Settings") -> bool:
        return settings.binding.enabled

    def add_routes(self, app) -> None:
        from .web import add_routes

        add_routes(app)

    def jobs(self, runtime: "Runtime") -> list:
        async def sync_sources() -> None:
            """Sync each configured source when its period is due and no other process has claimed it."""
            svc = runtime.mdm
            interval = runtime.settings.mdm.sync_interval_seconds
            while True:
                try:
                    for source in await svc.sources():
                        await svc.periodic_sync(source["name"])
                except Exception:  # noqa: BLE001 - a database or MDM fault must not end the job
                    log.exception("mdm.sync_failed")
                await asyncio.sleep(min(60.0, interval))

        return [sync_sources]


FEATURE = MdmFeature()
