"""The RA certificate's lifecycle in a running deployment (and the pick-up of a prepared CA rollover, with the
keys in files or in a PKCS#11 token): renewal (`scep-server ca renew-ra`,
``POST /api/v1/cas/{ca}/ra/renew``, and automatically ``ca.ra_renew_before_days`` before it expires), the
pick-up of a renewal made by another process, and the readiness check of an RA that is about to expire.

Each server process runs :func:`ra_job`: every ``ca.ra_check_interval`` seconds it loads a CA that became
the issuing one since it started (a rollover activated by the command line or another process:
:func:`pick_up_cas`), reloads the RA certificates when the files changed (a renewal by the command line or
another process) and renews the RA when it is due. Renewals of one CA directory serialise on its lock (`scep_server.ca.ra.renew_ra`): of the
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
    """Split RA certificates asked for with the keys in a PKCS#11 token."""

    code = "ra_key_in_token"


def _passphrase(runtime: "Runtime") -> bytes:
    from .keys import load_or_create_passphrase

    s = runtime.settings
    return load_or_create_passphrase(s.ca.passphrase_env, s.passphrase_path(), keys_in=s.ca_dir().parent)


def _key_store(runtime: "Runtime", name: str):
    """The key store (a PKCS#11 token) the CA's keys come from; None for key files."""
    if runtime.settings.ca.key_backend == "file":
        return None
    return getattr(runtime.cas[name].key, "store", None)


def _deployment_key_store(runtime: "Runtime"):
    """The key store (a PKCS#11 token) with the settings' labels, over the sessions the loaded CAs use; None for
    key files."""
    if runtime.settings.ca.key_backend == "file":
        return None
    for ca in runtime.cas.values():
        store = getattr(ca.key, "store", None)
        if store is not None:
            return store.for_labels(None)
    return None


def _ra_passphrase(runtime: "Runtime", store) -> bytes:
    """The passphrase of the RA key files; none when the keys are in a token (no file, no passphrase made)."""
    return b"" if store is not None else _passphrase(runtime)


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


async def pick_up_cas(runtime: "Runtime") -> list[str]:
    """Load the CAs of the deployment that this process has not loaded yet (a CA rollover activated by the
    command line or another process) and put the issuing one first; the services that keep something per CA
    (CRL publishers, the OCSP responder) hear of each through ``runtime.ca_listeners``. The CAs loaded."""
    if not runtime.cas:
        return []  # a process that did not open the CA keys
    from .names import ca_names
    from .authority import load_ca
    from .pkcs11 import HsmError, KeyNotInToken

    async with runtime.ca_pick_up:
        names = await asyncio.to_thread(ca_names, runtime.settings)
        # an earlier CA left out because its keys are not in the token (runtime._load_token_cas, or below) is
        # not looked for again; the issuing one always is
        wanted = [name for i, name in enumerate(names) if i == 0 or name not in runtime.skipped_cas]
        if names[:1] == list(runtime.cas)[:1] and set(wanted) <= set(runtime.cas):
            return []
        s = runtime.settings
        # the keys in a token: the sessions this process holds, each CA's keys by its directory's labels
        store = _deployment_key_store(runtime)
        loaded = {}
        for name in wanted:
            if name in runtime.cas:
                continue
            try:
                loaded[name] = await asyncio.to_thread(load_ca, s.ca_dir(name), name=name,
                                                       passphrase=_ra_passphrase(runtime, store),
                                                       base_url=s.server.public_base_url(),
                                                       ca_decrypts=s.ca.ca_key_decrypts(), key_store=store)
            except (OSError, ValueError, TypeError, HsmError) as exc:
                error = f"{exc.__class__.__name__}: {exc}"
                if store is not None and name != names[0] and isinstance(exc, (KeyNotInToken, ValueError, TypeError)):
                    # an earlier CA whose keys the token does not hold (or not its): left out, as at the start
                    runtime.skipped_cas[name] = error
                    log.warning("ca.skipped", ca=name, error=error)
                else:  # being written now, or the token away: the next round loads it
                    log.warning("ca.load_failed", ca=name, error=error)
        names = [name for name in names if name in runtime.cas or name in loaded]
        ordered = {name: runtime.cas.get(name) or loaded[name] for name in names}
        ordered.update((name, ca) for name, ca in runtime.cas.items() if name not in ordered)
        runtime.cas.replace(ordered)  # the same mapping, which the SCEP service's threads read (ca/loaded.py)
        for name in loaded:
            log.info("ca.loaded", ca=name, issuing=name == names[0],
                     subject=loaded[name].cert.subject.rfc4514_string())
            for listener in list(runtime.ca_listeners):
                await listener(name)
        return list(loaded)


