"""A backup from someone else can be hostile: its manifest is signed with the CA key inside the backup, so whoever
made it can sign any manifest. A restore of such a backup is refused with a message, writes nothing in the
target nor anywhere else, and never ends in a traceback."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from .support import cli


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A backup of a data directory after `init`."""
    root = tmp_path_factory.mktemp("hostile")
    cli("--data-dir", str(root / "data"), "init")
    cli("--data-dir", str(root / "data"), "backup", str(root / "backup"))
    return root / "backup"


@pytest.fixture
def copy(made, tmp_path) -> Path:
    target = tmp_path / "backup"
    shutil.copytree(made, target)
    return target


def resign(backup: Path, change) -> None:
    """Edit the manifest and sign it again with the backup's own CA key, as whoever made the backup can."""
    from scep_server.ca.keys import FileKey

    manifest = json.loads((backup / "manifest.json").read_text())
    change(manifest)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (backup / "manifest.json").write_bytes(data)
    passphrase = (backup / "ca-passphrase").read_bytes().strip()
    key = FileKey.load(backup / "ca" / "default" / "ca.key", passphrase)
    (backup / "manifest.sig").write_bytes(base64.b64encode(key.sign(data, hashes.SHA256())) + b"\n")


def replace_member(backup: Path, rel: str, data: bytes) -> None:
    """Replace a file of the backup, with its checksum in a manifest signed again."""
    (backup / rel).write_bytes(data)
    resign(backup, lambda m: m["files"].update({rel: {"sha256": hashlib.sha256(data).hexdigest(),
                                                      "bytes": len(data)}}))


def refused(tmp_path: Path, backup: Path) -> str:
    new = tmp_path / "new" / "data"
    new.parent.mkdir(exist_ok=True)
    out = cli("restore", str(backup), "--data-dir", str(new), code=1)  # a message, not a traceback
    assert "restore refused: " in out
    assert not list(new.parent.iterdir())  # nothing written, no staging left
    return out


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["../../../escaped", "ABSOLUTE", "default/../../../escaped", "a/b", ".."])
def test_a_ca_name_that_is_not_a_name_is_refused_and_nothing_is_written_elsewhere(copy, tmp_path, name):
    escaped = tmp_path / "elsewhere" / "escaped"
    if name == "ABSOLUTE":
        name = str(escaped)
    resign(copy, lambda m: m["ca"].update(name=name))
    before = files_under(tmp_path)
    assert "is not one the configuration accepts" in refused(tmp_path, copy)
    assert not escaped.exists() and not (tmp_path / "escaped").exists()
    assert files_under(tmp_path) - {"new"} == before


def test_a_destination_outside_the_staging_directory_is_refused(tmp_path):
    from scep_server.backup import BackupError, _staged

    staging = tmp_path / "staging"
    staging.mkdir()
    assert _staged(staging, "ca/default/ca.crt") == staging / "ca" / "default" / "ca.crt"
    for rel in ("../x", "ca/../../x", str(tmp_path / "x"), Path("ca", "default", "/etc/x")):
        with pytest.raises(BackupError, match="not inside the restored data directory"):
            _staged(staging, rel)


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384"])
def test_a_backup_of_an_ec_ca_restores_and_its_ca_loads(tmp_path, key_type):
    env = {"SCEP_SERVER_CA__KEY_TYPE": key_type}
    cli("--data-dir", str(tmp_path / "data"), "init", env=env)
    cli("--data-dir", str(tmp_path / "data"), "backup", str(tmp_path / "backup"), env=env)
    new = tmp_path / "restored"
    out = cli("restore", str(tmp_path / "backup"), "--data-dir", str(new), env=env)
    assert "schema: head" in out
    assert "default" in cli("--data-dir", str(new), "ca", "list", env=env)  # the restored CA keys open
    from scep_server.ca.keys import FileKey

    key = FileKey.load(new / "ca" / "default" / "ca.key", (new / "ca" / "passphrase").read_bytes().strip())
    assert key.public_key().curve.name == {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}[key_type]
    # a manifest changed after the EC key signed it is refused, as with an RSA key
    manifest = tmp_path / "backup" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format": 1', '"format": 1, "extra": 1'))
    assert "the manifest was changed" in refused(tmp_path, tmp_path / "backup")


