"""Configuration: a TOML file with environment overrides, validated at start.

Environment variables override the file: ``SCEP_SERVER_<SECTION>__<KEY>``, e.g.
``SCEP_SERVER_DATABASE__URL=postgresql://...``; top-level keys: ``SCEP_SERVER_DATA_DIR``. Names are
matched without regard to case; a list or a whole section is given as JSON
(``SCEP_SERVER_SERVER__TRUSTED_PROXIES='["10.0.0.0/8"]'``). The models below are the one description of
the settings: the file, the environment and the command-line flags are validated by them alike.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
from collections import deque
from collections.abc import Mapping, Sequence, Set
from datetime import timedelta
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crl.config import CrlSettings, OcspSettings
from otp.config import OtpSettings


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


def _networks(v: list[str]) -> list[str]:
    """The value of a setting listing networks (CIDR), each checked."""
    for net in v:
        try:
            ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"{net!r} is not a network (CIDR, e.g. 10.0.0.0/8)") from None
    return v


class ServerSettings(BaseModel):
    """The HTTP server: where it listens, how many processes, and the public URL certificates name."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, never a default silently kept

    listen: str = Field("127.0.0.1:8080", description="HOST:PORT the server listens on ([::]:PORT for IPv6)")
    workers: int = Field(1, ge=1, le=64, description="worker processes serving the listening port (see reuse_port)")
    base_url: str | None = Field(
        None, description="public base URL written into certificates (CRL Distribution Points, AIA caIssuers) and "
        "shown for profiles; unset: http://<listen>")
    allow_wildcard_base_url: bool = Field(
        False, description="issue certificates although listen is a wildcard address (0.0.0.0, ::) and base_url is "
        "unset, so that they name http://0.0.0.0:...; without it such a server refuses to issue (a lab setting)")
    max_body_bytes: int = Field(256 * 1024, ge=4096, description="largest request body accepted")
    body_timeout_seconds: float = Field(
        20.0, gt=0, le=3600, description="time a request's body has to arrive, extended by one second for every "
        "body_min_rate bytes received: a client sending slower (or not at all) gets a 408 and its connection "
        "is closed. Only the receiving of the body counts, not what the route does with it")
    body_min_rate: int = Field(
        4096, ge=1, description="bytes per second a request body must arrive at, on average, once "
        "body_timeout_seconds have passed; the announced Content-Length buys no time, only bytes sent do")
    send_timeout_seconds: float = Field(
        20.0, gt=0, le=3600, description="time a large answer (32 KiB or more: a CRL, a SCEP GetCRL) has to be "
        "sent, extended by one second for every send_min_rate bytes sent, and the longest a large answer may make "
        "no progress: a client reading slower (or not at all) has its connection reset, so it holds neither the "
        "answer nor the connection. Smaller answers are not timed")
    send_min_rate: int = Field(
        65536, ge=1, description="bytes per second a large answer must leave at, on average, once "
        "send_timeout_seconds have passed (64 KiB/s: a 46 MB CRL may take 12 minutes); sent is what the client's "
        "side took (on Linux what its TCP acknowledged), not what the system's send buffer holds")
    reuse_port: bool = Field(
        True, description="with several workers, each listens on a socket of its own on the same port "
        "(SO_REUSEPORT, where the system has it) and the kernel spreads new connections across them; with one "
        "shared socket the worker that wakes first takes every pending connection, so a client that keeps a few "
        "connections open (a proxy, an MDM's connector) may be served by one worker alone")
    cpu_affinity: Literal["auto", "off"] = Field(
        "auto", description="auto: when there are as many workers (more than one) as CPUs this server may run on, "
        "each worker is kept on a CPU of its own, so that its threads hand requests to each other within one "
        "core's caches instead of across cores; off: the kernel places every worker")
    scep_threads: int | None = Field(
        None, ge=1, le=256, description="threads of the SCEP service's own executor (parse, decrypt, sign) in each "
        "worker; unset: the number of CPUs divided by workers (at least 1)")
    scep_getcrl_queue: int = Field(
        8, ge=1, le=1024, description="SCEP GetCRL answers each worker builds (one at a time, on a thread of their "
        "own, apart from the enrolment threads), holds waiting, or has built and is still sending (until sent, cut "
        "by send_timeout_seconds, or the client gone); one more is answered 503 with Retry-After "
        "(getcrl_busy). Each answer costs time and memory in proportion to the CRL (the CRL encrypted to the "
        "requester and signed); a fleet whose devices fetch the CRL over SCEP at the same moment may need more")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="reverse proxies (CIDRs) whose forwarded client address is believed; "
        "from any other peer the forwarding headers are ignored")
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = Field(
        "x-forwarded-for", description="the header the trusted proxies append the client address to")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return _networks(v)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if not v:  # an empty environment variable: not set
            return None
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(v)
        except ValueError:
            parts = None
        # user info would be written into every certificate's CRL and CA certificate URLs, for anyone to read
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment or "@" in parts.netloc:
            raise ValueError("expected an http or https URL without user info, query or fragment, e.g. "
                             "https://scep.example.com")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def public_base_url(self) -> str:
        return (self.base_url or f"http://{self.listen}").rstrip("/")

    def wildcard_base_url(self) -> bool:
        """True when no base_url is set and listen is a wildcard address (0.0.0.0, ::): the URLs written into
        certificates would then name an address no device can reach."""
        if self.base_url:
            return False
        try:
            return ip_address(self.host).is_unspecified
        except ValueError:
            return False

    def issuing_refusal(self) -> str | None:
        """Why no certificate may be issued with these settings, or None (see wildcard_base_url)."""
        if not self.wildcard_base_url() or self.allow_wildcard_base_url:
            return None
        return (f"this server issues no certificates: it listens on {self.listen} and server.base_url is not set, "
                f"so certificates would name {self.public_base_url()} as their CRL and CA certificate location; "
                "set server.base_url (SCEP_SERVER_SERVER__BASE_URL) to the URL devices reach")


