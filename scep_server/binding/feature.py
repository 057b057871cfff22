"""The `binding` capability (`[binding] enabled`): its services (``runtime.binding``), HTTP routes and jobs.
The composition root hands the device-identity lookup to the SCEP service."""
from __future__ import annotations

import asyncio
import contextlib
import shlex
from datetime import timedelta
from typing import TYPE_CHECKING, AsyncIterator
from urllib.parse import quote

import structlog

from crl.check import CrlChecker
from crl.checkstore import CheckerStateStore

from .attestation import AttestationService
from .devices import DeviceStore
from .external import ExternalCas, checker_settings
from .service import BindingServices

if TYPE_CHECKING:
    from ..config import Settings
    from ..runtime import Runtime

log = structlog.get_logger("binding")


def forget_hint(ca: str) -> str:
    """What the rollback and scope_mismatch events of a customer CA's CRL tell the operator to run."""
    return (f"if the CA itself went back (restored from a backup) or narrowed this URL's scope on purpose, run "
            f"scep-server ca forget-external-crls {shlex.quote(ca)} "
            f"(or POST /api/v1/external-cas/{quote(ca, safe='')}/forget-crls)")


def _our_ca_names(runtime: "Runtime") -> list[str]:
    """This deployment's CA names known here: the configured one, the runtime's, the CA directory's."""
    from ..ca.names import ca_names

    names = [runtime.settings.ca.name, *runtime.cas]
    try:
        names += ca_names(runtime.settings)
    except OSError:  # no CA directory here (another instance holds it): the database's record of our CAs counts
        pass
    return names


@contextlib.asynccontextmanager
async def open_binding(runtime: "Runtime") -> AsyncIterator[BindingServices]:
    cfg = runtime.settings.binding
    assert runtime.revocation is not None
    notify = runtime.revocation.notify_changed
    checker = CrlChecker(settings=checker_settings(runtime.settings.crl), clock=runtime.clock,
                         state=CheckerStateStore(runtime.engine, clock=runtime.clock), forget_hint=forget_hint)
    external = ExternalCas(runtime.engine, checker, reload_seconds=cfg.external_ca_reload_seconds,
                           our_names=lambda: _our_ca_names(runtime))
    svc = BindingServices(
        devices=DeviceStore(runtime.engine, clock=runtime.clock, notify_changed=notify),
        attestation=AttestationService(
            runtime.engine, cas=runtime.cas, external=external, clock=runtime.clock,
            nonce_ttl=timedelta(seconds=cfg.nonce_ttl_seconds),
            revoke_on_second_device=cfg.revoke_on_second_device, cache_size=cfg.certificate_cache_size,
            cache_bytes=cfg.certificate_cache_bytes,
            notify_changed=notify, unused_days=runtime.settings.crl.unused_days),
        external=external)
    try:
        yield svc
    finally:
        await svc.attestation.aclose()
        await svc.external.checker.stop()


class BindingFeature:
    name = "binding"

    def enabled(self, settings: "Settings") -> bool:
        return settings.binding.enabled

    def add_routes(self, app) -> None:
        from .web import add_routes

        add_routes(app)

    def jobs(self, runtime: "Runtime") -> list:
        svc = runtime.binding
        assert svc is not None

        async def external_cas() -> None:
            """Keep the registered external CAs loaded."""
            while True:
                try:
                    await svc.external.reload()
                except Exception:  # noqa: BLE001 - a database hiccup must not end the job
                    log.exception("binding.external_ca.reload_failed")
                await asyncio.sleep(svc.external.reload_seconds)

        async def external_crls() -> None:
            """Keep the CRLs of the external CAs fresh: the checker's schedule, restarted if a round raises."""
            await svc.external.checker.run()

        async def purge_nonces() -> None:
            while True:
                try:
                    await svc.attestation.purge_nonces()
                except Exception:  # noqa: BLE001
                    log.exception("binding.nonce_purge_failed")
                await asyncio.sleep(60)

        return [external_cas, external_crls, purge_nonces]


FEATURE = BindingFeature()