@pytest.mark.parametrize("where", ["absolute", "unlisted", "outside"])
def test_the_database_is_the_backups_own_checked_file_and_no_other(made, copy, tmp_path, where):
    if where == "absolute":  # any database on the host, here the one the backup was made from
        name = str(made.parent / "data" / "scep.db")
    elif where == "unlisted":  # inside the backup, but with no checksum in the manifest
        shutil.copy(copy / "database.sqlite3", copy / "other.sqlite3")
        name = "other.sqlite3"
    else:
        shutil.copy(copy / "database.sqlite3", tmp_path / "outside.sqlite3")
        name = "../outside.sqlite3"
    resign(copy, lambda m: m["database"].update(file=name))
    assert "the database must be the backup's database.sqlite3" in refused(tmp_path, copy)
    # and a database.sqlite3 the manifest does not list is not read either
    resign(copy, lambda m: (m["database"].update(file="database.sqlite3"), m["files"].pop("database.sqlite3")))
    assert "listed with its checksum" in refused(tmp_path, copy)


def _foreign_sqlite() -> bytes:
    """A SQLite database that is not this software's: its alembic_version has no version_num."""
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "db")
        conn.execute("CREATE TABLE alembic_version (other TEXT)")
        conn.execute("INSERT INTO alembic_version VALUES ('x')")
        conn.commit()
        conn.close()
        return (Path(tmp) / "db").read_bytes()


def _with_crl_number(backup: Path, value) -> None:
    """The backup's database, its CA's last CRL Number set to `value`."""
    import sqlite3

    db = backup / "database.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM crl_state")
    conn.execute("INSERT INTO crl_state (ca, last_number) VALUES ('default', ?)", (value,))
    conn.commit()
    conn.close()
    replace_member(backup, "database.sqlite3", db.read_bytes())