class DatabaseSettings(BaseModel):
    """The database: embedded SQLite in the data directory, or PostgreSQL shared by several instances."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None, description="SQLAlchemy URL, e.g. postgresql://user:password@host/db; unset: SQLite "
        "<data_dir>/scep.db", json_schema_extra={"secret": True}, repr=False)  # its password: in no repr
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = Field(
        "FULL", description="SQLite PRAGMA synchronous: FULL survives power loss (an accepted OTP stays accepted)")
    url_file: str | None = Field(
        None, description="file whose first line is that URL (a container or systemd secret); url wins when both "
        "are set")
    pool_size: int = Field(10, ge=1, le=200, description="connections per process (PostgreSQL)")


# a CA's name: one path component (its directory), no `..` and no separator; restore holds a backup's to it too
CA_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class CASettings(BaseModel):
    """The issuing CA and its SCEP RA (created by `init` or the first start, in <data_dir>/ca/<name>)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("default", pattern=CA_NAME_PATTERN,
                      description="the CA's name: its directory, /crl/<name>.crl and /ca/<name>.crt")
    subject: str = Field("CN=Device Trust Issuing CA,O=Device Trust",
                         description="subject of a new CA certificate (RFC 4514)")
    key_type: Literal["rsa", "ec-p256", "ec-p384"] = Field(
        "rsa", description="the key of a new CA: RSA of key_size bits, or EC on P-256 / P-384 (the RA key stays "
        "RSA: SCEP clients encrypt their requests to it)")
    key_size: int = Field(3072, ge=2048, le=8192, description="RSA key size of a new CA, in bits")
    validity_days: int = Field(3650, ge=1, description="validity of a new CA certificate, in days")
    ra_subject: str = Field("CN=Device Trust SCEP RA,O=Device Trust",
                            description="subject of the RA certificate (decrypts and signs SCEP messages)")
    ra_validity_days: int = Field(730, ge=1, description="validity of the RA certificate, in days")
    ra_mode: Literal["single", "split"] = Field(
        "single", description="the RA certificates of a new CA: single (one RA certificate signs and decrypts) or "
        "split (a signing-only and an encryption-only one, as Microsoft NDES publishes them; key_backend = file "
        "only); an existing CA keeps its mode, `scep-server ca renew-ra --mode` switches it")
    ra_renew_before_days: int = Field(60, ge=1, description="the server renews the RA certificate (a new key) "
                                      "when it has less than this many days left")
    decrypt_with_ca_key: bool | None = Field(
        None, description="a SCEP request encrypted to the CA certificate (a client that does not pick the RA "
        "certificate) is decrypted with the CA key, which then also decrypts; unset: yes with key_backend = file, "
        "no with pkcs11 (where it cannot be switched on); false: such a request is answered badMessageCheck")
    ra_check_interval: float = Field(5.0, gt=0, description="how often a server process looks for a renewed RA "
                                     "certificate (written by another process or `ca renew-ra`) and whether its "
                                     "RA is due for renewal, in seconds")
    passphrase_env: str = Field(
        "SCEP_CA_PASSPHRASE", description="environment variable holding the passphrase that encrypts the CA and "
        "RA keys at rest (wins over passphrase_file)")
    passphrase_file: str | None = Field(
        None, description="file holding that passphrase; unset: <data_dir>/ca/passphrase, created with a random "
        "passphrase on first start")
    key_backend: Literal["file", "pkcs11"] = Field(
        "file", description="where the CA and RA private keys live: file (encrypted PEM files in the CA directory) "
        "or pkcs11 (a token: the keys are found by label, generated there by `init` when missing, never exported)")
    pkcs11_module: str | None = Field(None, description="path of the token's PKCS#11 library (key_backend = pkcs11)")
    pkcs11_token_label: str | None = Field(None, description="label of the PKCS#11 token holding the keys")
    pkcs11_pin_env: str = Field("SCEP_CA_PKCS11_PIN", description="environment variable holding the token's user "
                                "PIN (wins over pkcs11_pin_file)")
    pkcs11_pin_file: str | None = Field(None, description="file holding the token's user PIN")
    ca_key_label: str = Field("scep-ca", min_length=1, max_length=128, description="label of the CA key in the token")
    ra_key_label: str = Field("scep-ra", min_length=1, max_length=128, description="label of the RA key in the token")

    @model_validator(mode="after")
    def _pkcs11_complete(self) -> "CASettings":
        if self.key_backend == "pkcs11":
            missing = [k for k in ("pkcs11_module", "pkcs11_token_label") if not getattr(self, k)]
            if missing:
                raise ValueError(f"key_backend = \"pkcs11\" needs {' and '.join(missing)}")
            if self.ca_key_label == self.ra_key_label:
                raise ValueError("ca_key_label and ra_key_label must differ")
            if self.decrypt_with_ca_key:
                raise ValueError("decrypt_with_ca_key = true needs key_backend = \"file\" (a token's CA key only "
                                 "signs)")
            if self.ra_mode == "split":
                raise ValueError("ra_mode = \"split\" needs key_backend = \"file\" (split RA certificates are not "
                                 "made in a token)")
        return self

    def ca_key_decrypts(self) -> bool:
        """Whether a request addressed to the CA certificate is decrypted with the CA key."""
        if self.decrypt_with_ca_key is None:
            return self.key_backend == "file"
        return self.decrypt_with_ca_key


    @model_validator(mode="after")
    def _renewal_before_end(self) -> "CASettings":
        if self.ra_renew_before_days >= self.ra_validity_days:
            raise ValueError(f"ca.ra_renew_before_days ({self.ra_renew_before_days}) must be less than "
                             f"ca.ra_validity_days ({self.ra_validity_days}): a new RA certificate would be due "
                             f"for renewal at once")
        return self

