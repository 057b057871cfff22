"""Typed settings of a profile's dynamic or delegated challenge (``ProfileSettings.challenge``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trustkit.http import is_loopback_host


class ChallengeConfigError(Exception):
    """A profile's challenge settings are missing or invalid."""


class BasicCredentials(BaseModel):
    """HTTP Basic credentials of the challenge endpoint; the password is kept as a salted scrypt hash."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=255)
    password_hash: str  # scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>


class DynamicSettings(BaseModel):
    """One-time challenges served like NDES ``mscep_admin`` and to Jamf's SCEPChallenge webhook."""

    model_config = ConfigDict(extra="forbid")
    credentials: BasicCredentials | None = None
    ttl_minutes: int = Field(60, ge=1, le=7 * 24 * 60)
    # refuse new challenges while this many unused, unexpired ones exist (NDES: "The password cache is full.")
    max_unused: int | None = Field(None, ge=1)
    # the HTML page's encoding: NDES answers UTF-16LE, Okta UTF-8
    page_encoding: Literal["utf-8", "utf-16le"] = "utf-8"


class SecretRef(BaseModel):
    """A secret read at use time from an environment variable or a file (never stored in the database)."""

    model_config = ConfigDict(extra="forbid")
    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "SecretRef":
        if bool(self.env) == bool(self.file):
            raise ValueError("give exactly one of env or file")
        return self

    def read(self) -> str:
        if self.env:
            value = os.environ.get(self.env)
            if not value:
                raise ChallengeConfigError(f"environment variable {self.env} is not set")
            return value
        try:
            value = Path(self.file).read_text().strip()
        except OSError as exc:
            raise ChallengeConfigError(f"cannot read secret file {self.file}: {exc.strerror}") from None
        if not value:
            raise ChallengeConfigError(f"secret file {self.file} is empty")
        return value


class IntuneSettings(BaseModel):
    """Microsoft Intune SCEP request validation for third-party CAs."""

    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretRef
    authority_url: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com"
    intune_resource: str = "https://api.manage.microsoft.com/"
    # Intune's application id, whose service principal lists the service endpoints
    intune_app_id: str = "0000000a-0000-0000-c000-000000000000"
    service_name: str = "ScepRequestValidationFEService"
    api_version: str = "2018-02-20"
    timeout_seconds: float = Field(10.0, gt=0, le=120)
    retries: int = Field(2, ge=0, le=5)
    # the retries nest (a 404 rediscovers the endpoint, a discovery may fetch a token, each with its retries): one
    # ScepActions call with all it needs ends within this, well under a SCEP client's HTTP timeout (60-120 s)
    deadline_seconds: float = Field(20.0, gt=0, le=60, description=(
        "the longest one ScepActions call (validateRequest, a success or failure notification) may take, with the "
        "token and service-discovery requests it needs and every retry (never less than timeout_seconds); past it "
        "Intune is unavailable"))
    discovery_cache_seconds: int = Field(3600, ge=0)
    # a larger answer (token, discovery or ScepActions) is refused unread: Intune is unavailable
    max_response_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)

    @model_validator(mode="after")
    def _https(self) -> "IntuneSettings":
        # the client secret goes to the authority and a bearer token to Graph
        outbound_url(self.authority_url, "authority_url")
        outbound_url(self.graph_url, "graph_url")
        return self


class WebhookSettings(BaseModel):
    """A generic validator: HMAC-SHA256 signed JSON, ``{"allow": bool}`` reply, then notifications."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://")
    secret: SecretRef
    # notifications go here (default: the validation URL)
    notify_url: str | None = Field(None, pattern=r"^https?://")
    timeout_seconds: float = Field(10.0, gt=0, le=120)
    retries: int = Field(1, ge=0, le=5)
    # the retries add up (each attempt up to timeout_seconds): one call with all its retries ends within this, well
    # under a SCEP client's HTTP timeout (60-120 s), as Intune's deadline_seconds
    deadline_seconds: float = Field(20.0, gt=0, le=60, description=(
        "the longest one call of the webhook (the validation, a success or failure notification) may take with "
        "every retry (never less than timeout_seconds); past it the webhook is unavailable"))
    # a failed success notification withdraws the certificate (off: notifications are best effort)
    require_success_ack: bool = False
    # a larger answer is refused unread: the webhook is unavailable
    max_response_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # plain http is accepted only for a receiver on a loopback address, and only with this set
    allow_http_loopback: bool = False

    @model_validator(mode="after")
    def _https(self) -> "WebhookSettings":
        for name in ("url", "notify_url"):
            url = getattr(self, name)
            if url is not None and not url.lower().startswith("https://") and not (
                    self.allow_http_loopback and _loopback_url(url)):
                raise ValueError(f"{name} must be https (http only for a loopback receiver with "
                                 f"allow_http_loopback)")
            if url is not None:
                _host_looked_up(urlsplit(url).hostname or "", name)
        return self


def _loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return is_loopback_host(host)


def _host_looked_up(host: str, what: str) -> None:
    """ValueError where the resolver cannot take `host`: it encodes it as IDNA, where an empty label or one of
    over 63 characters raises UnicodeError at the call."""
    try:
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"{what}: {host[:100]!r} is not a host name that can be looked up") from None


def outbound_url(url: str, what: str) -> str:
    """An endpoint a credential is sent to: https, or http to a loopback address only (a local test peer or a
    local proxy). Returns it without a trailing slash; raises ValueError otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and parts.hostname and (
            parts.scheme == "https" or (parts.scheme == "http" and _loopback_url(url))):
        _host_looked_up(parts.hostname, what)
        return url.rstrip("/")
    raise ValueError(f"{what}: an https:// URL (http:// only for a loopback address)")


class DelegatedSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["intune", "webhook"]
    intune: IntuneSettings | None = None
    webhook: WebhookSettings | None = None

    @model_validator(mode="after")
    def _provider_settings(self) -> "DelegatedSettings":
        if getattr(self, self.provider) is None:
            raise ValueError(f"provider {self.provider!r} needs its {self.provider!r} settings")
        return self


def dynamic_settings(raw: dict[str, Any]) -> DynamicSettings:
    try:
        return DynamicSettings.model_validate(raw or {})
    except ValidationError as exc:
        raise ChallengeConfigError(f"invalid dynamic challenge settings: {_brief(exc)}") from None


def delegated_settings(raw: dict[str, Any]) -> DelegatedSettings:
    if not raw:
        raise ChallengeConfigError("the delegated challenge is not configured (run `scep-server challenge configure`)")
    try:
        return DelegatedSettings.model_validate(raw)
    except ValidationError as exc:
        raise ChallengeConfigError(f"invalid delegated challenge settings: {_brief(exc)}") from None


def validate_for(kind: str, raw: dict[str, Any]) -> DynamicSettings | DelegatedSettings | None:
    """Validate the challenge settings of a profile of challenge kind ``kind``."""
    if kind == "dynamic":
        return dynamic_settings(raw)
    if kind == "delegated":
        return delegated_settings(raw)
    return None


def _brief(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
