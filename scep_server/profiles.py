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
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

import structlog

from .ca.policy import CertificateTemplate, IssuancePolicy
from trustkit.clock import Clock, aware, utcnow
from trustkit.db import writer
from trustkit.paging import Page, PageRequest, after, take

from .store.events import record_event
from .store.tables import certificates, profiles, scep_transactions

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: `$` also matches before a final newline
ChallengeKind = Literal["static", "dynamic", "delegated"]


class ProfileError(Exception):
    """A profile operation failed (unknown name, duplicate, invalid settings)."""


class UnknownProfile(ProfileError):
    pass


class ProfileExists(ProfileError):
    """A profile of that name exists already."""


class NotStatic(ProfileError):
    """The operation needs a static profile (rotating its secret)."""


class ProfileInUse(ProfileError):
    """Deleting a profile whose certificates are still valid or on hold needs ``force``."""

    def __init__(self, message: str, certificates: int):
        super().__init__(message)
        self.certificates = certificates


class InvalidSettings(ProfileError):
    """Profile settings that do not validate; ``field`` names the first wrong one (``settings.template...``)."""

    def __init__(self, message: str, field: str, errors: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.field = field
        self.errors = errors or [{"field": field, "message": message}]


STATIC_NAMES_NO_DEVICE = ("a static profile cannot name devices (settings.device_id): its secret is shared by every "
                          "device, so any of them could claim another's id; use a dynamic or delegated challenge")


class DeviceIdSource(BaseModel):
    """Where a request names its device: a subject attribute, or a URI SAN after a prefix, filled in by the MDM's
    profile variables (Jamf `$UDID`, `$SERIALNUMBER`; Intune `{{DeviceId}}`, `{{AAD_Device_ID}}`; Workspace ONE
    `{DeviceUid}`). The value must match `pattern` (RE2, whole value) and be a device id (docs/mdm.md)."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["subject", "san_uri"] = "subject"
    attribute: Literal["CN", "serialNumber", "UID", "OU"] = "CN"  # for source = subject
    uri_prefix: str = Field("", max_length=128)  # for source = san_uri, e.g. "urn:device:"
    pattern: str = Field(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", min_length=1, max_length=512)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        from .ca.policy import compile_pattern

        try:
            compile_pattern(value)
        except Exception as exc:  # noqa: BLE001 - re2.error; the message names the pattern
            raise ValueError(f"invalid pattern {value!r}: {exc}") from None
        return value


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
    # where an enrolment names its device (None: it does not); the certificate is issued for that device, which is
    # created (active) if new. Dynamic and delegated profiles only: a static secret is shared by every device.
    device_id: DeviceIdSource | None = None
    # certificates issued carry the OCSP responder's URL in their AIA extension (while [ocsp] enabled); on for
    # new profiles, off for settings stored before the field existed (docs/ocsp.md "The OCSP URL in certificates")
    ocsp_aia: bool = True
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


_log = structlog.get_logger("profiles")
MAX_GRACE = timedelta(days=30)
"""The longest a rotated static secret may keep working."""


def new_static_secret() -> str:
    return secrets.token_urlsafe(24)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge key by key, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _message(error: dict) -> str:
    """A pydantic error's message, with the refused value when it is a short scalar."""
    given = error.get("input")
    if isinstance(given, (str, int, float, bool)):
        return f"{error['msg']} (given {repr(given)[:80]})"
    return error["msg"]


def _field(loc: tuple) -> str:
    return ".".join(["settings", *(str(part) for part in loc)])


def parse_settings(raw: Any, *, kind: str, base: ProfileSettings | None = None,
                   allow_challenge: bool = True) -> ProfileSettings:
    """Profile settings from JSON data (the API's ``settings``, the command line's ``--settings-json``): the
    whole settings, or with `base` a merge patch (RFC 7396) onto them. Keys the model does not know, values
    it refuses and challenge settings that do not fit the challenge kind are an InvalidSettings naming the
    field. Without `allow_challenge` (the HTTP API) ``challenge`` may not be given: its settings name files
    and environment variables of the server whose contents go to the hosts they name, so only someone on
    the server host sets them (``scep-server challenge configure``)."""
    if not isinstance(raw, dict):
        raise InvalidSettings("settings: a JSON object", "settings")
    unknown = sorted(set(raw) - set(ProfileSettings.model_fields))
    if unknown:
        raise InvalidSettings(f"settings.{unknown[0]}: not a profile setting", f"settings.{unknown[0]}")
    if not allow_challenge and "challenge" in raw:
        raise InvalidSettings("settings.challenge: set on the server host with `scep-server challenge configure`",
                              "settings.challenge")
    data = merge_patch(json.loads(base.model_dump_json()), raw) if base is not None else raw
    try:
        settings = ProfileSettings.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": _field(e["loc"]), "message": _message(e)} for e in exc.errors(include_url=False)]
        first = errors[0] if errors else {"field": "settings", "message": "invalid"}
        raise InvalidSettings(f"{first['field']}: {first['message']}", first["field"], errors) from None
    _check_kind(kind, settings)
    return settings


def _check_kind(kind: str, settings: ProfileSettings) -> None:
    """What a challenge kind asks of the settings."""
    if kind == "delegated" and settings.require_approval:
        raise InvalidSettings("settings.require_approval: delegated (Intune) profiles cannot require approval: "
                              "Intune has no pending state", "settings.require_approval")
    if kind == "static" and settings.device_id is not None:
        raise InvalidSettings(STATIC_NAMES_NO_DEVICE, "settings.device_id")
    if settings.challenge:
        from .challenge.config import ChallengeConfigError, validate_for

        if kind == "static":
            raise InvalidSettings("settings.challenge: a static profile has no challenge settings",
                                  "settings.challenge")
        try:
            validate_for(kind, settings.challenge)
        except ChallengeConfigError as exc:
            raise InvalidSettings(f"settings.challenge: {exc}", "settings.challenge") from None


def _row_to_profile(row) -> Profile:
    m = row._mapping
    try:
        settings = ProfileSettings.model_validate_json(m["settings"] or "{}")
        if "allow_single_des" not in settings.model_fields_set:  # stored when single DES was on by default
            settings = settings.model_copy(update={"allow_single_des": True})
        if "ocsp_aia" not in settings.model_fields_set:  # stored before certificates named an OCSP responder
            settings = settings.model_copy(update={"ocsp_aia": False})
    except ValidationError as exc:
        raise ProfileError(f"profile {m['name']}: stored settings are invalid: {exc}") from None
    return Profile(name=m["name"], ca=m["ca"], challenge_kind=m["challenge_kind"],
                   static_secret_sha256=m["static_secret_sha256"], settings=settings)


class ProfileStore:
    """Profiles in the database, cached briefly in memory for the enrolment hot path."""

    def __init__(self, engine: AsyncEngine, *, cache_seconds: float = 5.0, clock: Clock = utcnow):
        self._engine = engine
        self._clock = clock
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

    async def page(self, request: PageRequest) -> Page[Profile]:
        """One page of the profiles, by name."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(profiles).where(after((profiles.c.name,), request.after))
                                       .order_by(profiles.c.name).limit(request.limit + 1))).all()
        return take([_row_to_profile(r) for r in rows], request.limit, lambda p: (p.name,))

    async def static_secret_ok(self, name: str, challenge: str | None) -> bool:
        """Whether `challenge` is the static secret of profile `name` as stored now (read past the cache, so
        that a rotated secret or a deleted profile is refused at once by every process)."""
        if not challenge:
            return False
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(
                profiles.c.static_secret_sha256, profiles.c.previous_secret_sha256, profiles.c.previous_secret_until
            ).where(profiles.c.name == name, profiles.c.challenge_kind == "static"))).first()
        if row is None:
            return False
        given = hashlib.sha256(challenge.encode()).hexdigest()
        current = bool(row.static_secret_sha256) and hmac.compare_digest(given, row.static_secret_sha256)
        previous = bool(row.previous_secret_sha256) and hmac.compare_digest(given, row.previous_secret_sha256)
        until = aware(row.previous_secret_until)
        if not current and previous and until is not None and self._clock() < until:
            _log.warning("profile.previous_secret_used", profile=name, until=until.isoformat())
            return True
        return current

    async def create(self, name: str, *, ca: str, challenge_kind: ChallengeKind, now: datetime,
                     static_secret: str | None = None, settings: ProfileSettings | None = None,
                     actor: str | None = None) -> Profile:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ProfileError(f"invalid profile name {str(name)[:80]!r}: letters, digits, '_', '.', '-' (max 64)")
        if challenge_kind not in ("static", "dynamic", "delegated"):
            raise ProfileError(f"unknown challenge kind {challenge_kind!r}: static, dynamic or delegated")
        if challenge_kind == "static" and not static_secret:
            raise ProfileError("a static profile needs a secret")
        settings = settings or ProfileSettings()
        if challenge_kind == "delegated" and settings.require_approval:
            raise ProfileError("delegated (Intune) profiles cannot require approval: Intune has no pending state")
        if challenge_kind == "static" and settings.device_id is not None:
            raise ProfileError(STATIC_NAMES_NO_DEVICE)
        digest = hashlib.sha256(static_secret.encode()).hexdigest() if static_secret else None
        try:
            async with writer(self._engine).begin() as conn:
                if (await conn.execute(sa.select(profiles.c.name).where(profiles.c.name == name))).first():
                    raise ProfileExists(f"profile {name!r} already exists")
                await conn.execute(profiles.insert().values(
                    name=name, ca=ca, challenge_kind=challenge_kind, static_secret_sha256=digest,
                    settings=settings.model_dump_json(), created_at=now, updated_at=now))
                if actor is not None:
                    await record_event(conn, at=now, kind="pki.profile.create", subject=name, actor=actor,
                                       data={"challenge": challenge_kind})
        except IntegrityError:
            raise ProfileExists(f"profile {name!r} already exists (or CA {ca!r} is unknown)") from None
        self._cache.pop(name, None)
        return Profile(name, ca, challenge_kind, digest, settings)

    async def update(self, name: str, *, now: datetime, static_secret: str | None = None,
                     settings: ProfileSettings | None = None, actor: str | None = None) -> Profile:
        values: dict[str, Any] = {"updated_at": now}
        if settings is not None and settings.device_id is not None and (await self.get(name)).challenge_kind == \
                "static":
            raise ProfileError(STATIC_NAMES_NO_DEVICE)
        if static_secret is not None:
            values["static_secret_sha256"] = hashlib.sha256(static_secret.encode()).hexdigest()
        if settings is not None:
            values["settings"] = settings.model_dump_json()
        async with writer(self._engine).begin() as conn:
            res = await conn.execute(profiles.update().where(profiles.c.name == name).values(**values))
            if res.rowcount == 1 and actor is not None:
                await record_event(conn, at=now, kind="pki.profile.update", subject=name, actor=actor,
                                   data={"settings": settings is not None, "secret": static_secret is not None})
        if res.rowcount != 1:
            raise UnknownProfile(f"no SCEP profile named {name!r}")
        self._cache.pop(name, None)
        return await self.get(name)

    async def update_settings(self, name: str, patch: Any, *, now: datetime, actor: str | None = None,
                              allow_challenge: bool = True) -> Profile:
        """Apply a merge patch (RFC 7396) to a profile's settings, validated as :func:`parse_settings` does."""
        self._cache.pop(name, None)
        current = await self.get(name)
        settings = parse_settings(patch, kind=current.challenge_kind, base=current.settings,
                                  allow_challenge=allow_challenge)
        return await self.update(name, settings=settings, now=now, actor=actor)

    async def rotate_secret(self, name: str, *, now: datetime, actor: str | None = None,
                            grace: timedelta | None = None) -> str:
        """A new secret for a static profile (returned once); the old one is refused from the commit on, by every
        process (:meth:`static_secret_ok` reads past the cache), or with ``grace`` once that period is over
        (each use meanwhile is logged)."""
        secret = new_static_secret()
        if grace is not None and not timedelta(0) < grace <= MAX_GRACE:
            raise ProfileError(f"grace: more than 0 and at most {MAX_GRACE.days} days")
        async with writer(self._engine).begin() as conn:
            old = (await conn.execute(sa.select(profiles.c.static_secret_sha256).where(
                profiles.c.name == name, profiles.c.challenge_kind == "static"))).scalar()
            res = await conn.execute(profiles.update().where(
                profiles.c.name == name, profiles.c.challenge_kind == "static").values(
                static_secret_sha256=hashlib.sha256(secret.encode()).hexdigest(), updated_at=now,
                previous_secret_sha256=old if grace is not None else None,
                previous_secret_until=now + grace if grace is not None else None))
            if res.rowcount != 1:
                kind = (await conn.execute(sa.select(profiles.c.challenge_kind).where(
                    profiles.c.name == name))).scalar()
                if kind is None:
                    raise UnknownProfile(f"no SCEP profile named {name!r}")
                raise NotStatic(f"profile {name!r} has a {kind} challenge: only a static profile has a secret")
            await record_event(conn, at=now, kind="pki.profile.rotate_secret", subject=name, actor=actor,
                               data={"previous_until": (now + grace).isoformat()} if grace is not None else None)
        self._cache.pop(name, None)
        return secret

    async def delete(self, name: str, *, now: datetime, force: bool = False, actor: str | None = None) -> dict[str, int]:
        """Delete a profile (docs/api.md "Profiles"). Refused (ProfileInUse) while certificates it issued are
        valid or on hold and unexpired, unless `force`. Its certificates stay in the inventory with their
        status (revocable, and on their CA's CRL once revoked or held); its unused one-time challenges are
        deleted with it and its pending enrolments rejected. Returns the counts."""
        async with writer(self._engine).begin() as conn:
            query = sa.select(profiles.c.name).where(profiles.c.name == name)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()  # one-time challenges are made under this lock too
            if (await conn.execute(query)).first() is None:
                raise UnknownProfile(f"no SCEP profile named {name!r}")
            live = (await conn.execute(sa.select(sa.func.count()).select_from(certificates).where(
                certificates.c.profile == name, certificates.c.status.in_(("valid", "hold")),
                certificates.c.not_after > now))).scalar_one()
            if live and not force:
                raise ProfileInUse(f"profile {name!r} has {live} certificate(s) valid or on hold: revoke them first, "
                                   "or delete with force", live)
            rejected = (await conn.execute(scep_transactions.update().where(
                scep_transactions.c.profile == name, scep_transactions.c.state == "pending").values(
                state="rejected", fail_text="the profile was deleted", decided_by=actor or "admin",
                updated_at=now))).rowcount
            # its one-time challenges go with it (ON DELETE CASCADE)
            await conn.execute(profiles.delete().where(profiles.c.name == name))
            counts = {"certificates": live, "rejected_enrolments": rejected}
            await record_event(conn, at=now, kind="pki.profile.delete", subject=name, actor=actor,
                               data={**counts, "force": force})
        self._cache.pop(name, None)
        return counts


def describe(profile: Profile) -> dict[str, Any]:
    """A JSON-ready view of a profile (no secrets)."""
    return {"name": profile.name, "ca": profile.ca, "challenge": profile.challenge_kind,
            "settings": json.loads(profile.settings.model_dump_json())}