class BindingSettings(BaseModel):
    """Device binding and management attestation."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="off: no /api/v1/devices, attestation or external-CA routes, no "
                          "binding jobs, no `device`/`ca` commands")
    nonce_ttl_seconds: int = Field(120, ge=5, le=3600, description="lifetime of an attestation nonce (single use)")
    revoke_on_second_device: bool = Field(
        False, description="a certificate presented by a second device is also revoked (keyCompromise, "
        "invalidityDate = first sighting)")
    external_ca_reload_seconds: float = Field(
        10.0, gt=0, description="how often a server process re-reads the registered external CAs (`ca add-external`)")
    certificate_cache_size: int = Field(
        10_000, ge=0, description="parsed client certificates kept in memory per process (by SHA-256 of the DER)")
    certificate_cache_bytes: int = Field(
        32 << 20, ge=0, description="and at most this many bytes of them (only certificates whose issuer was "
        "established are kept)")


MdmAction = Literal["none", "suspend", "deactivate", "delete"]


class MdmSettings(BaseModel):
    """Device lifecycle that follows the MDM's device records (sources added by `scep-server mdm configure`)."""

    model_config = ConfigDict(extra="forbid")
    sync_interval_seconds: int = Field(
        900, ge=30, le=86400, description="how often each configured MDM's inventory is read (one process of the "
        "deployment does it per period)")
    unmanaged_action: MdmAction = Field(
        "deactivate", description="what a device the MDM no longer manages becomes here (Jamf: managed = false; "
        "also a device gone from the inventory, until the grace period has passed)")
    disabled_action: MdmAction = Field(
        "deactivate", description="what a device disabled in the directory (Entra ID accountEnabled = false) "
        "becomes here")
    removed_action: MdmAction = Field(
        "delete", description="what a device gone from the MDM's inventory becomes once the grace period has passed")
    removed_grace_days: float = Field(7.0, ge=0, le=365, description="the grace period of a device gone from the "
                                      "MDM's inventory, in days")
    restore_when_managed: bool = Field(
        True, description="a device this MDM took down (and only such a device) is made active again when the MDM "
        "manages it again")
    timeout_seconds: float = Field(30.0, gt=0, le=300, description="timeout of each outbound call to the MDM "
                                   "(token, inventory pages)")
    sync_timeout_seconds: float = Field(
        3600.0, gt=0, le=86400, description="a sync that has not read the whole inventory (every page of every "
        "listing, token requests included) within this fails and changes nothing; a sync's claim of a source "
        "(periodic, or asked for with mdm sync) lasts sync_interval_seconds plus this at most, so that no other "
        "sync reads the source meanwhile; its process renews it while the sync runs, and a claim not renewed for "
        "60 s (a process killed in a sync) is taken by the next sync")
    brake_share: float = Field(
        0.1, ge=0, le=1, description="a sync that would take down (suspend, deactivate or delete) more than this "
        "share of the source's known devices, and more than brake_devices of them, applies nothing until an "
        "administrator confirms it (`scep-server mdm sync NAME --confirm-takedowns N`): an MDM that answers an "
        "empty or cut inventory must not take the fleet down")
    brake_devices: int = Field(
        10, ge=0, description="a sync may always take down this many devices without confirmation, whatever "
        "brake_share says")


