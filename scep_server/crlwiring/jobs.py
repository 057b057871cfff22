"""Background loops of the server: the publishers, the change feed, the change-marker watcher and the day-91 rule."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from .service import CrlService

if TYPE_CHECKING:
    from ..runtime import Runtime

log = structlog.get_logger("crl.jobs")


def publishers(service: CrlService):
    """Each CA's publisher loop runs while the server runs."""
    async def run_publishers() -> None:
        await service.start_publishing()
        try:
            await asyncio.Event().wait()
        finally:
            await service.stop_publishing()

    return run_publishers


def change_feed(service: CrlService):
    """Listen for changes made by other processes (crlwiring.changes): their CRLs are adopted at once."""
    from .changes import ChangeFeed

    async def listen_changes() -> None:
        await ChangeFeed(service.runtime.engine, service.on_remote_change).run()

    return listen_changes


def change_watcher(service: CrlService):
    """Every poll_interval, and once the grace period after a change announced by another process has
    passed: publish the partition CRLs of a CA whose partition count another instance recorded since, and
    re-sign where a status change was not published by the process that made it."""
    async def watch_changes() -> None:
        interval = service.settings.poll_interval.total_seconds()
        next_regular = time.monotonic() + interval
        while True:
            now = time.monotonic()
            due = next_regular if service.check_due is None else min(next_regular, service.check_due)
            if due > now:
                service.watch_wake.clear()
                try:
                    async with asyncio.timeout(due - now):
                        await service.watch_wake.wait()
                except TimeoutError:
                    pass
                continue  # recompute: woken for a new check_due, or the time has come
            if now >= next_regular:
                next_regular = now + interval
            if service.check_due is not None and now >= service.check_due:
                service.check_due = None
            for step in (service.refresh_partitioning, service.check_marker):  # one failing skips not the other
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the watcher
                    log.error("crl.watch.failed", error=f"{type(exc).__name__}: {exc}")

    return watch_changes


async def revoke_unused_once(runtime: Runtime) -> list[str]:
    """One run of the day-91 rule (the clock is the runtime's, so tests move it instead of waiting)."""
    return await runtime.revocation.revoke_unused(unused_days=runtime.settings.crl.unused_days)


def unused_certificates(runtime: Runtime):
    """The day-91 rule on a schedule (crl.unused_check_interval, first run at start-up)."""
    async def revoke_unused() -> None:
        interval = runtime.settings.crl.unused_check_interval.total_seconds()
        while True:
            try:
                revoked = await revoke_unused_once(runtime)
                if revoked:
                    log.info("crl.day91.revoked", count=len(revoked), unused_days=runtime.settings.crl.unused_days)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried at the next run
                log.error("crl.day91.failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(interval)

    return revoke_unused
