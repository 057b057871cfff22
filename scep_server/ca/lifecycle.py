"""The RA certificate's lifecycle in a running deployment (and the pick-up of a prepared CA rollover): renewal (`scep-server ca renew-ra`,
``POST /api/v1/cas/{ca}/ra/renew``, and automatically ``ca.ra_renew_before_days`` before it expires), the
pick-up of a renewal made by another process, and the readiness check of an RA that is about to expire.

Each server process runs :func:`ra_job`: every ``ca.ra_check_interval`` seconds it reloads the RA
certificates when the files changed (a renewal by the command line or another process) and renews the RA
when it is due. Renewals of one CA directory serialise on its lock (`scep_server.ca.ra.renew_ra`): of the
processes that find the RA due at the same time, one renews and the others load its certificate.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from trustkit.db import writer
from trustkit.problems import Conflict, NotFound

from ..store.events import record_event
from . import ra
from .overview import describe_certificate

if TYPE_CHECKING:
    from ..runtime import Runtime

log = structlog.get_logger("ca")

RENEW_KIND = "pki.ra.renew"
"""The audit event of an RA renewal (subject: the CA's name)."""

SYSTEM_ACTOR = "system:ra-renewal"
NOT_READY_WITHIN = timedelta(days=14)
"""An RA certificate that expires within this is a failed readiness check (``ca.ra``): it was not renewed."""


class UnknownCA(NotFound):
    code = "ca_not_found"


class RaInToken(Conflict):
    code = "ra_key_in_token"


def _passphrase(runtime: "Runtime") -> bytes:
    from .keys import load_or_create_passphrase

    s = runtime.settings
    return load_or_create_passphrase(s.ca.passphrase_env, s.passphrase_path())


def describe_ras(ca) -> dict[str, Any]:
    return {"ca": ca.name, "ra_mode": ca.ra_mode, "ra_certificate": describe_certificate(ca.ra_cert),
            "ra_encryption_certificate": describe_certificate(ca.ra_enc_cert) if ca.ra_enc_cert else None,
            "previous_ra_certificates": [describe_certificate(c)
                                         for c, _ in (*ca.previous_ras, *ca.previous_enc_ras)]}


def _next_ca_certs(directory) -> list:
    from cryptography import x509

    path = directory / "next-ca.crt"
    return x509.load_pem_x509_certificates(path.read_bytes()) if path.exists() else []


def files_state(directory) -> tuple:
    """The RA files and the prepared next CA as they are now (names, modification times)."""
    path = directory / "next-ca.crt"
    return ra.files_state(directory), path.stat().st_mtime_ns if path.exists() else None


async def reload_ras(runtime: "Runtime", name: str) -> None:
    """Load the CA's RA certificates and its prepared next CA from its directory into this process (a renewal
    or a rollover prepared elsewhere)."""
    directory = runtime.settings.ca_dir(name)

    def load():
        passphrase, now = _passphrase(runtime), runtime.clock()
        ras = ra.load_ras(directory, passphrase, now=now)
        enc = ra.load_encryption_ras(directory, passphrase, split=ra.is_split(ras[0][0]), now=now)
        return ras, enc, _next_ca_certs(directory)

    ras, enc_ras, next_certs = await asyncio.to_thread(load)
    current = runtime.cas[name]
    runtime.cas[name] = ra.with_ras(current, ras, next_certs, enc_ras)
    if next_certs and not current.next_ca_certs:
        log.info("ca.rollover.loaded", ca=name, subject=next_certs[0].subject.rfc4514_string(),
                 not_after=next_certs[0].not_valid_after_utc.isoformat())
    if ras[0][0].serial_number != current.ra_cert.serial_number:
        log.info("ca.ra.loaded", ca=name, serial=format(ras[0][0].serial_number, "x"),
                 not_after=ras[0][0].not_valid_after_utc.isoformat())


async def renew(runtime: "Runtime", name: str, *, actor: str, only_if_due: timedelta | None = None,
                mode: str | None = None) -> dict[str, Any] | None:
    """Renew the RA of CA ``name`` now (or, with ``only_if_due``, if it is due and nobody renewed it first):
    write the new certificate and key (in split mode both RA certificates; ``mode`` switches between "single"
    and "split", scep_server.ca.ra.renew_ra), record the audit event, and use it in this process. The new RA
    certificates (None when nothing was due)."""
    ca = runtime.cas.get(name)
    if ca is None:
        raise UnknownCA(f"no CA named {name!r}")
    if runtime.settings.ca.key_backend != "file":
        what = "renewing it" if mode is None else "split RA certificates"
        raise RaInToken(f"the RA key of CA {name!r} is in a PKCS#11 token: {what} there is not supported yet")
    now = runtime.clock()
    previous = ca.ra_cert
    cert = await asyncio.to_thread(ra.renew_ra, runtime.settings.ca_dir(name), ca,
                                   validity_days=runtime.settings.ca.ra_validity_days,
                                   passphrase=_passphrase(runtime), now=now, only_if_due=only_if_due, mode=mode)
    if cert is None:
        await reload_ras(runtime, name)  # another process may have renewed it
        return None
    await reload_ras(runtime, name)
    renewed = runtime.cas[name]
    enc = renewed.ra_enc_cert
    data = {"serial": format(cert.serial_number, "x"), "previous_serial": format(previous.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(), "ra_mode": renewed.ra_mode}
    if enc is not None:
        data["encryption_serial"] = format(enc.serial_number, "x")
    async with writer(runtime.engine).begin() as conn:
        await record_event(conn, at=now, kind=RENEW_KIND, subject=name, actor=actor, data=data)
    log.info("ca.ra.renewed", ca=name, serial=format(cert.serial_number, "x"),
             previous_serial=format(previous.serial_number, "x"), not_after=cert.not_valid_after_utc.isoformat(),
             ra_mode=renewed.ra_mode, actor=actor)
    return describe_ras(renewed)


PREPARE_KIND = "pki.ca.rollover.prepare"
"""The audit event of a prepared CA rollover (subject: the CA's name)."""


async def prepare_rollover(runtime: "Runtime", name: str, *, actor: str, subject: str | None = None,
                           cross_sign: bool = False) -> dict[str, Any]:
    """Create the next CA of ``name`` (scep_server.ca.rollover), record the audit event and announce it in this
    process; the CA's description (``next_ca_certificates``)."""
    from .overview import describe_ca
    from .rollover import prepare

    ca = runtime.cas.get(name)
    if ca is None:
        raise UnknownCA(f"no CA named {name!r}")
    s, now = runtime.settings, runtime.clock()
    certs = await asyncio.to_thread(prepare, s.ca_dir(name), ca, key_size=s.ca.key_size,
                                    validity_days=s.ca.validity_days, ra_validity_days=s.ca.ra_validity_days,
                                    passphrase=_passphrase(runtime), now=now, subject=subject, cross_sign=cross_sign)
    async with writer(runtime.engine).begin() as conn:
        await record_event(conn, at=now, kind=PREPARE_KIND, subject=name, actor=actor, data={
            "subject": certs[0].subject.rfc4514_string(), "serial": format(certs[0].serial_number, "x"),
            "not_after": certs[0].not_valid_after_utc.isoformat(), "cross_signed": cross_sign})
    log.info("ca.rollover.prepared", ca=name, subject=certs[0].subject.rfc4514_string(), cross_signed=cross_sign,
             actor=actor)
    await reload_ras(runtime, name)
    described = describe_ca(runtime.cas[name])
    return {"name": name, "next_ca_certificates": described["next_ca_certificates"]}


ACTIVATE_KIND = "pki.ca.rollover.activate"
"""The audit event of an activated CA rollover (subject: the CA that issued until then)."""


async def activate_rollover(runtime: "Runtime", name: str, *, actor: str) -> dict[str, Any]:
    """Make the prepared next CA of ``name`` the issuing CA (scep_server.ca.rollover.activate): its files, then
    in one transaction its row in ``cas``, every profile of ``name`` moved to it and the audit event. The
    running servers issue from it once restarted; ``name`` keeps publishing its CRL."""
    from ..store.tables import profiles
    from .authority import load_ca
    from .inventory import register_ca
    from .rollover import activate

    if name not in runtime.cas:
        raise UnknownCA(f"no CA named {name!r}")
    s, now = runtime.settings, runtime.clock()
    new_name = await asyncio.to_thread(activate, s.ca_dir(name).parent, name)
    new_ca = await asyncio.to_thread(load_ca, s.ca_dir(new_name), name=new_name, passphrase=_passphrase(runtime),
                                     base_url=s.server.public_base_url(), ca_decrypts=s.ca.ca_key_decrypts())
    import sqlalchemy as sa

    async with writer(runtime.engine).begin() as conn:
        await register_ca(conn, new_ca, now)
        moved = (await conn.execute(sa.update(profiles).where(profiles.c.ca == name)
                                    .values(ca=new_name, updated_at=now))).rowcount
        await record_event(conn, at=now, kind=ACTIVATE_KIND, subject=name, actor=actor, data={
            "ca": new_name, "subject": new_ca.cert.subject.rfc4514_string(),
            "serial": format(new_ca.cert.serial_number, "x"), "profiles": moved})
    log.info("ca.rollover.activated", ca=name, active=new_name, profiles=moved, actor=actor)
    return {"ca": name, "active": new_name, "certificate": describe_certificate(new_ca.cert), "profiles": moved,
            "restart_required": True}


def _issuing(runtime: "Runtime") -> list[str]:
    """The CA that issues: the first one loaded (`scep_server.runtime.ca_names`); a CA that issued before a
    rollover only publishes its CRL, its RA serves nobody."""
    return list(runtime.cas)[:1]


def ra_readiness(runtime: "Runtime") -> str:
    """``ca.ra``: failed when the issuing CA's RA certificate expires within 14 days (it was not renewed)."""
    now = runtime.clock()
    late = [f"{name}: RA certificate expires {runtime.cas[name].ra_cert.not_valid_after_utc.isoformat()}"
            for name in _issuing(runtime)
            if runtime.cas[name].ra_cert.not_valid_after_utc - now < NOT_READY_WITHIN]
    return "ok" if not late else "error: not renewed: " + "; ".join(late)


async def check_once(runtime: "Runtime", states: dict[str, Any]) -> None:
    """One round of the job: pick up changed RA files, then renew what is due (file keys only: with keys in a
    PKCS#11 token nothing is renewed here, and readiness fails 14 days before the RA expires)."""
    if runtime.settings.ca.key_backend != "file":
        return
    before = timedelta(days=runtime.settings.ca.ra_renew_before_days)
    for name in sorted(runtime.cas):
        directory = runtime.settings.ca_dir(name)
        state = await asyncio.to_thread(files_state, directory)
        if states.get(name) not in (None, state):
            await reload_ras(runtime, name)
        states[name] = state
        if name in _issuing(runtime) and ra.renewal_due(runtime.cas[name].ra_cert, now=runtime.clock(),
                                                         renew_before=before):
            try:
                if await renew(runtime, name, actor=SYSTEM_ACTOR, only_if_due=before) is not None:
                    states[name] = await asyncio.to_thread(files_state, directory)
            except Exception as exc:  # noqa: BLE001 - retried at the next round; readiness fails near expiry
                log.error("ca.ra.renew_failed", ca=name, error=f"{exc.__class__.__name__}: {exc}")


def ra_job(runtime: "Runtime"):
    """The server's RA job (supervised: scep_server.jobs)."""
    states: dict[str, Any] = {}

    async def ra_lifecycle() -> None:
        while True:
            await check_once(runtime, states)
            await asyncio.sleep(runtime.settings.ca.ra_check_interval)

    return ra_lifecycle