class CrlSection(CrlSettings):
    """Publishing our CRLs (crl.config.CrlSettings) and the day-91 rule of the certificate lifecycle."""

    unused_days: int = Field(90, ge=1, description="a certificate never used in a successful attestation within "
                             "this many days of issue is revoked")
    unused_check_interval: timedelta = Field(timedelta(hours=1), gt=timedelta(0),
                                             description="how often the day-91 rule runs")
    partitioning: bool = Field(False, description="certificates issued from now on name a partition CRL "
                               "(/crl/<ca>/<n>.crl, serial mod the partition count) as their CRL Distribution Point; "
                               "the full CRL stays published (docs/crl-and-binding.md \"Partitioned CRLs\")")
    partition_target_size: int = Field(100_000, ge=100, le=10_000_000,
                                       description="certificates per partition: the partition count is "
                                       "partition_expected_certificates / this, fixed when partitioning is first "
                                       "turned on for a CA")
    partition_expected_certificates: int = Field(1_000_000, ge=1, description="unexpired certificates a CA is "
                                                 "expected to hold, for the partition count (read once per CA, "
                                                 "when partitioning is first turned on)")

    @model_validator(mode="before")
    @classmethod
    def _seconds_from_env(cls, data: Any) -> Any:
        """Environment variables are strings: "1.5" means seconds, like a number in the TOML file."""
        if isinstance(data, dict):
            data = {k: float(v) if isinstance(v, str) and k in _CRL_DURATIONS and _is_number(v) else v
                    for k, v in data.items()}
        return data