async def reload_ras(runtime: "Runtime", name: str) -> None:
    """Load the CA's RA certificates and its prepared next CA from its directory into this process (a renewal
    or a rollover prepared elsewhere)."""
    directory = runtime.settings.ca_dir(name)

    store = _key_store(runtime, name)

    def load():
        passphrase, now = _ra_passphrase(runtime, store), runtime.clock()
        ras = ra.load_ras(directory, passphrase, now=now, key_store=store)
        enc = [] if store is not None else ra.load_encryption_ras(directory, passphrase,
                                                                  split=ra.is_split(ras[0][0]), now=now)
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
    if runtime.settings.ca.key_backend != "file" and mode == "split":
        raise RaInToken(f"the RA key of CA {name!r} is in a PKCS#11 token: split RA certificates are not made "
                        "there")
    await _database_answers(runtime)
    now = runtime.clock()
    previous = ca.ra_cert
    store = _key_store(runtime, name)
    cert = await asyncio.to_thread(ra.renew_ra, runtime.settings.ca_dir(name), ca,
                                   validity_days=runtime.settings.ca.ra_validity_days,
                                   passphrase=_ra_passphrase(runtime, store), now=now, only_if_due=only_if_due,
                                   key_store=store, mode=mode)
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


async def _database_answers(runtime: "Runtime") -> None:
    """Before a CA's files change: a write transaction, opened and closed. A database that cannot take one (down,
    read-only) ends the change here, before files are written that no audit event (and, for an activation, no
    profile) would follow; its SQLAlchemyError is the command line's one-line error."""
    async with writer(runtime.engine).begin():
        pass


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
    await _database_answers(runtime)
    s, now = runtime.settings, runtime.clock()
    store = _key_store(runtime, name)  # a token: the next keys are made there, under labels of their own
    certs = await asyncio.to_thread(prepare, s.ca_dir(name), ca, key_size=s.ca.key_size,
                                    validity_days=s.ca.validity_days, ra_validity_days=s.ca.ra_validity_days,
                                    passphrase=_ra_passphrase(runtime, store), now=now, subject=subject,
                                    cross_sign=cross_sign, key_store=store, key_type=s.ca.key_type)
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
    in one transaction its row in ``cas``, every profile of ``name`` moved to it and the audit event. This
    process issues from it at once, the other running servers once they picked it up (:func:`pick_up_cas`,
    within ``ca.ra_check_interval``); ``name`` keeps publishing its CRL."""
    from ..store.tables import profiles
    from .authority import load_ca
    from .inventory import register_ca
    from .rollover import activate

    if name not in runtime.cas:
        raise UnknownCA(f"no CA named {name!r}")
    await _database_answers(runtime)
    store = _key_store(runtime, name)  # a token: the next keys by the labels its prepare recorded
    s, now, passphrase = runtime.settings, runtime.clock(), _ra_passphrase(runtime, store)
    new_name = await asyncio.to_thread(activate, s.ca_dir(name).parent, name, passphrase, store)
    new_ca = await asyncio.to_thread(load_ca, s.ca_dir(new_name), name=new_name, passphrase=passphrase,
                                     base_url=s.server.public_base_url(), ca_decrypts=s.ca.ca_key_decrypts(),
                                     key_store=store)
    import sqlalchemy as sa

    async with writer(runtime.engine).begin() as conn:
        await register_ca(conn, new_ca, now)
        moved = (await conn.execute(sa.update(profiles).where(profiles.c.ca == name)
                                    .values(ca=new_name, updated_at=now))).rowcount
        await record_event(conn, at=now, kind=ACTIVATE_KIND, subject=name, actor=actor, data={
            "ca": new_name, "subject": new_ca.cert.subject.rfc4514_string(),
            "serial": format(new_ca.cert.serial_number, "x"), "profiles": moved})
    log.info("ca.rollover.activated", ca=name, active=new_name, profiles=moved, actor=actor)
    await pick_up_cas(runtime)  # this process issues from it now; the others within ca.ra_check_interval
    return {"ca": name, "active": new_name, "certificate": describe_certificate(new_ca.cert), "profiles": moved}


def _issuing(runtime: "Runtime") -> list[str]:
    """The CA that issues: the first one loaded (`scep_server.ca.names.ca_names`); a CA that issued before a
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
    """One round of the job: load a CA activated elsewhere, pick up changed RA files, then renew what is due
    (keys in files, or in the PKCS#11 token: scep_server.ca.ra.renew_ra)."""
    await pick_up_cas(runtime)
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
