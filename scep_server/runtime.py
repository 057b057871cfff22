"""Wiring: first-start initialisation and the services a running server (or a CLI command) uses."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from . import features
from .ca import inventory
from .ca.authority import CertificateAuthority, load_ca, load_or_create_ca
from .ca.revocation import RevocationService
from .ca.keys import load_or_create_passphrase, write_private_file
from trustkit.clock import Clock, utcnow
from .config import Settings
from .enrolment import ScepService
from .profiles import ProfileSettings, ProfileStore, new_static_secret
from trustkit.db import create_engine, writer
from .store.migrate import upgrade
from .tokens import TokenStore


@dataclass
class Runtime:
    """Everything a request handler or a CLI command needs, built once per process."""

    settings: Settings
    engine: AsyncEngine
    clock: Clock
    cas: dict[str, CertificateAuthority]
    profiles: ProfileStore
    tokens: TokenStore
    scep: ScepService
    revocation: RevocationService
    extras: dict = field(default_factory=dict)


def _engine(settings: Settings) -> AsyncEngine:
    return create_engine(settings.database_url(), pool_size=settings.database.pool_size,
                         sqlite_synchronous=settings.database.sqlite_synchronous)


def _load_or_create_ca(settings: Settings, now: datetime, report: list[str]) -> CertificateAuthority:
    directory = settings.ca_dir()
    passphrase = load_or_create_passphrase(settings.ca.passphrase_env, settings.passphrase_path())
    base = settings.server.public_base_url()
    ca, created = load_or_create_ca(
        directory, name=settings.ca.name, subject=settings.ca.subject, ra_subject=settings.ca.ra_subject,
        key_size=settings.ca.key_size, validity_days=settings.ca.validity_days,
        ra_validity_days=settings.ca.ra_validity_days, passphrase=passphrase, base_url=base, now=now)
    if not created:
        return ca
    report.append(f"created CA {ca.name!r} ({ca.cert.subject.rfc4514_string()}) in {directory}")
    report.append(f"  CA certificate: {directory / 'ca.crt'}  SHA-256 {ca.fingerprint_sha256}")
    report.append(f"  keys encrypted with the passphrase in ${settings.ca.passphrase_env} or "
                  f"{settings.passphrase_path()}")
    return ca


async def initialise(settings: Settings, *, clock: Clock = utcnow) -> list[str]:
    """First start: data directory, database schema, CA and RA, a `default` static profile. Idempotent."""
    report: list[str] = []
    now = clock()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = _engine(settings)
    try:
        await upgrade(engine)
        ca = _load_or_create_ca(settings, now, report)
        async with writer(engine).begin() as conn:
            await inventory.register_ca(conn, ca, now)
        store = ProfileStore(engine)
        if not await store.list():
            secret = new_static_secret()
            await store.create("default", ca=ca.name, challenge_kind="static", static_secret=secret, now=now,
                               settings=ProfileSettings(device_trust=False))
            path = settings.data_dir / "default-challenge.txt"
            write_private_file(path, secret.encode() + b"\n")
            report.append(f"created static SCEP profile 'default': {settings.server.public_base_url()}/scep/default")
            report.append(f"  its challenge password is in {path}")
    finally:
        await engine.dispose()
    if report:
        report.insert(0, f"database: {settings.database_url()}")
    return report


def load_cas(settings: Settings) -> dict[str, CertificateAuthority]:
    directory = settings.ca_dir()
    if not (directory / "ca.crt").exists():
        raise FileNotFoundError(f"no CA in {directory}: run `scep-server init` first")
    passphrase = load_or_create_passphrase(settings.ca.passphrase_env, settings.passphrase_path())
    ca = load_ca(directory, name=settings.ca.name, passphrase=passphrase, base_url=settings.server.public_base_url())
    return {ca.name: ca}


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, *, clock: Clock = utcnow) -> AsyncIterator[Runtime]:
    """Build the services over one engine; dispose of it on exit."""
    engine = _engine(settings)
    try:
        cas = load_cas(settings)
        profiles = ProfileStore(engine)
        revocation = RevocationService(engine, clock=clock)
        runtime = Runtime(settings=settings, engine=engine, clock=clock, cas=cas, profiles=profiles,
                          tokens=TokenStore(engine), revocation=revocation,
                          scep=ScepService(engine=engine, cas=cas, profiles=profiles, clock=clock,
                                           on_status_change=revocation.notify_changed,
                                           threads=settings.server.scep_threads))
        started = []
        try:
            for feature in features.load():
                await feature.start(runtime)
                started.append(feature)
            yield runtime
        finally:
            for feature in reversed(started):
                await feature.stop(runtime)
            await runtime.scep.close()
    finally:
        await engine.dispose()
