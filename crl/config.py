"""Settings of CRL publishing, serving and checking (timedeltas accept seconds or ISO 8601 durations)."""
from __future__ import annotations

from datetime import timedelta
from enum import Enum
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Policy(str, Enum):
    """What a check answers when no fresh CRL is available for a certificate."""

    FAIL_CLOSED = "fail-closed"  # unknown status -> not allowed (Entra CBA, pyhanko CRL_REQUIRED)
    FAIL_OPEN = "fail-open"  # unknown status -> allowed; a listed serial on the last good CRL stays refused


class CheckerSettings(BaseModel):
    """Background fetching and checking of customers' CRLs (bring your own CA)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    refresh_interval: timedelta = Field(default=timedelta(hours=4), description="re-fetch at least this often")
    retry_interval: timedelta = Field(default=timedelta(minutes=5), description="after a failed fetch")
    timeout: timedelta = Field(default=timedelta(seconds=10), description="whole download, per URL")
    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="size cap of one CRL download")
    policy: Policy = Field(default=Policy.FAIL_CLOSED,
                           description="the answer when no fresh CRL is available: fail-closed (refused) or fail-open")
    clock_skew: timedelta = Field(default=timedelta(minutes=5), description="tolerance for thisUpdate, and a customer "
                                  "CA certificate's notBefore, in the future")
    missing_next_update_validity: timedelta = Field(
        default=timedelta(hours=24), description="how long a CRL without nextUpdate counts as fresh")
    max_concurrent_fetches: int = Field(default=4, gt=0, description="CRL downloads running at once")
    max_urls_per_ca: int = Field(default=16, gt=0, description="CDP URLs watched per CA; more are not fetched")
    allow_networks: tuple[str, ...] = Field(
        default=(), description="networks (CIDR) fetched from although not public, e.g. a CDP on an internal host")
    max_redirects: int = Field(default=3, ge=0, description="redirects followed; each target is checked again")

    @model_validator(mode="after")
    def _positive(self) -> "CheckerSettings":
        for name in ("refresh_interval", "retry_interval", "timeout", "missing_next_update_validity"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"crl.checker.{name} must be positive")
        if self.clock_skew < timedelta(0):
            raise ValueError("crl.checker.clock_skew must not be negative")
        for net in self.allow_networks:
            try:
                ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"crl.checker.allow_networks: {net!r} is not a network (CIDR)") from None
        return self

    def allowed_networks(self) -> "tuple[IPv4Network | IPv6Network, ...]":
        return tuple(ip_network(net, strict=False) for net in self.allow_networks)


class CrlSettings(BaseModel):
    """Publishing and serving our own CRLs (RFC 5280 §5, docs/crl-and-binding.md "Publishing CRLs")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    validity: timedelta = Field(default=timedelta(days=7), description="nextUpdate - thisUpdate")
    resign_interval: timedelta = Field(default=timedelta(hours=1), description="re-sign at least this often")
    coalesce_delay: timedelta = Field(default=timedelta(seconds=1),
                                      description="wait after a status change for more changes before re-signing")
    retry_interval: timedelta = Field(default=timedelta(seconds=30), description="after a failed re-sign")
    poll_interval: timedelta = Field(default=timedelta(seconds=5),
                                     description="how often to look for a CRL another process published")
    http_max_age: timedelta = Field(default=timedelta(minutes=5),
                                    description="Cache-Control max-age cap (never beyond nextUpdate)")
    checker: CheckerSettings = CheckerSettings()

    @model_validator(mode="after")
    def _consistent(self) -> "CrlSettings":
        for name in ("validity", "resign_interval", "retry_interval", "poll_interval"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"crl.{name} must be positive")
        if self.coalesce_delay < timedelta(0) or self.http_max_age < timedelta(0):
            raise ValueError("crl.coalesce_delay and crl.http_max_age must not be negative")
        if self.resign_interval * 2 > self.validity:
            raise ValueError("crl.resign_interval must be at most half of crl.validity, "
                             "so a failed re-sign can be retried long before nextUpdate")
        if self.coalesce_delay >= self.resign_interval:
            raise ValueError("crl.coalesce_delay must be shorter than crl.resign_interval")
        return self


class OcspSettings(BaseModel):
    """The OCSP responder of our CAs (RFC 6960 in the RFC 5019 profile; docs/ocsp.md "Settings")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="serve /ocsp/{ca}")
    signer: Literal["delegated", "ca"] = Field(
        default="delegated", description="a delegated OCSP signing certificate per CA, or the CA key itself")
    signer_validity: timedelta = Field(default=timedelta(days=7), description="the delegated certificate's lifetime")
    signer_renew_before: timedelta = Field(default=timedelta(days=2),
                                           description="renew the delegated certificate this long before it expires")
    signer_check_interval: timedelta = Field(default=timedelta(minutes=10),
                                             description="how often a process looks at its delegated certificate")
    response_validity: timedelta = Field(default=timedelta(hours=1), description="nextUpdate - thisUpdate")
    http_max_age: timedelta = Field(default=timedelta(minutes=5),
                                    description="Cache-Control max-age cap of GET answers (never beyond nextUpdate)")
    unknown_as_revoked: bool = Field(
        default=False, description="a serial never issued is answered revoked (RFC 6960 §2.2), not unknown")
    max_request_bytes: int = Field(default=4096, ge=64, le=65536,
                                   description="a larger OCSP request is refused unread (413 for a POST)")
    max_cert_ids: int = Field(default=8, ge=1, le=64, description="CertIDs answered in one request")
    cache_entries: int = Field(default=100_000, ge=0, description="pre-signed responses kept per process")

    @model_validator(mode="before")
    @classmethod
    def _seconds_from_env(cls, data):
        """Environment variables are strings: "1.5" means seconds, like a number in the TOML file."""
        if isinstance(data, dict):
            out = {}
            for k, v in data.items():
                if isinstance(v, str) and k in _OCSP_DURATIONS:
                    try:
                        v = float(v)
                    except ValueError:
                        pass
                out[k] = v
            data = out
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "OcspSettings":
        for name in _OCSP_DURATIONS - {"http_max_age"}:
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"ocsp.{name} must be positive")
        if self.http_max_age < timedelta(0):
            raise ValueError("ocsp.http_max_age must not be negative")
        if self.signer_renew_before >= self.signer_validity:
            raise ValueError("ocsp.signer_renew_before must be shorter than ocsp.signer_validity")
        if self.signer_check_interval * 2 > self.signer_renew_before:
            raise ValueError("ocsp.signer_check_interval must be at most half of ocsp.signer_renew_before")
        if self.response_validity > self.signer_renew_before:
            raise ValueError("ocsp.response_validity must not exceed ocsp.signer_renew_before: a response "
                             "never outlives its signer's certificate")
        return self


_OCSP_DURATIONS = {"signer_validity", "signer_renew_before", "signer_check_interval", "response_validity",
                   "http_max_age"}
