"""What backup and restore refuse: a changed file, a changed manifest, the wrong secrets, an existing
directory. A refused restore writes nothing."""
from __future__ import annotations

import base64
import json
import secrets
import shutil
from pathlib import Path

import pytest

from .support import cli, data_with_a_key, refused


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """(a data directory after `init` with an OTP key imported, a backup of it)."""
    root = tmp_path_factory.mktemp("made")
    data = data_with_a_key(root, 800_001)
    cli("--data-dir", str(data), "backup", str(root / "backup"))
    return data, root / "backup"


@pytest.fixture
def copy(made, tmp_path) -> Path:
    target = tmp_path / "backup"
    shutil.copytree(made[1], target)
    return target


def _edit_manifest(backup: Path, change) -> None:
    manifest = json.loads((backup / "manifest.json").read_text())
    change(manifest)
    (backup / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_the_untouched_copy_restores_also_into_an_empty_directory(copy, tmp_path):
    out = cli("restore", str(copy), "--data-dir", str(tmp_path / "new" / "data"), "--verify")
    assert "1 YubiKey secret(s)" in out and "integrity check" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    cli("restore", str(copy), "--data-dir", str(empty))
    assert sorted(p.name for p in empty.iterdir()) == ["ca", "default-challenge.txt", "otp-kek.key", "scep.db"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging directory left


def test_a_changed_file_is_refused(copy, tmp_path):
    cert = copy / "ca" / "default" / "ca.crt"
    cert.write_bytes(cert.read_bytes().replace(b"A", b"B", 1))
    assert "ca/default/ca.crt does not match its checksum" in refused(tmp_path, copy)


def test_a_missing_file_is_refused(copy, tmp_path):
    (copy / "ca" / "default" / "ra.key").unlink()
    assert "ra.key is missing" in refused(tmp_path, copy)


def test_a_changed_database_with_its_checksum_changed_too_is_refused(copy, tmp_path):
    import hashlib
    import sqlite3

    db = copy / "database.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM certificates")
    conn.commit()
    conn.close()

    def change(m):
        m["files"]["database.sqlite3"] = {"sha256": hashlib.sha256(db.read_bytes()).hexdigest(),
                                          "bytes": db.stat().st_size}
    _edit_manifest(copy, change)
    assert "manifest.sig" in refused(tmp_path, copy)


def test_a_manifest_lowering_the_crl_numbers_is_refused(copy, tmp_path):
    _edit_manifest(copy, lambda m: m.update(highest_crl_number={"default": 0}))
    assert "the manifest was changed" in refused(tmp_path, copy)


def test_a_missing_or_forged_signature_is_refused(copy, tmp_path):
    (copy / "manifest.sig").write_bytes(base64.b64encode(secrets.token_bytes(384)))
    refused(tmp_path, copy)
    (copy / "manifest.sig").unlink()
    refused(tmp_path, copy)


def test_a_file_name_outside_the_backup_is_refused(copy, tmp_path):
    (tmp_path / "outside").write_text("x")
    _edit_manifest(copy, lambda m: m["files"].update({"../outside": {"sha256": "0" * 64, "bytes": 1}}))
    assert "not inside the backup" in refused(tmp_path, copy)


def test_a_manifest_that_is_not_json_is_refused(copy, tmp_path):
    (copy / "manifest.json").write_text("{not json")
    assert "not valid JSON" in refused(tmp_path, copy)


def test_the_wrong_passphrase_or_kek_is_refused(copy, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    assert "does not open with the passphrase" in refused(tmp_path, copy, "--passphrase-file", str(wrong))
    wrong.write_bytes(base64.b64encode(secrets.token_bytes(32)))
    assert "is not the one of the backup" in refused(tmp_path, copy, "--kek-file", str(wrong))
    # without the secrets, stored apart and not given
    (copy / "otp-kek.key").unlink()
    assert "OTP key-encryption key" in refused(tmp_path, copy)
    (copy / "ca-passphrase").unlink()
    assert "CA passphrase" in refused(tmp_path, copy)


def test_an_existing_data_directory_is_not_overwritten(copy, tmp_path, made):
    data = tmp_path / "new" / "data"
    data.mkdir(parents=True)
    (data / "scep.db").write_text("keep me")
    out = cli("restore", str(copy), "--data-dir", str(data), code=1)
    assert "is not empty" in out and (data / "scep.db").read_text() == "keep me"


def test_backup_into_a_non_empty_directory_is_refused(made, tmp_path):
    target = tmp_path / "b"
    target.mkdir()
    (target / "other").write_text("x")
    out = cli("--data-dir", str(made[0]), "backup", str(target), code=1)
    assert "not an empty directory" in out and sorted(p.name for p in target.iterdir()) == ["other"]
