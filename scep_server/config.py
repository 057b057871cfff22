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
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crl.config import CrlSettings
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
    listen: str = "127.0.0.1:8080"
    workers: int = Field(1, ge=1, le=64)
    # Public base URL written into certificates (CRL Distribution Points, AIA caIssuers). Default: http://<listen>
    base_url: str | None = None
    max_body_bytes: int = Field(256 * 1024, ge=4096)
    # threads of the SCEP service's own executor (parse, decrypt, sign); default: the number of CPUs
    scep_threads: int | None = Field(None, ge=1, le=256)
    # Reverse proxies (CIDRs) whose forwarded client address is believed; from any other peer the
    # forwarding headers are ignored. forwarded_header names the header those proxies append to.
    trusted_proxies: list[str] = Field(default_factory=list)
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return _networks(v)

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


class DatabaseSettings(BaseModel):
    # Default: sqlite in the data directory
    url: str | None = None
    # SQLite PRAGMA synchronous: FULL survives power loss (an accepted OTP stays accepted)
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    pool_size: int = Field(10, ge=1, le=200)


class CASettings(BaseModel):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    subject: str = "CN=Device Trust Issuing CA,O=Device Trust"
    key_size: int = Field(3072, ge=2048, le=8192)
    validity_days: int = Field(3650, ge=1)
    ra_subject: str = "CN=Device Trust SCEP RA,O=Device Trust"
    ra_validity_days: int = Field(730, ge=1)
    # the server renews the RA certificate (a new key) when it has less than this many days left
    ra_renew_before_days: int = Field(60, ge=1)
    # how often a server process looks for a renewed RA certificate (written by another process or
    # `ca renew-ra`) and whether its RA is due for renewal, in seconds
    ra_check_interval: float = Field(5.0, gt=0)
    # The CA and RA keys are encrypted at rest with this passphrase: read from the environment
    # variable named here, else from passphrase_file (created with a random passphrase on first start).
    passphrase_env: str = "SCEP_CA_PASSPHRASE"
    passphrase_file: str | None = None


    @model_validator(mode="after")
    def _renewal_before_end(self) -> "CASettings":
        if self.ra_renew_before_days >= self.ra_validity_days:
            raise ValueError(f"ca.ra_renew_before_days ({self.ra_renew_before_days}) must be less than "
                             f"ca.ra_validity_days ({self.ra_validity_days}): a new RA certificate would be due "
                             f"for renewal at once")
        return self

class BindingSettings(BaseModel):
    """Device binding and management attestation."""

    # off: no /api/v1/devices, attestation or external-CA routes, no binding jobs, no `device`/`ca` commands
    enabled: bool = True
    # lifetime of an attestation nonce (single use)
    nonce_ttl_seconds: int = Field(120, ge=5, le=3600)
    # a certificate presented by a second device is also revoked (keyCompromise, invalidityDate = first sighting)
    revoke_on_second_device: bool = False
    # how often a server process re-reads the registered external CAs (added by `ca add-external`)
    external_ca_reload_seconds: float = Field(10.0, gt=0)
    # parsed client certificates kept in memory per process (by SHA-256 of the DER)
    certificate_cache_size: int = Field(10_000, ge=0)
    # and at most this many bytes of them (only certificates whose issuer was established are kept)
    certificate_cache_bytes: int = Field(32 << 20, ge=0)


class CrlSection(CrlSettings):
    """Publishing our CRLs (crl.config.CrlSettings) and the day-91 rule of the certificate lifecycle."""

    # a certificate never used in a successful attestation within this many days of issue is revoked
    unused_days: int = Field(90, ge=1)
    # how often the day-91 rule runs
    unused_check_interval: timedelta = Field(timedelta(hours=1), gt=timedelta(0))

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

    # off: only static profiles enrol; no challenge or enrolment routes, jobs or commands
    enabled: bool = True
    # scrypt cost (log2 of n, r = 8, p = 1) of new password hashes; older hashes are upgraded at the next login
    scrypt_log2_n: int = Field(17, ge=10, le=20)
    # failed logins: per (profile, client address), and per (profile, username) from all addresses together
    failures_per_address: int = Field(5, ge=1)
    failures_per_user: int = Field(20, ge=1)
    window_seconds: int = Field(300, ge=1)
    lockout_seconds: int = Field(300, ge=1)
    # rows of the shared throttle table kept at most (the oldest expire first)
    max_throttle_rows: int = Field(100_000, ge=100)
    # password checks run on their own threads; beyond this many waiting the endpoint answers 503
    hash_workers: int = Field(2, ge=1, le=16)
    max_waiting_checks: int = Field(16, ge=1)


