"""Customers' own CAs ("bring your own CA"): registration, and CRL checking of their certificates.

Certificates of an external CA are judged with :class:`crl.check.CrlChecker`: a CRL Distribution
Point is required on the CA and on the certificate, CRLs are fetched in the background, and a
certificate not active on its CRL makes the device unmanaged. When no fresh CRL is available the
CA's policy decides (fail-closed: not managed; fail-open: managed unless the last good CRL lists it).
"""
from __future__ import annotations

import hashlib
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable

import sqlalchemy as sa
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from crl import checkstore
from crl.check import CertificateRefused, CheckResult, CrlChecker
from crl.checkstore import CheckerStateStore
from crl.config import CheckerSettings, CrlSettings, Policy

from trustkit import paging
from trustkit.clock import aware
from trustkit.db import writer
from trustkit.paging import Page, PageRequest
from ..ca.rollover import generation, successor_name
from ..store.events import record_event
from ..store.tables import cas
from .errors import ExternalCaError, ExternalCaNotFound, InvalidInput
from .tables import external_cas

log = structlog.get_logger("binding.external")


def _ours(name: str, our_names: Iterable[str]) -> str | None:
    """The CA of ours whose name `name` is, or would be after rollovers (``default``, ``default-g2``,
    ``default-g3`` ...), or None. A binding names its certificate's CA by name: an external CA under such a name
    could issue certificates with the serials of ours."""
    base = generation(name)[0]
    return next((ours for ours in our_names if ours == name or generation(ours)[0] == base), None)