_CRL_DURATIONS = {"validity", "resign_interval", "coalesce_delay", "retry_interval", "poll_interval", "http_max_age",
                  "unused_check_interval"}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ChallengeSection(BaseModel):
    """Dynamic and delegated challenges (scep_server.challenge) and their endpoint's HTTP Basic login."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="off: only static profiles enrol; no challenge or enrolment routes, "
                          "jobs or commands")
    scrypt_log2_n: int = Field(17, ge=10, le=20, description="scrypt cost (log2 of n, r = 8, p = 1) of new "
                               "password hashes; older hashes are upgraded at the next login")
    failures_per_address: int = Field(5, ge=1, description="failed logins per (profile, client address) within "
                                      "window_seconds before a lockout")
    failures_per_user: int = Field(20, ge=1, description="failed logins per (profile, username) from all addresses "
                                   "together within window_seconds before a lockout")
    window_seconds: int = Field(300, ge=1, description="the window failed logins are counted in")
    lockout_seconds: int = Field(300, ge=1, description="how long a lockout lasts")
    max_throttle_rows: int = Field(100_000, ge=100, description="rows of the shared throttle table kept at most "
                                   "(the oldest expire first)")
    known_address_hours: int = Field(24, ge=0, le=8760, description="a client address that logged in with a "
                                     "profile's username and password within this many hours is not held back by "
                                     "the username's lockout (its own per-address limit still applies), so failures "
                                     "from others cannot lock the real client out; 0: every address is")
    hash_workers: int = Field(2, ge=1, le=16, description="threads checking passwords")
    max_waiting_checks: int = Field(16, ge=1, description="password checks under way (one per client address) "
                                    "beyond which the endpoint answers 503")


class OtpSection(OtpSettings):
    """The YubiKey OTP factor (otp.config.OtpSettings), which a deployment may switch off."""

    enabled: bool = Field(True, description="off: no OTP routes or jobs, no `yubikey`/`otp-client` commands, and "
                          "no key-encryption key is needed")


class AuditSettings(BaseModel):
    """The audit trail's hash chain (scep_server/store/chain.py)."""

    model_config = ConfigDict(extra="forbid")

    chain: bool = Field(False, description="seal the events table into a SHA-256 hash chain (`scep-server audit "
                        "verify` checks it); every process sharing a database should have the same value")
    seal_interval: float = Field(1.0, gt=0, le=3600, description="seconds between two seals of a server process")