class OtpSection(OtpSettings):
    """The YubiKey OTP factor (otp.config.OtpSettings), which a deployment may switch off."""

    # off: no OTP routes or jobs, no `yubikey`/`otp-client` commands, and no key-encryption key is needed
    enabled: bool = True


class AuditSettings(BaseModel):
    """The audit trail's hash chain (scep_server/store/chain.py)."""
    # Seal the events table into a SHA-256 hash chain (`scep-server audit verify` checks it). Every process
    # sharing a database should have the same value.
    chain: bool = False
    seal_interval: float = Field(1.0, gt=0, le=3600)  # seconds between two seals of a server process


class ConsoleSettings(BaseModel):
    """The admin console at /admin/ (scep_server/console; README "Console")."""
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    idle_timeout: int = Field(900, ge=60, le=86400)  # seconds without a request before a session ends
    lifetime: int = Field(43200, ge=300, le=604800)  # seconds after sign-in when a session ends in any case
    # sign-in by a header an authenticating (OIDC) reverse proxy sets, e.g. "X-Auth-Request-Email"; believed
    # only from a TCP peer in trusted_header_networks
    trusted_header: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    trusted_header_networks: list[str] = Field(default_factory=list)

    @field_validator("trusted_header_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return _networks(v)


class LogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt `access` is an error, not an access log that never comes

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    # one `http.access` line per request (method, route template, status, duration, client, request id),
    # written whatever `level` is
    access: bool = False


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    return v


class MetricsSettings(BaseModel):
    """Prometheus metrics (scep_server.metrics): `/metrics` on every worker, or on a listen address of its own."""

    enabled: bool = True
    # "HOST:PORT": serve /metrics there only (not on server.listen); every worker shares the socket
    listen: str | None = None
    # a bearer token scrapers must send (compared in constant time): from this environment variable ...
    token_env: str | None = None
    # ... or from this file (its first line); without either, /metrics is open to whoever reaches it
    token_file: str | None = None

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

    data_dir: Path = Path("data")
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    ca: CASettings = CASettings()
    log: LogSettings = LogSettings()
    audit: AuditSettings = AuditSettings()
    binding: BindingSettings = BindingSettings()
    crl: CrlSection = CrlSection()
    otp: OtpSection = OtpSection()
    challenge: ChallengeSection = ChallengeSection()
    metrics: MetricsSettings = MetricsSettings()
    console: ConsoleSettings = ConsoleSettings()

    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{(self.data_dir / 'scep.db').resolve()}"

    def passphrase_path(self) -> Path:
        return Path(self.ca.passphrase_file) if self.ca.passphrase_file else self.data_dir / "ca" / "passphrase"

    def ca_dir(self, name: str | None = None) -> Path:
        return self.data_dir / "ca" / (name or self.ca.name)


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


def load_settings(config_file: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), apply environment variables, then explicit overrides (CLI flags)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    data = _deep_merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        # The file is the lowest layer: environment variables must win over it, so the file goes
        # through a temporary env-free model first, then env settings are applied on top.
        from_file = Settings.model_validate(data) if data else None
        env_only = Settings.model_validate(environment_values())
        merged = _deep_merge(from_file.model_dump(exclude_unset=True) if from_file else {},
                             env_only.model_dump(exclude_unset=True))
        merged = _deep_merge(merged, {k: v for k, v in overrides.items() if v is not None})
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


ENV_PREFIX = "SCEP_SERVER_"
ENV_NESTED_DELIMITER = "__"


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
