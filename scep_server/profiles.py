"""SCEP profiles: one endpoint each (/scep/{profile}), with a challenge kind and a certificate template."""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .ca.policy import CertificateTemplate, IssuancePolicy
from trustkit.db import writer
from .store.tables import profiles

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: `$` also matches before a final newline
ChallengeKind = Literal["static", "dynamic", "delegated"]


class ProfileError(Exception):
    """A profile operation failed (unknown name, duplicate, invalid settings)."""


class UnknownProfile(ProfileError):
    pass


class ProfileSettings(BaseModel):
    """Stored as JSON with each profile."""

    template: CertificateTemplate = CertificateTemplate()
    # RenewalReq (or PKCSReq) signed by a valid certificate this CA issued, without a challenge
    allow_renewal: bool = True
    # accept renewal only within this many days of the old certificate's expiry (None: the last third of its
    # validity)
    renewal_window_days: int | None = Field(None, ge=1)
    # profiles (besides this one) at which a certificate issued here may be renewed (planned migrations)
    renewal_to: list[str] = []
    # the renewed certificate's SANs: a subset of the signer's ("subset") or exactly the signer's ("equal")
    renewal_sans: Literal["subset", "equal"] = "subset"
    # delegated profiles ask the MDM (Intune validateRequest, the webhook) about renewals too
    renewal_revalidate: bool = True
    # with require_approval, renewals wait for an administrator's approval too
    renewal_requires_approval: bool = True
    # revoke the replaced certificate (reason superseded) when its renewal is issued
    supersede_on_renewal: bool = True
    # enrolments wait for an administrator's approval (SCEP PENDING, then CertPoll)
    require_approval: bool = False
    # legacy single-DES requests are decrypted (micromdm scepclient sends them), each use logged; replies never
    # use DES. Off on new profiles; settings stored without the field (before it defaulted off) keep it on.
    allow_single_des: bool = False
    # a self-signed request must be signed with the CSR's own key (RFC 8894 §2.3 SHOULD); renewals signed by
    # one of our certificates are not affected. Off by default: some clients sign with a separate key.
    require_signer_csr_key: bool = False
    # certificates of this profile may attest device management (bind to a device); off for the `default`
    # static profile created on first start
    device_trust: bool = True
    # settings of the dynamic or delegated challenge (owned by scep_server.challenge)
    challenge: dict[str, Any] = {}


@dataclass(frozen=True)
class Profile:
    name: str
    ca: str
    challenge_kind: str
    static_secret_sha256: str | None
    settings: ProfileSettings

    @functools.cached_property
    def fingerprint(self) -> str:
        """Changes whenever what decides an answer changes (name, challenge, settings): a cache key."""
        return hashlib.sha256(json.dumps([self.name, self.ca, self.challenge_kind, self.static_secret_sha256,
                                          self.settings.model_dump_json()]).encode()).hexdigest()

    @property
    def policy(self) -> IssuancePolicy:
        return IssuancePolicy(self.settings.template)

    def check_static_secret(self, challenge: str | None) -> bool:
        """Constant-time comparison of a static challenge (stored as SHA-256)."""
        if not self.static_secret_sha256:
            return False
        given = hashlib.sha256((challenge or "").encode()).hexdigest()
        return hmac.compare_digest(given, self.static_secret_sha256) and bool(challenge)


def new_static_secret() -> str:
    return secrets.token_urlsafe(24)


def _row_to_profile(row) -> Profile:
    m = row._mapping
    try:
        settings = ProfileSettings.model_validate_json(m["settings"] or "{}")
        if "allow_single_des" not in settings.model_fields_set:  # stored when single DES was on by default
            settings = settings.model_copy(update={"allow_single_des": True})
    except ValidationError as exc:
        raise ProfileError(f"profile {m['name']}: stored settings are invalid: {exc}") from None
    return Profile(name=m["name"], ca=m["ca"], challenge_kind=m["challenge_kind"],
                   static_secret_sha256=m["static_secret_sha256"], settings=settings)


class ProfileStore:
    """Profiles in the database, cached briefly in memory for the enrolment hot path."""

    def __init__(self, engine: AsyncEngine, *, cache_seconds: float = 5.0):
        self._engine = engine
        self._cache: dict[str, tuple[float, Profile]] = {}
        self._ttl = cache_seconds

    async def get(self, name: str) -> Profile:
        hit = self._cache.get(name)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(profiles).where(profiles.c.name == name))).first()
        if row is None:
            raise UnknownProfile(f"no SCEP profile named {name!r}")
        profile = _row_to_profile(row)
        self._cache[name] = (time.monotonic() + self._ttl, profile)
        return profile

    async def list(self) -> list[Profile]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(profiles).order_by(profiles.c.name))).all()
        return [_row_to_profile(r) for r in rows]

    async def create(self, name: str, *, ca: str, challenge_kind: ChallengeKind, now: datetime,
                     static_secret: str | None = None, settings: ProfileSettings | None = None) -> Profile:
        if not NAME_RE.fullmatch(name):
            raise ProfileError(f"invalid profile name {name!r}: letters, digits, '_', '.', '-' (max 64)")
        if challenge_kind not in ("static", "dynamic", "delegated"):
            raise ProfileError(f"unknown challenge kind {challenge_kind!r}: static, dynamic or delegated")
        if challenge_kind == "static" and not static_secret:
            raise ProfileError("a static profile needs a secret")
        settings = settings or ProfileSettings()
        if challenge_kind == "delegated" and settings.require_approval:
            raise ProfileError("delegated (Intune) profiles cannot require approval: Intune has no pending state")
        digest = hashlib.sha256(static_secret.encode()).hexdigest() if static_secret else None
        try:
            async with writer(self._engine).begin() as conn:
                await conn.execute(profiles.insert().values(
                    name=name, ca=ca, challenge_kind=challenge_kind, static_secret_sha256=digest,
                    settings=settings.model_dump_json(), created_at=now, updated_at=now))
        except IntegrityError:
            raise ProfileError(f"profile {name!r} already exists (or CA {ca!r} is unknown)") from None
        return Profile(name, ca, challenge_kind, digest, settings)

    async def update(self, name: str, *, now: datetime, static_secret: str | None = None,
                     settings: ProfileSettings | None = None) -> Profile:
        values: dict[str, Any] = {"updated_at": now}
        if static_secret is not None:
            values["static_secret_sha256"] = hashlib.sha256(static_secret.encode()).hexdigest()
        if settings is not None:
            values["settings"] = settings.model_dump_json()
        async with writer(self._engine).begin() as conn:
            res = await conn.execute(profiles.update().where(profiles.c.name == name).values(**values))
        if res.rowcount != 1:
            raise UnknownProfile(f"no SCEP profile named {name!r}")
        self._cache.pop(name, None)
        return await self.get(name)


def describe(profile: Profile) -> dict[str, Any]:
    """A JSON-ready view of a profile (no secrets)."""
    return {"name": profile.name, "ca": profile.ca, "challenge": profile.challenge_kind,
            "settings": json.loads(profile.settings.model_dump_json())}
