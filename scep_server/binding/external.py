"""Customers' own CAs ("bring your own CA"): registration, and CRL checking of their certificates.

Certificates of an external CA are judged with :class:`crl.check.CrlChecker`: a CRL Distribution
Point is required on the CA and on the certificate, CRLs are fetched in the background, and a
certificate not active on its CRL makes the device unmanaged. When no fresh CRL is available the
CA's policy decides (fail-closed: not managed; fail-open: managed unless the last good CRL lists it).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import AsyncEngine

from crl.check import CertificateRefused, CheckResult, CrlChecker
from crl.config import CheckerSettings, CrlSettings, Policy

from trustkit import paging
from trustkit.clock import aware
from trustkit.db import writer
from trustkit.paging import Page, PageRequest
from ..store.events import record_event
from .errors import ExternalCaError, InvalidInput
from .tables import external_cas

log = structlog.get_logger("binding.external")


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
    except ValueError as exc:
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

    def __init__(self, engine: AsyncEngine, checker: CrlChecker, *, reload_seconds: float = 10.0):
        self.engine = engine
        self.checker = checker
        self.reload_seconds = reload_seconds
        self._known: dict[str, str] = {}  # name -> fingerprint of what the checker holds
        self._loaded_at = 0.0
        self.subjects: set[bytes] = set()

    @staticmethod
    def validate(cert: x509.Certificate, name: str) -> None:
        """Refuse what the checker would refuse (not a CA, no cRLSign, no CDP) before it is stored."""
        probe = CrlChecker(settings=CheckerSettings())
        try:
            probe.add_ca(cert, name=name)
        except CertificateRefused as exc:
            raise ExternalCaError(str(exc)) from None

    async def add(self, name: str, cert: x509.Certificate, *, policy: Policy, actor: str, now: datetime) -> ExternalCa:
        if not name or len(name) > 64:
            raise InvalidInput("external CA name: 1-64 characters")
        self.validate(cert, name)
        der = cert.public_bytes(serialization.Encoding.DER)
        fp = hashlib.sha256(der).hexdigest()
        async with writer(self.engine).begin() as conn:
            clash = (await conn.execute(sa.select(external_cas.c.name).where(
                sa.or_(external_cas.c.name == name, external_cas.c.fingerprint_sha256 == fp)))).first()
            if clash is not None:
                raise ExternalCaError(f"an external CA {clash.name!r} with this name or certificate exists")
            await conn.execute(external_cas.insert().values(name=name, cert_der=der, fingerprint_sha256=fp,
                                                            policy=policy.value, created_at=now, created_by=actor))
            await record_event(conn, at=now, kind="pki.ca.add", subject=name, actor=actor,
                               data={"subject": cert.subject.rfc4514_string(), "fingerprint_sha256": fp,
                                     "policy": policy.value})
        self._loaded_at = 0.0
        return ExternalCa(name, cert, fp, policy, now)

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
            log.info("binding.external_ca.loaded", ca=ca.name, policy=ca.policy.value)
        for name in set(self._known) - seen:
            self.checker.remove_ca(name)
            del self._known[name]
        self.subjects = {ca.cert.subject.public_bytes() for ca in cas}

    async def maybe_reload(self) -> bool:
        """On an unknown issuer: re-read the registrations, at most once per second."""
        if time.monotonic() - self._loaded_at < 1.0:
            return False
        await self.reload()
        return True

    def check(self, cert: x509.Certificate) -> CheckResult:
        return self.checker.check(cert)

    def check_serial(self, ca: str, serial: int, urls: list[str]) -> CheckResult:
        return self.checker.check_serial(ca, serial, urls=urls)
