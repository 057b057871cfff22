"""Settings of the YubiKey OTP factor (the application embeds them under `[otp]`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_KEK_FILENAME = "otp-kek.key"


class ThrottleSettings(BaseModel):
    """Failure throttling: `max_failures` within `window_seconds` block for `lockout_seconds`."""

    model_config = ConfigDict(extra="forbid")

    max_failures: int = Field(10, ge=1, description="failures within window_seconds before a block")
    window_seconds: int = Field(300, ge=1, description="the window failures are counted in")
    lockout_seconds: int = Field(900, ge=1, description="how long a block lasts")


class OtpSettings(BaseModel):
    """`[otp]` settings; the KEK comes from `kek_env` (an environment variable name) or `kek_file`."""

    model_config = ConfigDict(extra="forbid")

    # Key-encryption key (32 bytes). kek_env wins when both are set; with neither, the application's
    # data directory holds `otp-kek.key`, created on first start.
    kek_file: Path | None = Field(None, description="file holding the key-encryption key (32 bytes) that seals the "
                                  "YubiKeys' AES keys; unset: otp-kek.key in the data directory, created on first "
                                  "start")
    kek_env: str | None = Field(None, description="environment variable holding the key-encryption key (wins over "
                                "kek_file)")
    # Failures that prove nothing about a key's holder (an OTP that does not decrypt or names an unknown
    # or revoked key, a malformed one) never count against a key or a user: they are counted per source
    # address and per API client (protocol 2.0 client, sign-in token). While a source or client is blocked
    # its failures are answered THROTTLED (valid OTPs are still accepted, replays still REPLAYED_OTP).
    throttle_source: ThrottleSettings = Field(
        ThrottleSettings(), description="failures per source address that prove nothing about a key's holder")
    throttle_client: ThrottleSettings = Field(
        ThrottleSettings(max_failures=100), description="the same failures per API client (protocol 2.0 client, "
        "sign-in token)")
    throttle_key: ThrottleSettings = Field(
        ThrottleSettings(), description="fresh OTPs of a key presented for another user than the key's own")
    security_event_retention_days: int = Field(
        90, ge=1, description="days security events (unknown or revoked key, wrong user, throttling) are kept")
    require_signed_requests: bool = Field(
        True, description="protocol 2.0 clients must sign requests (h), unless created or set with allow_unsigned; "
        "false lets every client send unsigned requests, as YK-VAL does")
    wsapi_accept_unassigned: bool = Field(
        True, description="/wsapi/2.0/verify accepts keys nobody has enrolled yet (the service maps keys to users)")
    client_cache_seconds: float = Field(
        5.0, ge=0, description="how long a process trusts its cached view of an API client (a disable or "
        "signature change takes effect at once in the process that made it, in the others after this)")
    key_cache_size: int = Field(
        100_000, ge=0, description="public IDs whose sealed key material a process keeps in memory (state is always "
        "re-checked)")
    commit_batch_max: int = Field(256, ge=1, le=10_000,
                                  description="group commit of counter updates: independent keys per transaction")
    commit_inflight: int = Field(2, ge=1, le=16, description="group commit transactions in flight per process")
    import_max_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                  description="largest secrets file accepted by the import API")

    @model_validator(mode="after")
    def _kek_source(self) -> "OtpSettings":
        if self.kek_env is not None and not self.kek_env.strip():
            raise ValueError("otp.kek_env must name an environment variable")
        return self

    def kek_path(self, data_dir: Path | None = None) -> Path | None:
        """The KEK file in use: None when the KEK comes from the environment."""
        if self.kek_env:
            return None
        if self.kek_file is not None:
            return Path(self.kek_file)
        if data_dir is None:
            raise ValueError("otp: set kek_file or kek_env (no data directory to keep the key in)")
        return Path(data_dir) / DEFAULT_KEK_FILENAME

    def load_kek(self, data_dir: Path | None = None, *, on_create: Callable[[Path], None] | None = None) -> bytes:
        """The KEK from the environment variable, the file, or `data_dir/otp-kek.key` (a missing file
        is created, mode 0600, and `on_create(path)` called)."""
        from .kek import kek_from_env, load_or_create_kek  # cryptography: not for a command that reads settings

        path = self.kek_path(data_dir)
        if path is None:
            return kek_from_env(self.kek_env)  # type: ignore[arg-type]
        return load_or_create_kek(path, on_create=on_create)

    def read_kek(self, data_dir: Path | None = None) -> bytes:
        """The KEK as its source holds it now (read again after a rotation); never creates one."""
        from .kek import kek_from_env, read_kek_file

        path = self.kek_path(data_dir)
        return kek_from_env(self.kek_env) if path is None else read_kek_file(path)  # type: ignore[arg-type]
