"""SCEP profiles: one endpoint each (/scep/{profile}), with a challenge kind and a certificate template."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

import structlog

from trustkit.clock import Clock, aware, utcnow
from trustkit.db import writer
from trustkit.paging import Page, PageRequest, after, take

from .profilemodel import (  # noqa: F401 - the profiles' model (scep_server.profilemodel), re-exported
    ChallengeKind, DeviceIdSource, InvalidSettings, NotStatic, Profile, ProfileError, ProfileExists, ProfileInUse,
    ProfileSettings, STATIC_NAMES_NO_DEVICE, StaticSecrets, UnknownProfile, profile_from_row)
from .scep.message import without_challenge_password
from .store.events import record_event
from .store.tables import certificates, profiles, scep_transactions

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: `$` also matches before a final newline


_log = structlog.get_logger("profiles")

# a static profile's secrets as stored now (ProfileStore.static_secret_ok; the SQLite enrolment path runs the same
# statement in its worker thread: scep_server.enrolment.sql)
STATIC_SECRETS = sa.select(profiles.c.static_secret_sha256, profiles.c.previous_secret_sha256,
                           profiles.c.previous_secret_until).where(
    profiles.c.name == sa.bindparam("name"), profiles.c.challenge_kind == sa.literal_column("'static'"))


def static_secret_matches(name: str, stored: StaticSecrets | None, challenge: str | None, now: datetime) -> bool:
    """Whether `challenge` is profile `name`'s static secret (`stored`, read now; None: no such static profile),
    or its previous one within the grace period after a rotation. Constant-time comparisons of the digests."""
    if not challenge or stored is None:
        return False
    given = hashlib.sha256(challenge.encode()).hexdigest()
    current = bool(stored.current_sha256) and hmac.compare_digest(given, stored.current_sha256)
    previous = bool(stored.previous_sha256) and hmac.compare_digest(given, stored.previous_sha256)
    until = stored.previous_until
    if not current and previous and until is not None and now < until:
        _log.warning("profile.previous_secret_used", profile=name, until=until.isoformat())
        return True
    return current


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
    return profile_from_row(row._mapping)


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

    def static_secret_matches(self, name: str, stored: StaticSecrets | None, challenge: str | None) -> bool:
        """:func:`static_secret_matches` now, on secrets the caller read (the SQLite enrolment path reads them in
        its worker thread)."""
        return static_secret_matches(name, stored, challenge, self._clock())

    async def static_secret_ok(self, name: str, challenge: str | None) -> bool:
        """Whether `challenge` is the static secret of profile `name` as stored now (read past the cache, so
        that a rotated secret or a deleted profile is refused at once by every process)."""
        if not challenge:
            return False
        async with self._engine.connect() as conn:
            row = (await conn.execute(STATIC_SECRETS, {"name": name})).first()
        found = StaticSecrets(row.static_secret_sha256, row.previous_secret_sha256, aware(row.previous_secret_until)) \
            if row is not None else None
        return static_secret_matches(name, found, challenge, self._clock())

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
            # locked (PostgreSQL; SQLite's writer holds the database): a concurrent rotation waits, then keeps this
            # one's secret as the previous one, never the secret this one retires
            old = (await conn.execute(sa.select(profiles.c.static_secret_sha256).where(
                profiles.c.name == name, profiles.c.challenge_kind == "static").with_for_update())).scalar()
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
            pending = (await conn.execute(sa.select(scep_transactions.c.transaction_id, scep_transactions.c.csr_der)
                                          .where(scep_transactions.c.profile == name,
                                                 scep_transactions.c.state == "pending"))).all()
            rejected = (await conn.execute(scep_transactions.update().where(
                scep_transactions.c.profile == name, scep_transactions.c.state == "pending").values(
                state="rejected", fail_text="the profile was deleted", decided_by=actor or "admin",
                updated_at=now))).rowcount
            for key, csr_der in pending:  # decided: kept without their challengePassword, as any decided enrolment
                await conn.execute(scep_transactions.update().where(
                    scep_transactions.c.profile == name, scep_transactions.c.transaction_id == key).values(
                    csr_der=without_challenge_password(csr_der)))
            # its one-time challenges go with it (ON DELETE CASCADE)
            await conn.execute(profiles.delete().where(profiles.c.name == name))
            counts = {"certificates": live, "rejected_enrolments": rejected}
            await record_event(conn, at=now, kind="pki.profile.delete", subject=name, actor=actor,
                               data={**counts, "force": force})
        self._cache.pop(name, None)
        return counts


def describe(profile: Profile) -> dict[str, Any]:
    """A JSON-ready view of a profile (no secrets: the hash of the challenge's Basic password is "(set)"), as the
    command line, the API and the console show it."""
    settings = json.loads(profile.settings.model_dump_json())
    credentials = settings.get("challenge", {}).get("credentials")
    if isinstance(credentials, dict) and "password_hash" in credentials:
        credentials["password_hash"] = "(set)"
    return {"name": profile.name, "ca": profile.ca, "challenge": profile.challenge_kind, "settings": settings}
