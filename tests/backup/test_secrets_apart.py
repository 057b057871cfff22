"""`backup DIR --secrets-dir SECRETS` writes the secrets that open the rest of a backup (the CA passphrase, the OTP
key-encryption key, the default challenge in clear) to a directory of their own, never into DIR; the manifest
says they were written apart (not where), and `restore DIR --secrets-dir SECRETS` reads and checks them there."""
from __future__ import annotations

import asyncio
import json
import shutil
import stat
from pathlib import Path

import aiohttp
import pytest

from tests.factories import NOW
from tests.otp.conftest import make_key, secrets_file
from tests.scep_load.conftest import distinct_keys
from tests.server import start_app

from .support import cli, data_with_a_key, enrol, ra_der, refused

SECRETS = {"ca-passphrase", "otp-kek.key", "default-challenge.txt"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def names_under(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*")}


async def test_secrets_written_apart_are_not_in_the_backup_and_restore_from_their_directory(aiohttp_server, tmp_path):
    srv = await start_app(aiohttp_server, tmp_path)
    admin = (await srv.runtime.tokens.create(scope="admin", name="admin", now=NOW))[1]
    signin = (await srv.runtime.tokens.create(scope="signin", name="signin", now=NOW))[1]
    yubikey = make_key(700_101)
    keys = distinct_keys(2)
    async with aiohttp.ClientSession(srv.url) as http:
        ra = await ra_der(srv.url)
        before = await enrol(http, srv.url, keys[0], ra, srv.challenge(), "device-before")
        async with http.post("/api/v1/yubikeys/import", data=secrets_file([yubikey]), headers=bearer(admin)) as r:
            assert r.status == 201, await r.text()
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": yubikey.otp()},
                             headers=bearer(signin)) as r:
            assert r.status == 200 and (await r.json())["enrolled"] is True

    backup, vault = tmp_path / "backup", tmp_path / "vault" / "scep"
    out = await asyncio.to_thread(cli, "--data-dir", str(srv.data_dir), "backup", str(backup),
                                  "--secrets-dir", str(vault))
    assert f"in {vault}, apart from the backup" in out, out
    # no secret in the backup: neither as a file nor in the manifest
    assert not names_under(backup) & SECRETS, sorted(names_under(backup))
    manifest_text = (backup / "manifest.json").read_text()
    manifest = json.loads(manifest_text)
    assert not set(manifest["files"]) & SECRETS
    assert srv.challenge() not in manifest_text and str(vault) not in manifest_text  # nor where they are
    assert manifest["secrets"]["ca_passphrase"] == {"file": "ca-passphrase", "apart": True}
    assert manifest["secrets"]["otp_kek"]["apart"] is True and manifest["secrets"]["default_challenge"]["apart"] is True
    # the secrets are in their directory, owner-only
    assert {p.name for p in vault.iterdir()} == SECRETS
    assert stat.S_IMODE(vault.stat().st_mode) == 0o700
    for path in vault.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (vault / "otp-kek.key").read_bytes() == (srv.data_dir / "otp-kek.key").read_bytes()
    assert (vault / "ca-passphrase").read_bytes() == (srv.data_dir / "ca" / "passphrase").read_bytes()
    assert (vault / "default-challenge.txt").read_text().strip() == srv.challenge()

    # a restore without them says, in one line, what is missing and which option gives it; nothing is written
    restored = tmp_path / "restored" / "data"
    out = await asyncio.to_thread(cli, "restore", str(backup), "--data-dir", str(restored), code=1)
    errors = [line for line in out.splitlines() if line.startswith("Error: ")]  # the log line is JSON beside it
    assert len(errors) == 1 and errors[0].startswith("Error: restore refused: "), out
    assert "--secrets-dir" in errors[0] and all(name in errors[0] for name in SECRETS), out
    assert not restored.exists() and not restored.parent.exists()

    out = await asyncio.to_thread(cli, "restore", str(backup), "--data-dir", str(restored), "--verify",
                                  "--secrets-dir", str(vault))
    assert "1 YubiKey secret(s)" in out and "schema: head" in out, out
    assert (restored / "default-challenge.txt").read_text().strip() == srv.challenge()
    assert (restored / "otp-kek.key").read_bytes().strip() == (vault / "otp-kek.key").read_bytes().strip()
    assert (restored / "ca" / "passphrase").read_bytes().strip() == (vault / "ca-passphrase").read_bytes().strip()

    srv2 = await start_app(aiohttp_server, tmp_path / "restored")
    signin2 = (await srv2.runtime.tokens.create(scope="signin", name="signin", now=NOW))[1]
    async with aiohttp.ClientSession(srv2.url) as http:
        async with http.post("/api/v1/otp/verify", json={"user": "ada", "otp": yubikey.otp()},
                             headers=bearer(signin2)) as r:
            body = await r.json()
            assert r.status == 200 and body["status"] == "OK" and body["enrolled"] is False, body
        assert await ra_der(srv2.url) == ra
        after = await enrol(http, srv2.url, keys[1], ra, srv2.challenge(), "device-after")
        assert after.issuer == before.issuer


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a data directory after `init` with an OTP key imported, a backup of it, its secrets written apart)."""
    root = tmp_path_factory.mktemp("apart")
    data = data_with_a_key(root, 800_101)
    cli("--data-dir", str(data), "backup", str(root / "backup"), "--secrets-dir", str(root / "secrets"))
    return data, root / "backup", root / "secrets"


@pytest.fixture
def copies(made, tmp_path) -> tuple[Path, Path]:
    shutil.copytree(made[1], tmp_path / "backup")
    shutil.copytree(made[2], tmp_path / "secrets")
    return tmp_path / "backup", tmp_path / "secrets"


@pytest.mark.parametrize("where", ["inside", "same", "holding"])
def test_secrets_nested_with_the_backup_are_refused_and_nothing_is_written(made, tmp_path, where):
    backup = tmp_path / "b" / "backup"
    secrets_dir = {"inside": backup / "secrets", "same": backup / "." / "", "holding": tmp_path / "b"}[where]
    before = names_under(tmp_path)
    out = cli("--data-dir", str(made[0]), "backup", str(backup), "--secrets-dir", str(secrets_dir), code=1)
    assert "backup refused" in out and ("inside the backup directory" in out or "inside the secrets directory" in out)
    assert names_under(tmp_path) == before


def test_secrets_inside_the_backup_through_a_link_are_refused(made, tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    (tmp_path / "link").symlink_to(backup)
    out = cli("--data-dir", str(made[0]), "backup", str(backup), "--secrets-dir", str(tmp_path / "link" / "s"),
              code=1)
    assert "inside the backup directory" in out and not list(backup.iterdir())


def test_a_secrets_directory_that_is_not_empty_is_refused(made, tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "other").write_text("keep me")
    out = cli("--data-dir", str(made[0]), "backup", str(tmp_path / "backup"), "--secrets-dir", str(secrets_dir),
              code=1)
    assert "is not an empty directory" in out and not (tmp_path / "backup").exists()
    assert [p.name for p in secrets_dir.iterdir()] == ["other"]
    (tmp_path / "file").write_text("x")
    out = cli("--data-dir", str(made[0]), "backup", str(tmp_path / "backup"), "--secrets-dir", str(tmp_path / "file"),
              code=2)
    assert "is a file" in out and not (tmp_path / "backup").exists()
    from scep_server.backup import BackupError, _check_secrets_dir  # the API refuses it as well

    with pytest.raises(BackupError, match="is not an empty directory"):
        _check_secrets_dir(tmp_path / "backup", tmp_path / "file")


def test_an_existing_empty_secrets_directory_is_used_and_made_owner_only(made, tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o755)
    cli("--data-dir", str(made[0]), "backup", str(tmp_path / "backup"), "--secrets-dir", str(secrets_dir))
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700 and {p.name for p in secrets_dir.iterdir()} == SECRETS


def test_the_default_is_unchanged_the_secrets_are_in_the_backup(made, tmp_path):
    cli("--data-dir", str(made[0]), "backup", str(tmp_path / "backup"))
    assert SECRETS <= {p.name for p in (tmp_path / "backup").iterdir()}
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert "default_challenge" not in manifest["secrets"] and "default-challenge.txt" in manifest["files"]
    assert "apart" not in manifest["secrets"]["ca_passphrase"] and "apart" not in manifest["secrets"]["otp_kek"]


def test_the_secrets_read_apart_are_checked_as_those_of_a_backup(copies, tmp_path):
    backup, secrets_dir = copies
    # the default challenge must be the one written apart from this backup
    challenge = secrets_dir / "default-challenge.txt"
    original = challenge.read_bytes()
    challenge.write_bytes(original.replace(original[:1], b"Z" if original[:1] != b"Z" else b"Y", 1))
    assert "does not match its checksum" in refused(tmp_path, backup, "--secrets-dir", str(secrets_dir))
    challenge.unlink()
    assert "default-challenge.txt: not in" in refused(tmp_path, backup, "--secrets-dir", str(secrets_dir))
    challenge.write_bytes(original)
    # the passphrase must open the keys, the key-encryption key must be the backup's
    passphrase = secrets_dir / "ca-passphrase"
    kept = passphrase.read_bytes()
    passphrase.write_text("not the passphrase\n")
    assert "does not open with the passphrase" in refused(tmp_path, backup, "--secrets-dir", str(secrets_dir))
    passphrase.write_bytes(kept)
    kek = secrets_dir / "otp-kek.key"
    kek.write_text("ab" * 32 + "\n")
    assert "is not the one of the backup" in refused(tmp_path, backup, "--secrets-dir", str(secrets_dir))
    kek.unlink()
    out = refused(tmp_path, backup, "--secrets-dir", str(secrets_dir))
    assert "the OTP key-encryption key: not in" in out and "where the backup wrote it apart" in out
    # a link in place of a secret is not followed
    kek.symlink_to(tmp_path / "backup" / "manifest.json")
    refused(tmp_path, backup, "--secrets-dir", str(secrets_dir))


def test_the_file_options_still_come_first_and_a_partial_set_names_what_is_missing(copies, tmp_path):
    backup, secrets_dir = copies
    out = refused(tmp_path, backup, "--passphrase-file", str(secrets_dir / "ca-passphrase"),
                  "--kek-file", str(secrets_dir / "otp-kek.key"))
    assert "default-challenge.txt was written apart" in out and "--secrets-dir" in out
    assert "ca-passphrase" not in out.split("restore refused")[1]
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    assert "does not open with the passphrase" in refused(tmp_path, backup, "--secrets-dir", str(secrets_dir),
                                                          "--passphrase-file", str(wrong))


def test_a_manifest_saying_the_secrets_are_apart_reads_no_variable_it_names(copies, tmp_path):
    """The variable a manifest names is never read, apart or not: only this deployment's settings name one."""
    from .test_hostile import resign

    backup, secrets_dir = copies
    shutil.copy(secrets_dir / "ca-passphrase", backup / "ca-passphrase")  # resign reads it there

    def change(manifest):
        manifest["secrets"]["otp_kek"] = {"file": "otp-kek.key", "env": "UNRELATED_DEPLOY_SECRET", "apart": True}

    resign(backup, change)
    (backup / "ca-passphrase").unlink()
    out = cli("restore", str(backup), "--data-dir", str(tmp_path / "new"), "--secrets-dir", str(secrets_dir),
              env={"UNRELATED_DEPLOY_SECRET": "ab" * 32}, code=1)
    assert "says it was written apart, but names no file of its own" in out, out
    assert not (tmp_path / "new").exists()