class ConsoleSettings(BaseModel):
    """The admin console at /admin/ (scep_server/console; README "Console")."""
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="off: no /admin/ routes")
    idle_timeout: int = Field(900, ge=60, le=86400, description="seconds without a request before a session ends")
    lifetime: int = Field(43200, ge=300, le=604800,
                          description="seconds after sign-in when a session ends in any case")
    trusted_header: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$",
        description="sign-in by a header an authenticating (OIDC) reverse proxy sets, e.g. X-Auth-Request-Email; "
        "believed only from a peer in trusted_header_networks")
    trusted_header_networks: list[str] = Field(
        default_factory=list, description="networks (CIDR) of the proxies trusted_header is believed from; "
        "required with trusted_header, and never a network of every address (0.0.0.0/0, ::/0)")

    @field_validator("trusted_header_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in _networks(v):
            if ip_network(net, strict=False).prefixlen == 0:  # 0.0.0.0/0, ::/0
                raise ValueError(f"{net!r} is every address: whoever connects could sign in as any user by "
                                 "sending the header; list the authenticating proxy's own networks")
        return v

    @model_validator(mode="after")
    def _header_needs_networks(self) -> "ConsoleSettings":
        if self.trusted_header and not self.trusted_header_networks:
            raise ValueError("trusted_header needs trusted_header_networks, the networks of the proxy it is believed "
                             "from (without them it is never believed)")
        return self


class LogSettings(BaseModel):
    """Logs, on stderr (README "Log events")."""

    model_config = ConfigDict(extra="forbid")  # a misspelt `access` is an error, not an access log that never comes

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="the least level written")
    format: Literal["json", "console"] = Field("json", description="one JSON object per line, or console for "
                                               "people")
    access: bool = Field(False, description="one `http.access` line per request (method, route template, status, "
                         "duration, client, request id), written whatever level is")


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    return v


class MetricsSettings(BaseModel):
    """Prometheus metrics (scep_server.metrics): `/metrics` on every worker, or on a listen address of its own."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="off: no /metrics")
    listen: str | None = Field(None, description="HOST:PORT to serve /metrics on instead of server.listen; every "
                               "worker shares the socket")
    token_env: str | None = Field(None, description="environment variable holding the bearer token scrapers must "
                                  "send (compared in constant time)")
    token_file: str | None = Field(None, description="or a file holding it (its first line); without either, "
                                   "/metrics is open to whoever reaches it")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        return None if v is None else _host_port(v)

    @model_validator(mode="after")
    def _one_token_source(self) -> "MetricsSettings":
        if self.token_env and self.token_file:
            raise ValueError("set token_env or token_file, not both")
        return self

    @property
    def host(self) -> str:
        assert self.listen is not None
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        assert self.listen is not None
        return int(self.listen.rpartition(":")[2])

    def token(self) -> str | None:
        """The bearer token scrapers must present, or None; raises ConfigError when the named source is empty."""
        if self.token_env:
            value = os.environ.get(self.token_env, "").strip()
            if not value:
                raise ConfigError(f"metrics.token_env: the environment variable {self.token_env} is not set or empty")
            return value
        if self.token_file:
            try:
                lines = Path(self.token_file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"metrics.token_file: cannot read {self.token_file}: {exc}") from None
            value = lines[0].strip() if lines else ""
            if not value:
                raise ConfigError(f"metrics.token_file: {self.token_file} holds no token")
            return value
        return None


class Settings(BaseModel):
    """Everything the server and the CLI read; one file for both (see :func:`load_settings`)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    data_dir: Path = Field(Path("data"), description="the data directory: SQLite database, CA keys and "
                           "certificates, generated secrets")
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    ca: CASettings = CASettings()
    log: LogSettings = LogSettings()
    audit: AuditSettings = AuditSettings()
    binding: BindingSettings = BindingSettings()
    mdm: MdmSettings = MdmSettings()
    crl: CrlSection = CrlSection()
    ocsp: OcspSettings = OcspSettings()
    otp: OtpSection = OtpSection()
    challenge: ChallengeSection = ChallengeSection()
    metrics: MetricsSettings = MetricsSettings()
    console: ConsoleSettings = ConsoleSettings()

    def database_url(self) -> str:
        """The database's URL: database.url, else the first line of database.url_file, else SQLite in data_dir.

        Raises ConfigError when url_file cannot be read or is empty."""
        if self.database.url:
            return self.database.url
        if self.database.url_file:
            path = Path(self.database.url_file)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"database.url_file: cannot read {path}: {exc}") from None
            if not lines or not lines[0].strip():
                raise ConfigError(f"database.url_file: {path} holds no URL")
            return lines[0].strip()
        return f"sqlite+aiosqlite:///{(self.data_dir / 'scep.db').resolve()}"

    def passphrase_path(self) -> Path:
        return Path(self.ca.passphrase_file) if self.ca.passphrase_file else self.data_dir / "ca" / "passphrase"

    def ca_dir(self, name: str | None = None) -> Path:
        return self.data_dir / "ca" / (name or self.ca.name)