MALFORMED = {
    "database file a number": (lambda b: resign(b, lambda m: m["database"].update(file=7)), "the database must be"),
    "CRL Number too large": (lambda b: resign(b, lambda m: m["highest_crl_number"].update(default=10**30)),
                             "the CRL Numbers are malformed"),
    "CA name with a NUL": (lambda b: resign(b, lambda m: m["ca"].update(name="de\0fault")),
                           "is not one the configuration accepts"),
    "no time": (lambda b: resign(b, lambda m: m.pop("created_at")), "the time or the versions"),
    "manifest nested deeply": (lambda b: (b / "manifest.json").write_text("[" * 200_000 + "]" * 200_000),
                               "nested too deeply"),
    "garbage ca.crt": (lambda b: replace_member(b, "ca/default/ca.crt", b"garbage\n"),
                       "ca.crt of the backup is not a certificate"),
    "garbage ra.crt": (lambda b: replace_member(b, "ca/default/ra.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                                                        b"-----END CERTIFICATE-----\n"),
                       "ra.crt of the backup is not a certificate"),
    "database CRL Number at the limit": (lambda b: _with_crl_number(b, 2**63 - 1), "leave no room for the gap"),
    "database CRL Number not a number": (lambda b: _with_crl_number(b, "many"), "CRL Numbers of CA default are"),
    "garbage database": (lambda b: replace_member(b, "database.sqlite3", b"garbage" * 1000),
                         "database.sqlite3 is not a SQLite database"),
    "foreign database": (lambda b: replace_member(b, "database.sqlite3", _foreign_sqlite()),
                         "the database is not one this software reads"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_member_is_refused_with_a_message(copy, tmp_path, case):
    spoil, reason = MALFORMED[case]
    spoil(copy)
    before = files_under(tmp_path)
    assert reason in refused(tmp_path, copy)  # exit code 1, "restore refused: ...", never a traceback
    assert files_under(tmp_path) - {"new"} == before


def _link_outside(backup: Path, tmp_path: Path, kind: str) -> None:
    """Make a member of the backup something else than a regular file of its own, pointing outside it."""
    import os

    outside = tmp_path / "outside"
    outside.mkdir()
    member = backup / "ca" / "default" / "ra.crt"
    if kind == "symbolic link to a file":  # same content: its checksum holds, only the link is wrong
        shutil.copy(member, outside / "ra.crt")
        member.unlink()
        member.symlink_to(outside / "ra.crt")
    elif kind == "symbolic link to a directory":
        shutil.move(backup / "ca", outside / "ca")
        (backup / "ca").symlink_to(outside / "ca")
    elif kind == "unlisted symbolic link":  # named as a secret, read though the manifest does not list it
        (outside / "secret").write_bytes((backup / "ca-passphrase").read_bytes())
        (backup / "ca-passphrase").unlink()
        (backup / "ca-passphrase").symlink_to(outside / "secret")
    elif kind == "hard link":
        os.link(member, outside / "ra.crt")
    elif kind == "fifo":
        os.mkfifo(backup / "ca" / "default" / "extra.key")


@pytest.mark.parametrize("kind", ["symbolic link to a file", "symbolic link to a directory", "unlisted symbolic link",
                                  "hard link", "fifo"])
def test_a_member_that_is_not_a_regular_file_of_its_own_is_refused(copy, tmp_path, kind):
    _link_outside(copy, tmp_path, kind)
    before = files_under(tmp_path)
    assert "a backup holds regular files and directories only" in refused(tmp_path, copy)
    assert files_under(tmp_path) - {"new"} == before


@pytest.mark.parametrize("change, reason", [
    (lambda m: m["secrets"]["ca_passphrase"].update(file="database.sqlite3"), "must be the backup's ca-passphrase"),
    (lambda m: m["secrets"].update(otp_kek={"file": "ca/default/ca.key"}), "must be the backup's otp-kek.key"),
    (lambda m: m["ca"].update(directory="."), "is not ca/default"),
    (lambda m: m["files"].update({"ca/default/./ca.crt": m["files"]["ca/default/ca.crt"]}), "not in its plain form"),
    (lambda m: m["files"].update({"ca//default/ca.crt": m["files"]["ca/default/ca.crt"]}), "not in its plain form"),
    (lambda m: m["files"].update({"ca/default/sub/ca.crt": m["files"]["ca/default/ca.crt"]}),
     "is not a file of a CA directory"),
])
def test_a_member_named_otherwise_than_the_backup_names_it_is_refused(copy, tmp_path, change, reason):
    (copy / "ca" / "default" / "sub").mkdir()
    shutil.copy(copy / "ca" / "default" / "ca.crt", copy / "ca" / "default" / "sub" / "ca.crt")
    resign(copy, change)
    assert reason in refused(tmp_path, copy)  # a message: two names of one file were a traceback


def _other_ca(backup: Path, *, crt: str = "ca.crt", ra_crt: str = "ra.crt", key: bytes | None = None) -> None:
    """A CA directory `ca/other/` (as a rollover makes) of the CA's files, its certificates taken from `crt` and
    `ra_crt` of the CA, its key `key` (the CA's by default)."""
    ca = backup / "ca" / "default"
    (backup / "ca" / "other").mkdir()
    for name, data in (("ca.key", key or (ca / "ca.key").read_bytes()), ("ra.key", (ca / "ra.key").read_bytes()),
                       ("ca.crt", (ca / crt).read_bytes()), ("ra.crt", (ca / ra_crt).read_bytes())):
        replace_member(backup, f"ca/other/{name}", data)


def _key_under_another_passphrase(backup: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    from scep_server.ca.keys import FileKey

    key = FileKey.load(backup / "ca" / "default" / "ca.key", (backup / "ca-passphrase").read_bytes().strip())
    return key.in_process_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.BestAvailableEncryption(b"another passphrase"))


CA_DIRECTORIES = {
    "a rollover's ca.crt of another key": (lambda b: _other_ca(b, crt="ra.crt"),
                                           "ca/other/ca.crt is not the certificate of ca.key"),
    "a rollover's ra.crt of another key": (lambda b: _other_ca(b, ra_crt="ca.crt"),
                                           "ca/other/ra.crt is not the certificate of ra.key"),
    "a rollover's key under another passphrase": (lambda b: _other_ca(b, key=_key_under_another_passphrase(b)),
                                                  "ca/other/ca.key does not open with the passphrase"),
    "a rollover without its RA": (lambda b: (_other_ca(b), resign(b, lambda m: (m["files"].pop("ca/other/ra.crt")))),
                                  "ca/other: ra.crt or ra.key is missing"),
    "an RA renewal of another key": (lambda b: (replace_member(b, "ca/default/ra-1.crt",
                                                               (b / "ca/default/ca.crt").read_bytes()),
                                                replace_member(b, "ca/default/ra-1.key",
                                                               (b / "ca/default/ra.key").read_bytes())),
                                     "ca/default/ra-1.crt is not the certificate of ra-1.key"),
    "a prepared next CA of another key": (lambda b: (replace_member(b, "ca/default/next-ca.crt",
                                                                    (b / "ca/default/ra.crt").read_bytes()
                                                                    + (b / "ca/default/ra.crt").read_bytes()),
                                                     replace_member(b, "ca/default/next-ca.key",
                                                                    (b / "ca/default/ca.key").read_bytes()),
                                                     replace_member(b, "ca/default/next-ra.key",
                                                                    (b / "ca/default/ra.key").read_bytes())),
                                          "ca/default/next-ca.crt is not the certificate of next-ca.key"),
    "ca/active naming a path": (lambda b: replace_member(b, "ca/active", b"../../../../tmp/elsewhere\n"),
                                "which is not a CA directory of the backup"),
    "ca/active naming no CA of the backup": (lambda b: replace_member(b, "ca/active", b"default-g9\n"),
                                             "which is not a CA directory of the backup"),
}


@pytest.mark.parametrize("case", list(CA_DIRECTORIES))
def test_every_ca_directory_holds_certificates_of_its_keys(copy, tmp_path, case):
    spoil, reason = CA_DIRECTORIES[case]
    spoil(copy)
    assert reason in refused(tmp_path, copy)


def test_a_ca_directory_of_matching_files_and_ca_active_naming_it_restore(copy, tmp_path):
    _other_ca(copy)
    replace_member(copy, "ca/active", b"other\n")
    new = tmp_path / "new" / "data"
    cli("restore", str(copy), "--data-dir", str(new))
    assert (new / "ca" / "active").read_text() == "other\n" and (new / "ca" / "other" / "ca.crt").is_file()


def _sparse(path: Path, size: int) -> dict:
    """`path` made a sparse file of `size` bytes (a few KB on disk, zeros when read); its manifest entry."""
    with path.open("r+b") as fh:
        fh.truncate(size)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


@pytest.mark.parametrize("rel", ["default-challenge.txt", "ca/default/ca.crt", "ca-passphrase", "manifest.json"])
def test_a_huge_member_is_refused_before_it_is_read_or_copied(copy, tmp_path, rel):
    """A sparse file takes a few KB in the backup and its full size once copied: every file but the database is
    at most MAX_MEMBER_BYTES, checked before it is hashed, read or copied."""
    from scep_server.backup import MAX_MEMBER_BYTES

    if rel == "manifest.json":
        (copy / rel).write_text(json.dumps({"format": 1, "padding": " " * MAX_MEMBER_BYTES}))
    else:
        entry = _sparse(copy / rel, 64 * MAX_MEMBER_BYTES)
        if rel != "ca-passphrase":  # the secrets are not listed (they are kept apart)
            resign(copy, lambda m: m["files"].update({rel: entry}))
    assert f"is larger than {MAX_MEMBER_BYTES} bytes" in refused(tmp_path, copy)


def test_a_database_larger_than_the_free_space_is_refused_before_it_is_hashed(copy, tmp_path, monkeypatch):
    import scep_server.backup as backup

    size = (copy / "database.sqlite3").stat().st_size
    real = shutil.disk_usage
    monkeypatch.setattr(backup.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=backup.FREE_MARGIN_BYTES + size - 1))
    monkeypatch.setattr(backup, "sha256_file", lambda path: pytest.fail("hashed before the size was checked"))
    assert "do not fit in the" in refused(tmp_path, copy)


def test_a_refused_restore_removes_the_directories_it_made(copy, tmp_path):
    replace_member(copy, "database.sqlite3", b"garbage" * 1000)  # refused after the staging directory is made
    new = tmp_path / "made" / "by" / "restore" / "data"
    cli("restore", str(copy), "--data-dir", str(new), code=1)
    assert not (tmp_path / "made").exists()


@pytest.mark.parametrize("failing", ["ca", "scep.db"])
def test_a_restore_into_an_empty_directory_failing_half_way_leaves_it_empty(copy, tmp_path, monkeypatch, failing):
    import os

    import scep_server.backup as backup

    new = tmp_path / "new" / "data"
    new.mkdir(parents=True)
    rename = os.rename

    def flaky(src, dst):
        if Path(dst).parent == new and Path(dst).name == failing:
            raise OSError(28, "No space left on device", str(dst))
        return rename(src, dst)
    monkeypatch.setattr(backup.os, "rename", flaky)
    out = cli("restore", str(copy), "--data-dir", str(new), code=1)  # a message, not a traceback
    assert "restore refused: cannot move the restored files" in out
    assert list(new.iterdir()) == [] and list(new.parent.iterdir()) == [new]  # no half restore, no staging


@pytest.mark.parametrize("statement", [
    # it would set the CRL Number back after the restore raised it above the floor
    "CREATE TRIGGER keep_low AFTER UPDATE ON crl_state BEGIN UPDATE crl_state SET last_number = 0; END",
    # it would undo every revocation in the restored server
    "CREATE TRIGGER keep_valid AFTER UPDATE OF status ON certificates BEGIN "
    "UPDATE certificates SET status = OLD.status WHERE rowid = NEW.rowid; END",
    "CREATE VIEW shadow AS SELECT 1",
])
def test_a_database_with_a_trigger_or_a_view_is_refused(copy, tmp_path, statement):
    import sqlite3

    _with_crl_number(copy, 5)
    db = copy / "database.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute(statement)
    conn.commit()
    conn.close()
    replace_member(copy, "database.sqlite3", db.read_bytes())
    assert "holds what this software's schema never has" in refused(tmp_path, copy)


def test_a_manifest_cannot_choose_the_environment_variable_a_restore_reads(copy, tmp_path):
    """A backup signs its own manifest, so whoever made it chooses the names in it. A restore read the variable its
    manifest named for a secret missing from the backup, and wrote that variable's value into the new data
    directory as the OTP key-encryption key (any 32-byte value of this host's environment). It reads only the
    variable this deployment's settings name, and mentions the backup's."""
    def change(manifest):
        manifest["secrets"]["otp_kek"] = {"file": "otp-kek.key", "env": "UNRELATED_DEPLOY_SECRET"}

    resign(copy, change)
    (copy / "otp-kek.key").unlink(missing_ok=True)
    new = tmp_path / "new" / "data"
    out = cli("restore", str(copy), "--data-dir", str(new), env={"UNRELATED_DEPLOY_SECRET": "ab" * 32}, code=1)
    assert "the OTP key-encryption key: not in the backup" in out and "$UNRELATED_DEPLOY_SECRET" in out, out
    assert not (new / "otp-kek.key").exists() and not new.exists()
    # the deployment's own variable is read
    out = cli("restore", str(copy), "--data-dir", str(new), env={"UNRELATED_DEPLOY_SECRET": "ab" * 32,
                                                                 "SCEP_SERVER_OTP__KEK_ENV": "MY_KEK",
                                                                 "MY_KEK": "cd" * 32}, code=0)
    assert (new / "otp-kek.key").read_text().strip() == "cd" * 32, out
