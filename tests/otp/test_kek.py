"""The key-encryption key: creation, loading, sealing bound to its associated data; settings."""
from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from otp.config import DEFAULT_KEK_FILENAME, OtpSettings
from otp.kek import KEK_SIZE, KekError, SecretBox, kek_from_env, load_or_create_kek, read_kek_file


def test_created_once_private_and_stable(tmp_path: Path):
    path = tmp_path / "sub" / "otp.kek"
    kek = load_or_create_kek(path)
    assert len(kek) == KEK_SIZE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_kek(path) == kek
    assert base64.b64decode(path.read_text()) == kek
    assert not [p for p in path.parent.iterdir() if p.name != "otp.kek"]  # no temporary file left


@pytest.mark.parametrize("encode", [lambda k: k, lambda k: k.hex().encode() + b"\n", base64.b64encode],
                         ids=["raw", "hex", "base64"])
def test_read_raw_hex_and_base64(tmp_path: Path, encode):
    kek = os.urandom(32)
    path = tmp_path / "k"
    path.write_bytes(encode(kek))
    path.chmod(0o600)
    assert read_kek_file(path) == kek


@pytest.mark.parametrize("content", [b"short", base64.b64encode(bytes(range(16))), b"!" * 44],
                         ids=["short", "base64-of-16-bytes", "not-base64"])
def test_malformed_kek_refused(tmp_path: Path, content):
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(KekError):
        read_kek_file(path)


def test_world_writable_kek_refused(tmp_path: Path):
    path = tmp_path / "k"
    load_or_create_kek(path)
    path.chmod(0o666)
    with pytest.raises(KekError, match="world-writable"):
        read_kek_file(path)


def test_missing_file_message(tmp_path: Path):
    with pytest.raises(KekError, match="cannot read"):
        read_kek_file(tmp_path / "nope")


def test_env():
    kek = os.urandom(32)
    assert kek_from_env("OTP_KEK", {"OTP_KEK": base64.b64encode(kek).decode()}) == kek
    with pytest.raises(KekError, match="not set"):
        kek_from_env("OTP_KEK", {})


def test_sealing_is_bound_to_associated_data_and_kek():
    box = SecretBox(os.urandom(32))
    sealed = box.seal(b"secret aes key!!", b"otp-yubikey:vvccccnrhbfu")
    assert b"secret" not in sealed
    assert box.open(sealed, b"otp-yubikey:vvccccnrhbfu") == b"secret aes key!!"
    with pytest.raises(KekError):
        box.open(sealed, b"otp-yubikey:vvccccnrhbfv")  # copied onto another key's row
    with pytest.raises(KekError):
        SecretBox(os.urandom(32)).open(sealed, b"otp-yubikey:vvccccnrhbfu")
    with pytest.raises(KekError):
        box.open(sealed[:-1] + bytes([sealed[-1] ^ 1]), b"otp-yubikey:vvccccnrhbfu")
    assert box.seal(b"x", b"a") != box.seal(b"x", b"a")  # fresh nonce each time
    kek = os.urandom(32)
    assert kek.hex() not in repr(SecretBox(kek)) and base64.b64encode(kek).decode() not in repr(SecretBox(kek))


def test_settings_defaults_and_strictness():
    s = OtpSettings()
    assert s.throttle_source.max_failures == 10 and s.commit_batch_max == 256
    assert s.require_signed_requests is True and s.throttle_client.max_failures == 100
    with pytest.raises(ValidationError):
        OtpSettings(unknown_key=1)
    with pytest.raises(ValidationError):
        OtpSettings(kek_env=" ")
    with pytest.raises(ValidationError):
        OtpSettings(throttle_key={"max_failures": 0})


def test_settings_kek_sources(tmp_path: Path, monkeypatch):
    kek = load_or_create_kek(tmp_path / "file.kek")
    assert OtpSettings(kek_file=tmp_path / "file.kek").load_kek() == kek
    created = OtpSettings().load_kek(tmp_path / "data")
    assert (tmp_path / "data" / DEFAULT_KEK_FILENAME).exists() and len(created) == 32
    env_kek = os.urandom(32)
    monkeypatch.setenv("SCEP_OTP_KEK", base64.b64encode(env_kek).decode())
    assert OtpSettings(kek_env="SCEP_OTP_KEK", kek_file=tmp_path / "file.kek").load_kek() == env_kek
    with pytest.raises(ValueError):
        OtpSettings().load_kek()