def enabled(settings: Settings, capability: str) -> bool:
    """Whether an optional capability ("otp", "binding", "challenge") is switched on; the others always are."""
    section = getattr(settings, capability, None)
    return bool(getattr(section, "enabled", True))


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{key}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_toml(config_file: str | os.PathLike) -> dict[str, Any]:
    path = Path(config_file)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"configuration file {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc}") from None


def check_file(config_file: str | os.PathLike) -> Settings:
    """The settings of a TOML file alone (no environment): ConfigError naming the key when it is invalid."""
    data = _read_toml(config_file)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_settings(config_file: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), apply environment variables, then explicit overrides (CLI flags)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        data = _read_toml(config_file)
    data = _deep_merge(data, {k: v for k, v in overrides.items() if v is not None})
    _refuse_unknown_sections()
    try:
        # The file is the lowest layer: environment variables must win over it, so the file goes
        # through a temporary env-free model first, then env settings are applied on top.
        from_file = Settings.model_validate(data) if data else None
        env_only = Settings.model_validate(environment_values())
        merged = _deep_merge(from_file.model_dump(exclude_unset=True) if from_file else {},
                             env_only.model_dump(exclude_unset=True))
        merged = _deep_merge(credential_values(), merged)  # below the file: an explicit setting wins
        merged = _deep_merge(merged, {k: v for k, v in overrides.items() if v is not None})
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


ENV_PREFIX = "SCEP_SERVER_"
ENV_NESTED_DELIMITER = "__"

# systemd credentials (LoadCredential=NAME:PATH in the unit; the files are in $CREDENTIALS_DIRECTORY) -> the
# setting each one fills when neither the file nor the environment sets it
CREDENTIALS: dict[str, tuple[str, str]] = {
    "ca-passphrase": ("ca", "passphrase_file"),
    "otp-kek": ("otp", "kek_file"),
    "database-url": ("database", "url_file"),
}


def _refuse_unknown_sections(environ: Mapping[str, str] | None = None) -> None:
    """A variable ``SCEP_SERVER_<SECTION>__<KEY>`` whose section does not exist (``SCEP_SERVER_DATABSE__URL``) is a
    ConfigError naming it: ignored, it would leave the setting it meant at its default (SQLite instead of the
    shared database, say). A variable of a section's key that does not exist is refused by the section."""
    prefix = ENV_PREFIX.lower()
    sections = sorted(Settings.model_fields)
    for name in (os.environ if environ is None else environ):
        lowered = name.lower()
        if not lowered.startswith(prefix) or ENV_NESTED_DELIMITER not in lowered[len(prefix):]:
            continue
        section = lowered[len(prefix):].split(ENV_NESTED_DELIMITER, 1)[0]
        if section not in sections:
            raise ConfigError(f"invalid configuration:\n  environment variable {name}: there is no section "
                              f"{section!r} (sections: {', '.join(s for s in sections if s != 'data_dir')})")