@dataclass(frozen=True)
class ExternalCa:
    name: str
    cert: x509.Certificate
    fingerprint_sha256: str
    policy: Policy
    created_at: datetime

    def to_json(self) -> dict:
        return {"name": self.name, "subject": self.cert.subject.rfc4514_string(),
                "fingerprint_sha256": self.fingerprint_sha256, "policy": self.policy.value,
                "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class CheckerOutcome:
    """The CRL checker's latest word on one registered CA (this process's checker), for the admin pages.

    ``state``: ``not_loaded`` (the checker does not hold the CA: not reloaded yet, or refused), ``no_crl_url``
    (no certificate of the CA seen yet, so no CRL URL to watch), ``pending`` (a URL never fetched yet),
    ``failing`` (a URL's last fetch failed), ``stale`` (no fresh CRL on a URL) or ``fresh``."""

    state: str
    urls: int = 0
    last_success_at: datetime | None = None
    last_failure: str | None = None
    last_failure_detail: str | None = None
    last_failure_at: datetime | None = None
    crl_number: int | None = None


OUTCOME_STATES = ("fresh", "stale", "failing", "pending", "no_crl_url", "not_loaded")


def _outcome(sources: list) -> CheckerOutcome:
    """One CA's outcome from its sources' status (crl.check.SourceStatus): the worst of them."""
    if not sources:
        return CheckerOutcome("no_crl_url")
    if any(s.last_failure is not None for s in sources):  # a success clears a source's failure
        state = "failing"
    elif any(s.last_success_at is None and s.crl_number is None for s in sources):
        state = "pending"
    elif not all(s.fresh for s in sources):
        state = "stale"
    else:
        state = "fresh"
    successes = [s.last_success_at for s in sources if s.last_success_at is not None]
    failed = max((s for s in sources if s.last_failure_at is not None), key=lambda s: s.last_failure_at,
                 default=None)
    numbers = [s.crl_number for s in sources if s.crl_number is not None]
    return CheckerOutcome(state, len(sources), max(successes, default=None),
                          failed.last_failure.value if failed and failed.last_failure else None,
                          failed.last_failure_detail if failed else None, failed.last_failure_at if failed else None,
                          max(numbers, default=None))


EXTERNAL_CA_KEY = (str,)
"""The kinds of an external CA list's cursor: the name."""


def _external_ca(row) -> ExternalCa:
    return ExternalCa(row.name, x509.load_der_x509_certificate(row.cert_der), row.fingerprint_sha256,
                      Policy(row.policy), aware(row.created_at))


def load_certificate(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise InvalidInput(f"not an X.509 certificate (PEM or DER): {exc}") from None


def checker_settings(crl_section) -> CheckerSettings:
    """The `[crl.checker]` settings (owned by the crl package), defaults when absent or unreadable."""
    if isinstance(getattr(crl_section, "checker", None), CheckerSettings):
        return crl_section.checker
    try:
        return CrlSettings.model_validate(crl_section or {}).checker
    except Exception:  # noqa: BLE001 - a bad crl section is reported by the crl feature itself
        return CheckerSettings.model_validate((crl_section or {}).get("checker") or {})


class ExternalCas:
    """The registered external CAs (in the database) and this process's CRL checker for them."""

    def __init__(self, engine: AsyncEngine, checker: CrlChecker, *, reload_seconds: float = 10.0,
                 our_names: Callable[[], Iterable[str]] | None = None):
        self.engine = engine
        # the names of this deployment's own CAs known to the process (its runtime's, its CA directory's): with those
        # the database records, no external CA may be registered under one of them (`_ours`)
        self.our_names = our_names or (lambda: ())
        self.checker = checker
        self.reload_seconds = reload_seconds
        self._known: dict[str, str] = {}  # name -> fingerprint of what the checker holds
        self._loaded_at = 0.0
        # moves on whenever a CA is added, replaced or removed here: an issuer established before is looked up again
        self.generation = 0
        self.subjects: set[bytes] = set()
        self.state = CheckerStateStore(engine)
        self._forgotten: "dict[str, int] | None" = None  # CA name -> times its CRL records were forgotten

    @staticmethod
    def validate(cert: x509.Certificate, name: str) -> None:
        """Refuse what the checker would refuse (not a CA, no cRLSign, no CDP) before it is stored."""
        probe = CrlChecker(settings=CheckerSettings())
        try:
            probe.add_ca(cert, name=name)
        except CertificateRefused as exc:
            raise ExternalCaError(str(exc)) from None

    async def add(self, name: str, cert: x509.Certificate, *, policy: Policy, actor: str, now: datetime) -> ExternalCa:
        if not name or len(name) > 64 or not name.isprintable() or not unicodedata.is_normalized("NFC", name):
            # no controls, invisible or direction-changing characters, one spelling of each letter: two names that
            # look alike are one name, and every name can be typed into the console's forms
            raise InvalidInput("external CA name: 1-64 printable characters, in Unicode NFC form")
        self.validate(cert, name)
        der = cert.public_bytes(serialization.Encoding.DER)
        fp = hashlib.sha256(der).hexdigest()
        async with writer(self.engine).begin() as conn:
            ours = _ours(name, [*self.our_names(), *(await conn.execute(
                sa.select(cas.c.name).where(cas.c.kind == "issuing"))).scalars()])
            if ours is not None:
                raise ExternalCaError(
                    f"{name!r} is a name of this server's CA {ours!r} or of one of its rollover successors "
                    f"({successor_name(ours)!r}, ...): choose another name for the external CA")
            clash = (await conn.execute(sa.select(external_cas.c.name).where(
                sa.or_(external_cas.c.name == name, external_cas.c.fingerprint_sha256 == fp)))).first()
            if clash is not None:
                raise ExternalCaError(f"an external CA {clash.name!r} with this name or certificate exists")
            try:
                await conn.execute(external_cas.insert().values(name=name, cert_der=der, fingerprint_sha256=fp,
                                                                policy=policy.value, created_at=now, created_by=actor))
            except IntegrityError:  # added meanwhile (PostgreSQL: both transactions saw none)
                raise ExternalCaError("an external CA with this name or certificate exists") from None
            await record_event(conn, at=now, kind="pki.ca.add", subject=name, actor=actor,
                               data={"subject": cert.subject.rfc4514_string(), "fingerprint_sha256": fp,
                                     "policy": policy.value})
        self._loaded_at = 0.0
        return ExternalCa(name, cert, fp, policy, now)

    async def remove(self, name: str, *, actor: str, now: datetime) -> ExternalCa:
        """Unregister a CA (a ``pki.ca.remove`` event): its certificates are of an unknown issuer from the next
        reload on (this process: now), so their devices are no longer managed."""
        async with writer(self.engine).begin() as conn:
            row = (await conn.execute(sa.select(external_cas).where(external_cas.c.name == name))).first()
            if row is None:
                raise ExternalCaNotFound(f"no external CA {name!r}")
            ca = _external_ca(row)
            await conn.execute(external_cas.delete().where(external_cas.c.name == name))
            await checkstore.drop(conn, name)  # added again, it starts afresh
            await record_event(conn, at=now, kind="pki.ca.remove", subject=name, actor=actor,
                               data={"subject": ca.cert.subject.rfc4514_string(),
                                     "fingerprint_sha256": ca.fingerprint_sha256, "policy": ca.policy.value})
        self._loaded_at = 0.0
        return ca

    async def forget_crls(self, name: str, *, actor: str, now: datetime) -> dict:
        """Forget the last good CRLs recorded for CA `name` (a ``pki.ca.forget_crls`` event): every process takes
        the next valid CRL of each of its URLs whatever its CRL Number, thisUpdate or scope (within
        ``binding.external_ca_reload_seconds``; this process at its next reload). The way out when the CA went
        back (restored from a backup: its CRLs are refused as `rollback`) or narrowed a URL's scope on purpose
        (refused as `scope_mismatch`). Returns {"name", "forgotten"}: how many URL records were deleted."""
        async with writer(self.engine).begin() as conn:
            row = (await conn.execute(sa.select(external_cas.c.name).where(external_cas.c.name == name))).first()
            if row is None:
                raise ExternalCaNotFound(f"no external CA {name!r}")
            deleted = await checkstore.forget(conn, name, now=now, actor=actor)
            await record_event(conn, at=now, kind="pki.ca.forget_crls", subject=name, actor=actor,
                               data={"records": deleted})
        self._loaded_at = 0.0
        return {"name": name, "forgotten": deleted}

    async def list(self) -> list[ExternalCa]:
        """Every registered CA (the checker's reload: a deployment registers a handful)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(external_cas).order_by(external_cas.c.name))).all()
        return [_external_ca(r) for r in rows]

    async def page(self, page: PageRequest) -> Page[ExternalCa]:
        """One page of the registered CAs by name (the primary key; docs/api.md "Pagination")."""
        key = [external_cas.c.name]
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(external_cas).where(paging.after(key, page.after))
                                       .order_by(*paging.order(key)).limit(page.limit + 1))).all()
        return paging.take([_external_ca(r) for r in rows], page.limit, key=lambda c: (c.name,))

    async def reload(self) -> None:
        """Bring the checker in line with the database (CAs added or removed by other processes)."""
        self._loaded_at = time.monotonic()
        cas = await self.list()
        seen = set()
        for ca in cas:
            seen.add(ca.name)
            if self._known.get(ca.name) == ca.fingerprint_sha256 + ca.policy.value:
                continue
            try:
                self.checker.add_ca(ca.cert, name=ca.name, policy=ca.policy)
            except CertificateRefused as exc:  # stored before a stricter rule: skip, loudly
                log.warning("binding.external_ca.refused", ca=ca.name, error=str(exc))
                continue
            self._known[ca.name] = ca.fingerprint_sha256 + ca.policy.value
            self.generation += 1
            log.info("binding.external_ca.loaded", ca=ca.name, policy=ca.policy.value)
        for name in set(self._known) - seen:
            self.checker.remove_ca(name)
            del self._known[name]
            self.generation += 1
        self.subjects = {ca.cert.subject.public_bytes() for ca in cas}
        forgotten = await self.state.generations()
        if self._forgotten is not None:  # at the first load the checker holds no CRL yet
            for name in seen:
                if forgotten.get(name, 0) != self._forgotten.get(name, 0) and self.checker.forget(name):
                    log.info("binding.external_ca.crls_forgotten", ca=name, generation=forgotten.get(name, 0))
        self._forgotten = forgotten

    async def maybe_reload(self) -> bool:
        """On an unknown issuer: re-read the registrations, at most once per second."""
        if time.monotonic() - self._loaded_at < 1.0:
            return False
        await self.reload()
        return True

    def outcomes(self) -> dict[str, CheckerOutcome]:
        """The checker's latest outcome per CA it holds (by name); a registered CA missing here is not loaded."""
        by_ca: dict[str, list] = {name: [] for name in self._known}
        for status in self.checker.status():
            if status.ca in by_ca:
                by_ca[status.ca].append(status)
        return {name: _outcome(sources) for name, sources in by_ca.items()}

    def check(self, cert: x509.Certificate) -> CheckResult:
        return self.checker.check(cert)

    def check_serial(self, ca: str, serial: int, urls: list[str]) -> CheckResult:
        """The status of a device certificate (never a CA certificate: those do not attest)."""
        return self.checker.check_serial(ca, serial, urls=urls)