def credential_values(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings systemd credentials provide: each file of :data:`CREDENTIALS` present in
    ``$CREDENTIALS_DIRECTORY`` names its setting's file (nothing without the variable)."""
    directory = (os.environ if environ is None else environ).get("CREDENTIALS_DIRECTORY")
    out: dict[str, Any] = {}
    if not directory:
        return out
    for name, (section, key) in CREDENTIALS.items():
        path = Path(directory) / name
        if path.is_file():
            out.setdefault(section, {})[key] = str(path)
    return out


def environment_values(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings the environment sets, as a dict for :class:`Settings` (nothing validated yet).

    ``SCEP_SERVER_<FIELD>`` sets a top-level field; ``SCEP_SERVER_<SECTION>__<KEY>`` (further ``__<KEY>`` for
    a sub-section such as ``crl.checker``) a field of a section. Names are compared in lower case. A value for
    a list, a tuple or a whole section is JSON (a section's JSON object is completed by its ``__<KEY>``
    variables); a JSON null at the top is as if unset; everything else is the string, which the model
    converts. This is what pydantic-settings' environment source does with ``env_prefix="SCEP_SERVER_"`` and
    ``env_nested_delimiter="__"`` (tests/app/test_config_env.py compares the two, variable by variable); it is
    read here so that a command does not import pydantic-settings. A value that is not JSON where JSON is
    expected is a ConfigError naming the variable (pydantic-settings raised its own SettingsError).
    """
    env = {name.lower(): (name, value) for name, value in (os.environ if environ is None else environ).items()}
    prefix = ENV_PREFIX.lower()
    out: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        var = prefix + name
        found = env.get(var)
        value = None if found is None else found[1]
        is_complex, lenient = _complexity(field.annotation)
        if is_complex:
            if value is None:
                exploded = _explode(var + ENV_NESTED_DELIMITER, field.annotation, env, name)
                if exploded:
                    out[name] = exploded
            else:
                value = _json(found[0], name, value, lenient)
                if isinstance(value, dict):
                    value = _deep_merge(value, _explode(var + ENV_NESTED_DELIMITER, field.annotation, env, name))
                if value is not None:  # JSON null: as if unset
                    out[name] = value
        elif value is not None:
            out[name] = value
    return out


def _explode(prefix: str, annotation: Any, env: Mapping[str, tuple[str, str]], key: str) -> dict[str, Any]:
    """The ``PREFIX<KEY>[__<KEY>...]`` variables of one section, as nested dicts (in the environment's order)."""
    result: dict[str, Any] = {}
    for env_name, (original, env_val) in env.items():
        if not env_name.startswith(prefix):
            continue
        *keys, last = env_name[len(prefix):].split(ENV_NESTED_DELIMITER)
        node: Any = result
        target = annotation
        for part in keys:
            target = _subfield(target, part)
            if isinstance(node, dict):
                node = node.setdefault(part, {})
        target = _subfield(target, last)
        if target is not None and env_val:
            is_complex, lenient = _complexity(target)
            if is_complex:
                env_val = _json(original, ".".join([key, *keys, last]), env_val, lenient)
        if isinstance(node, dict):
            node[last] = env_val
    return result


def _subfield(annotation: Any, key: str) -> Any:
    """The annotation of field `key` (any case) of the model `annotation` names (also inside a union), or None."""
    if annotation is None or isinstance(annotation, str):
        return None
    for arg in get_args(annotation):
        found = _subfield(arg, key)
        if found is not None:
            return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            if name.lower() == key.lower():
                return field.annotation
    return None


def _complexity(annotation: Any) -> tuple[bool, bool]:
    """(whether the environment gives this type as JSON, whether a value that is not JSON is kept as a string)."""
    if _is_complex(annotation):
        return True, False
    if get_origin(annotation) in (Union, types.UnionType) and any(_is_complex(a) for a in get_args(annotation)):
        return True, True
    return False, False


def _is_complex(annotation: Any) -> bool:
    origin = get_origin(annotation)
    for t in (annotation, origin):
        if not isinstance(t, type) or issubclass(t, (str, bytes)):
            continue
        if issubclass(t, (BaseModel, Mapping, Sequence, Set, tuple, set, frozenset, deque)) or dataclasses.is_dataclass(t):
            return True
    return hasattr(origin, "__pydantic_core_schema__") or hasattr(origin, "__get_pydantic_core_schema__")


def _json(variable: str, key: str, value: str, lenient: bool) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        if lenient:
            return value
        raise ConfigError(f"invalid configuration:\n  {key}: environment variable {variable} is not valid JSON "
                          f"({exc})") from None
