"""`scep-server backup` and `scep-server restore`: a consistent copy of a deployment, and its restoration.

A backup directory holds:

- ``database.sqlite3``: the SQLite database, copied through SQLite's online backup API (a consistent snapshot
  taken while servers keep writing; PostgreSQL is backed up with ``pg_dump`` instead, see :func:`pg_dump_command`);
- ``ca/<name>/``: the CA directory (``ca.key`` and ``ra.key`` encrypted with the CA passphrase, the certificates);
- ``default-challenge.txt``, when the data directory has it: the ``default`` profile's first challenge password, in
  clear (a secret until that profile's secret is rotated);
- ``otp-kek.key``: the OTP key-encryption key, and ``ca-passphrase``: the CA passphrase, when they are files (from
  the environment they are not copied). Both are secrets that open the rest: they are meant to be stored apart
  from the other files (``restore --kek-file`` / ``--passphrase-file`` read them from wherever they are kept);
- with ``backup --secrets-dir SECRETS``, ``ca-passphrase``, ``otp-kek.key`` and ``default-challenge.txt`` are
  written to SECRETS (a directory of its own, neither inside the backup nor holding it) instead: the manifest
  records that they were written apart (never where), and the SHA-256 of the default challenge, and
  ``restore --secrets-dir SECRETS`` reads them from there;
- ``manifest.json``: format, time, versions, the migration heads and the CRL Numbers of the copied database, and
  the SHA-256 of every other file; ``manifest.sig``: its signature by the CA key, so that an edited manifest is
  refused as surely as an edited file.

Every file is written with mode 0600 (directories 0700). A restore checks all of it before it writes anything,
writes into a new data directory (never over an existing one), and raises each CA's CRL Number floor above any
number the backup saw by a margin, so that CRLs signed after the restore are numbered above those the old
deployment may have published after the backup (RFC 5280 §5.2.3: CRL Numbers only grow).
"""
from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import sqlite3
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa

from trustkit.db import create_engine, is_sqlite, make_url, normalise_url, shown_url, writer

from .config import CA_NAME_PATTERN, Settings

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
DATABASE_FILE = "database.sqlite3"
KEK_FILE = "otp-kek.key"
PASSPHRASE_FILE = "ca-passphrase"
# data-directory files copied beside the CA directory when present
CHALLENGE_FILE = "default-challenge.txt"
EXTRA_FILES = (CHALLENGE_FILE,)
# the secrets of a backup, each under the name of its file (in the backup, or in the directory of `--secrets-dir`)
SECRET_FILES = {"ca_passphrase": PASSPHRASE_FILE, "otp_kek": KEK_FILE, "default_challenge": CHALLENGE_FILE}
# how far a restore raises each CA's CRL Number above the highest number the backup saw (see the module doc)
DEFAULT_CRL_NUMBER_GAP = 1_000_000
# files of a CA directory that are not copied (the lock of concurrent first starts)
_SKIPPED_CA_FILES = {"ca.lock"}
# the largest CRL Number the database stores (a signed 64-bit BIGINT): a restore raises no floor above it
MAX_CRL_NUMBER = 2**63 - 1
# the largest file but the database a restore reads or copies (certificates, keys, secrets, the manifest are a few
# KB): a hostile backup's huge (or sparse) member is refused before it is hashed, read into memory or copied
MAX_MEMBER_BYTES = 1 << 20
# room a restore leaves free on the new data directory's file system beyond the files it copies
FREE_MARGIN_BYTES = 64 << 20


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why (nothing was written, or what was)."""


class PostgresBackup(BackupError):
    """The database is PostgreSQL: its backup is pg_dump's (the message holds the command)."""


# ---------------------------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _private_copy(src: Path, dst: Path) -> None:
    """Copy `src` to a new file `dst` (mode 0600, fsynced); never an overwrite."""
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
        shutil.copyfileobj(inp, out)
        out.flush()
        os.fsync(out.fileno())


def _private_write(dst: Path, data: bytes) -> None:
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _private_dirs(root: Path) -> None:
    """Every directory under `root` (and `root`) readable by the owner only."""
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o700)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def software_versions() -> dict[str, str]:
    from importlib import metadata

    try:
        own = metadata.version("scep-server")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
        own = "unknown"
    return {"scep_server": own, "python": platform.python_version(), "sqlite": sqlite3.sqlite_version}


def script_heads() -> list[str]:
    """The migration heads this software knows (every branch: core, crl, otp ...)."""
    from alembic.script import ScriptDirectory

    from .store.migrate import alembic_config

    return sorted(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def schema_state(revisions: list[str]) -> str:
    """"head", "upgradable" (every revision known, some behind) or "unknown" (a revision this software lacks:
    the database comes from a newer version)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from .store.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    if sorted(revisions) == sorted(script.get_heads()):
        return "head"
    for rev in revisions:
        try:
            if script.get_revision(rev) is None:
                return "unknown"
        except CommandError:
            return "unknown"
    return "upgradable"


def pg_dump_command(url: str, directory: Path) -> str:
    """The pg_dump command that backs up the database of `url` into `directory` (the password is not shown:
    give it through PGPASSWORD or ~/.pgpass)."""
    import shlex

    u = make_url(normalise_url(url))
    parts = ["pg_dump", "--format=custom", f"--file={directory / 'database.pgdump'}"]
    if u.host:  # what is before an @ in it is the end of a password holding an unencoded @: not shown
        parts.append(f"--host={u.host.rpartition('@')[2]}")
    if u.port:
        parts.append(f"--port={u.port}")
    if u.username:
        parts.append(f"--username={u.username}")
    parts.append(f"--dbname={u.database}")
    return " ".join(shlex.quote(p) for p in parts)


# ---------------------------------------------------------------------------------------------- backup


def _sqlite_path(url: str) -> Path:
    db = make_url(normalise_url(url)).database
    if not db or db == ":memory:":
        raise BackupError("the database is an in-memory SQLite database: there is nothing to back up")
    return Path(db)


def _online_backup(source: Path, target: Path) -> None:
    """Copy the live database with sqlite3's online backup API (blocking: runs on a thread of its own).

    The copy is a snapshot of one moment: what was committed before the backup began is in it, servers go on
    writing meanwhile. The copy leaves WAL mode, so that it is one self-contained file."""
    if not source.exists():
        raise BackupError(f"the database {source} does not exist (run `scep-server init` first)")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            # in one step: one read transaction, which in WAL mode blocks no writer; a copy in several steps
            # would start over after each write of another connection, and might never end under load
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()
    with target.open("rb+") as fh:
        os.fsync(fh.fileno())


def _read_copy(path: Path) -> tuple[list[str], dict[str, dict[str, int | None]]]:
    """(migration revisions, CRL numbers per CA) of a copied SQLite database."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _db_facts_sync(conn)
    finally:
        conn.close()


def _db_facts_sync(conn) -> tuple[list[str], dict[str, dict[str, int | None]]]:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    revisions = sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version")) \
        if "alembic_version" in tables else []
    crl: dict[str, dict[str, int | None]] = {}
    if "crl_state" in tables:
        for ca, last, published in conn.execute("SELECT ca, last_number, crl_number FROM crl_state ORDER BY ca"):
            crl[ca] = {"last_allocated": int(last or 0), "published": None if published is None else int(published)}
    return revisions, crl


async def _pg_facts(url: str) -> tuple[list[str], dict[str, dict[str, int | None]]]:
    from crl.tables import crl_state

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            revisions = sorted((await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars()) \
                if "alembic_version" in names else []
            crl: dict[str, dict[str, int | None]] = {}
            if "crl_state" in names:
                rows = await conn.execute(sa.select(crl_state.c.ca, crl_state.c.last_number, crl_state.c.crl_number))
                for ca, last, published in rows:
                    crl[ca] = {"last_allocated": int(last or 0),
                               "published": None if published is None else int(published)}
    finally:
        await engine.dispose()
    return revisions, crl




@dataclass
class BackupResult:
    directory: Path
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _check_secrets_dir(directory: Path, secrets_dir: Path) -> None:
    """`secrets_dir` can receive a backup's secrets apart from `directory` (BackupError otherwise): neither is
    inside the other (nor the same), and it is absent or an empty directory."""
    backup_at, secrets_at = directory.resolve(), secrets_dir.resolve()
    if secrets_at == backup_at or secrets_at.is_relative_to(backup_at):
        raise BackupError(f"the secrets directory {secrets_dir} is inside the backup directory {directory}: the "
                          "secrets are written apart from the backup, to a directory outside it")
    if backup_at.is_relative_to(secrets_at):
        raise BackupError(f"the backup directory {directory} is inside the secrets directory {secrets_dir}: the "
                          "secrets are written apart from the backup, to a directory that does not hold it")
    if os.path.lexists(secrets_dir) and not (secrets_dir.is_dir() and not secrets_dir.is_symlink()
                                             and _is_empty_dir(secrets_dir)):
        raise BackupError(f"{secrets_dir} is not an empty directory: a backup's secrets are written into a new or "
                          "empty one")


async def create_backup(settings: Settings, directory: Path, *, now: datetime, files_only: bool = False,
                        secrets_dir: Path | None = None) -> BackupResult:
    """Back up the deployment of `settings` into `directory` (absent or empty; created 0700).

    With `secrets_dir` (absent or empty, created 0700; neither inside `directory` nor holding it), the CA
    passphrase, the OTP key-encryption key and the default challenge are written there instead of into
    `directory`, and the manifest records that they were (not where).

    On PostgreSQL this raises PostgresBackup (nothing written) unless `files_only`: then the CA directory and the
    secrets are copied and the manifest records the database's migration heads and CRL Numbers, and the
    database itself is the operator's pg_dump."""
    from cryptography.hazmat.primitives import hashes

    from .ca.keys import FileKey, load_or_create_passphrase
    from .ca.rollover import ACTIVE_FILE

    directory = Path(directory)
    url = settings.database_url()
    postgres = not is_sqlite(normalise_url(url))
    if postgres and not files_only:
        raise PostgresBackup(
            "the database is PostgreSQL: this command does not copy it; pg_dump does, with a consistent snapshot "
            "taken while the servers run. Back up the CA directory and the secrets, then the database:\n"
            f"  scep-server backup --files-only {directory}\n  {pg_dump_command(url, directory)}\n"
            "(pg_dump reads the password from PGPASSWORD or ~/.pgpass; restore with pg_restore into an empty "
            "database, then `scep-server restore` with database.url set to it)")
    if directory.exists() and not _is_empty_dir(directory):
        raise BackupError(f"{directory} is not an empty directory: a backup is written into a new or empty one")
    if secrets_dir is not None:
        secrets_dir = Path(secrets_dir)
        _check_secrets_dir(directory, secrets_dir)
    ca_dir = settings.ca_dir()
    if not (ca_dir / "ca.crt").exists():
        raise BackupError(f"no CA in {ca_dir}: nothing to back up (run `scep-server init` first)")
    # the passphrase is needed to sign the manifest: read it (never created here) before anything is written
    passphrase_path = settings.passphrase_path()
    from_env = bool(os.environ.get(settings.ca.passphrase_env))
    if not from_env and not passphrase_path.exists():
        raise BackupError(f"the CA passphrase is neither in ${settings.ca.passphrase_env} nor in {passphrase_path}")
    passphrase = load_or_create_passphrase(settings.ca.passphrase_env, passphrase_path, keys_in=ca_dir.parent)
    try:
        ca_key = FileKey.load(ca_dir / "ca.key", passphrase)  # it signs the manifest
    except (OSError, ValueError, TypeError) as exc:
        raise BackupError(f"cannot open the CA key {ca_dir / 'ca.key'} with the passphrase: {exc}") from None
    created = not directory.exists()
    secrets_created = secrets_dir is not None and not secrets_dir.exists()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    try:
        if secrets_dir is not None:
            secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(secrets_dir, 0o700)
        # where the secrets go: the backup itself, or the directory apart from it
        secrets_to = directory if secrets_dir is None else secrets_dir
        apart = {"apart": True} if secrets_dir is not None else {}
        where = ("store it apart from the backup" if secrets_dir is None
                 else f"in {secrets_dir}, apart from the backup")
        notes: list[str] = []
        files: dict[str, dict[str, Any]] = {}

        def add(rel: str) -> None:
            path = directory / rel
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}

        # 1. the database (the online backup runs on a thread: the event loop, if a server shares it, keeps going)
        if postgres:
            try:
                revisions, crl_numbers = await _pg_facts(url)
            except Exception as exc:
                _database_unusable(settings, exc)
                raise
            database = {"kind": "postgresql", "included": False}
            notes.append(f"database: not included (PostgreSQL): {pg_dump_command(url, directory)}")
        else:
            target = directory / DATABASE_FILE
            try:
                await asyncio.to_thread(_online_backup, _sqlite_path(url), target)
            except sqlite3.Error as exc:  # not a database, unreadable; or the copy cannot be written
                raise BackupError(f"cannot copy the database {_sqlite_path(url)}: {type(exc).__name__}: {exc}") \
                    from None
            revisions, crl_numbers = await asyncio.to_thread(_read_copy, target)
            add(DATABASE_FILE)
            database = {"kind": "sqlite", "file": DATABASE_FILE}
            notes.append(f"database: {DATABASE_FILE} ({files[DATABASE_FILE]['bytes']} bytes)")
        # 2. the CA directory, and those of the CAs a rollover made (and `ca/active`, which of them issues)
        others = sorted(p for p in ca_dir.parent.iterdir()
                        if p.is_dir() and p != ca_dir and not p.name.startswith(".") and (p / "ca.crt").is_file())
        for one in [ca_dir, *others]:
            for src in sorted(one.iterdir()):
                if src.is_file() and src.name not in _SKIPPED_CA_FILES and not src.name.startswith("."):
                    rel = f"ca/{settings.ca.name if one == ca_dir else one.name}/{src.name}"
                    _private_copy(src, directory / rel)
                    add(rel)
        notes.append(f"CA directory: ca/{settings.ca.name}/" + "".join(f", ca/{p.name}/" for p in others))
        previous = sorted(rel for rel in files if rel.endswith(".key.previous"))
        if previous:
            notes.append(f"{', '.join(previous)}: the keys encrypted with the passphrase before the last `ca passphrase "
                         "change` (kept in the CA directory until removed; this backup's passphrase does not open them)")
        if (ca_dir.parent / ACTIVE_FILE).is_file():
            _private_copy(ca_dir.parent / ACTIVE_FILE, directory / "ca" / ACTIVE_FILE)
            add(f"ca/{ACTIVE_FILE}")
        # 3. the secrets, each in a file of its own
        secrets_: dict[str, Any] = {}
        for name in EXTRA_FILES:
            if (settings.data_dir / name).is_file():
                _private_copy(settings.data_dir / name, secrets_to / name)
                if secrets_dir is None:
                    add(name)
                else:  # its checksum (the database holds the SHA-256 of the secret anyway), and that it is apart
                    secrets_["default_challenge"] = {"file": name, "sha256": sha256_file(secrets_dir / name),
                                                     "bytes": (secrets_dir / name).stat().st_size, **apart}
                notes.append(f"{name}: the `default` profile's challenge password as first made (it enrols devices "
                             "until that profile's secret is rotated)" + ("" if secrets_dir is None else f"; {where}"))
        if from_env:
            secrets_["ca_passphrase"] = {"env": settings.ca.passphrase_env}
            notes.append(f"CA passphrase: not copied (from ${settings.ca.passphrase_env}); keep it safe")
        else:
            _private_copy(passphrase_path, secrets_to / PASSPHRASE_FILE)
            secrets_["ca_passphrase"] = {"file": PASSPHRASE_FILE, **apart}
            notes.append(f"CA passphrase: {PASSPHRASE_FILE} ({where})")
        secrets_["otp_kek"] = _backup_kek(settings, secrets_to, notes, apart=bool(apart), where=where)
        # 4. the manifest, signed by the CA key
        manifest = {
            "format": FORMAT,
            "created_at": now.isoformat(),
            "versions": software_versions(),
            "database": database,
            "migration_heads": revisions,
            "crl_numbers": crl_numbers,
            "highest_crl_number": {ca: max(v["last_allocated"] or 0, v["published"] or 0)
                                   for ca, v in crl_numbers.items()},
            "ca": {"name": settings.ca.name, "directory": f"ca/{settings.ca.name}"},
            "secrets": secrets_,
            "files": files,
        }
        data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        _private_write(directory / MANIFEST, data)
        _private_write(directory / SIGNATURE, base64.b64encode(ca_key.sign(data, hashes.SHA256())) + b"\n")
        _private_dirs(directory)
        if secrets_dir is not None:
            _private_dirs(secrets_dir)
    except BaseException:
        # a failed backup leaves nothing behind: the directories were new or empty
        for root, made in ((directory, created), (secrets_dir, secrets_created)):
            if root is None or not root.is_dir():
                continue
            for entry in root.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            if made:
                root.rmdir()
        raise
    return BackupResult(directory, manifest, notes)


def _database_unusable(settings: Settings, exc: BaseException) -> None:
    """BackupError naming the configured database (never its password) and why, where `exc` is its failure."""
    from .runtime import database_failure, database_unusable

    if database_failure(exc):
        raise BackupError(str(database_unusable(settings, exc))) from None


def _backup_kek(settings: Settings, directory: Path, notes: list[str], *, apart: bool = False,
                where: str = "store it apart from the backup") -> dict[str, Any] | None:
    from otp.kek import SecretBox, read_kek_file

    if not settings.otp.enabled:
        return None
    path = settings.otp.kek_path(settings.data_dir)
    if path is None:
        notes.append(f"OTP key-encryption key: not copied (from ${settings.otp.kek_env}); keep it safe")
        return {"env": settings.otp.kek_env}
    if not path.exists():
        return None
    kek = read_kek_file(path)
    _private_copy(path, directory / KEK_FILE)
    notes.append(f"OTP key-encryption key: {KEK_FILE} ({where})")
    return {"file": KEK_FILE, "kek_id": SecretBox(kek).kek_id, **({"apart": True} if apart else {})}


# ---------------------------------------------------------------------------------------------- restore


@dataclass
class RestoreResult:
    data_dir: Path
    manifest: dict[str, Any]
    schema: str
    crl_floors: dict[str, int]
    checked: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _check_tree(directory: Path) -> None:
    """Every entry under `directory` is a directory or a regular file with one link (BackupError otherwise): a
    symbolic link, a hard link, a device, a FIFO or a socket in a backup could make a restore read (and copy into
    the new data directory) a file of the host outside the backup."""
    def fail(exc: OSError) -> None:
        raise BackupError(f"{exc.filename}: cannot read the backup ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(directory, onerror=fail):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                fail(exc)
            rel = path.relative_to(directory)
            if stat.S_ISDIR(st.st_mode):
                continue
            if stat.S_ISLNK(st.st_mode):
                what = "a symbolic link"
            elif not stat.S_ISREG(st.st_mode):
                what = "not a regular file (a device, FIFO or socket)"
            elif st.st_nlink > 1:
                what = f"a hard link ({st.st_nlink} names of one file)"
            else:
                continue
            raise BackupError(f"{rel} is {what}: a backup holds regular files and directories only (copy it with "
                              "`cp -r` to resolve links made on purpose); refusing to restore it")


def _open_member(path: Path, limit: int | None = MAX_MEMBER_BYTES):
    """`path` opened for reading without following a symbolic link, checked again to be a regular file with one
    link (it may have been replaced since :func:`_check_tree`) of at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the backup's file ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise BackupError(f"{path} is not a regular file with one link; refusing to restore it")
    if limit is not None and st.st_size > limit:
        os.close(fd)
        raise BackupError(f"{path} is larger than {limit} bytes: not a file of a backup; refusing to restore it")
    return os.fdopen(fd, "rb")


def _copy_member(src: Path, dst: Path, limit: int | None = MAX_MEMBER_BYTES) -> None:
    """Copy a file of the backup into the staging directory (a new file, mode 0600, fsynced)."""
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _open_member(src, limit) as inp:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())


def _read_member(path: Path) -> bytes:
    with _open_member(path) as fh:
        return fh.read()


def read_manifest(directory: Path, *, room: Path | None = None) -> dict[str, Any]:
    """The manifest, once every file it lists is there with its size and SHA-256 (BackupError otherwise), and the
    backup holds nothing but regular files and directories (:func:`_check_tree`). Every file but the database is
    at most MAX_MEMBER_BYTES; with `room` (a directory on the file system restored to), the files must fit in its
    free space (less FREE_MARGIN_BYTES). Both are checked before any file is hashed."""
    directory = Path(directory)
    _check_tree(directory)
    raw = _read_member(directory / MANIFEST)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BackupError(f"{directory / MANIFEST} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BackupError(f"{directory / MANIFEST} is not a backup manifest: nested too deeply") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{directory / MANIFEST}: not a backup manifest of format {FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BackupError(f"{directory / MANIFEST}: lists no files")
    total = 0
    for rel, meta in files.items():
        path = _inside(directory, rel)
        if PurePosixPath(rel).as_posix() != rel:  # `./`, `//`, a final `/`: one file must have one name
            raise BackupError(f"{MANIFEST}: the file name {rel!r} is not in its plain form")
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise BackupError(f"{MANIFEST}: the entry of {rel} has no checksum")
        if not path.is_file():
            raise BackupError(f"{rel} is missing from the backup")
        size = path.stat().st_size
        if rel != DATABASE_FILE and size > MAX_MEMBER_BYTES:
            raise BackupError(f"{rel} is larger than {MAX_MEMBER_BYTES} bytes: not a file of a backup (only the "
                              "database is that large); refusing to restore it")
        total += size
    if room is not None:
        free = shutil.disk_usage(room).free
        if total + FREE_MARGIN_BYTES > free:
            raise BackupError(f"the backup's files ({total} bytes) do not fit in the {free} bytes free on the file "
                              f"system of {room} (less a margin of {FREE_MARGIN_BYTES} bytes)")
    for rel, meta in files.items():
        path = directory / rel
        if path.stat().st_size != meta.get("bytes") or sha256_file(path) != meta["sha256"]:
            raise BackupError(f"{rel} does not match its checksum in the manifest: the backup was changed or "
                              "damaged; refusing to restore it")
    return manifest


def _check_shape(manifest: dict[str, Any]) -> None:
    """The members a restore reads have the types it expects (BackupError otherwise)."""
    def fail(what: str):
        raise BackupError(f"{MANIFEST}: {what}")

    ca = manifest.get("ca")
    if not isinstance(ca, dict) or not isinstance(ca.get("name"), str) or not isinstance(ca.get("directory"), str):
        fail("names no CA")
    if not re.fullmatch(CA_NAME_PATTERN, ca["name"]):  # fullmatch: no final newline either
        fail(f"the CA name {ca['name']!r} is not one the configuration accepts (letters, digits, `_.-`, "
             "at most 64)")
    if ca["directory"] != f"ca/{ca['name']}":
        fail(f"the CA directory {ca['directory']!r} is not ca/{ca['name']}")
    for rel in manifest["files"]:
        parts = rel.split("/")
        # ca/<name>/<file>: a CA directory (the CA's, or one a rollover made) holds files, each under a CA's name
        if parts[0] == "ca" and rel != "ca/active" and (len(parts) != 3 or not re.fullmatch(CA_NAME_PATTERN, parts[1])
                                                        or parts[2].startswith(".")):
            fail(f"{rel} is not a file of a CA directory (ca/<CA name>/<file>)")
    database = manifest.get("database")
    if not isinstance(database, dict):
        fail("describes no database")
    if database.get("kind") == "sqlite" and (database.get("file") != DATABASE_FILE
                                             or DATABASE_FILE not in manifest["files"]):
        # the database is the backup's own database.sqlite3, checked against its checksum: never another file
        fail(f"the database must be the backup's {DATABASE_FILE}, listed with its checksum "
             f"(the manifest names {database.get('file')!r})")
    secrets_ = manifest.get("secrets")
    if not isinstance(secrets_, dict):
        fail("describes no secrets")
    for name, own in SECRET_FILES.items():
        entry = secrets_.get(name)
        if entry is not None and (not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), (str, type(None))) for k in ("file", "env", "kek_id", "sha256"))
                or entry.get("apart") not in (None, True)
                or not isinstance(entry.get("bytes", 0), int) or isinstance(entry.get("bytes"), bool)):
            fail(f"the entry of {name} is malformed")
        if entry and entry.get("file") not in (None, own):  # the backup's own file, never another one
            fail(f"the file of {name} must be the backup's {own} (the manifest names {entry.get('file')!r})")
        if entry and entry.get("apart") and (not entry.get("file") or entry.get("env")):
            fail(f"the entry of {name} says it was written apart, but names no file of its own")
    challenge = secrets_.get("default_challenge")
    if challenge and not (challenge.get("apart") and isinstance(challenge.get("sha256"), str)
                          and isinstance(challenge.get("bytes"), int)):
        fail("the default challenge's entry is malformed (a file written apart, with its SHA-256 and size)")
    if challenge and CHALLENGE_FILE in manifest["files"]:
        fail(f"{CHALLENGE_FILE} is both in the backup and written apart from it")
    highest = manifest.get("highest_crl_number", {})
    if not isinstance(highest, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_CRL_NUMBER for v in highest.values()):
        fail(f"the CRL Numbers are malformed (each an integer from 0 to {MAX_CRL_NUMBER})")
    if not isinstance(manifest.get("created_at"), str) or not isinstance(manifest.get("versions", {}), dict):
        fail("the time or the versions of the backup are malformed")


def _inside(directory: Path, rel: str) -> Path:
    """`directory/rel`, refusing a name that leaves the directory (an absolute path, ``..``)."""
    parts = Path(rel).parts
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in parts or rel.startswith("~"):
        raise BackupError(f"{MANIFEST}: the file name {rel!r} is not inside the backup")
    return directory / rel


def _staged(staging: Path, rel: str | Path) -> Path:
    """`staging/rel`, refusing a destination that does not resolve inside the staging directory."""
    path = staging / rel
    if not path.resolve().is_relative_to(staging.resolve()):
        raise BackupError(f"{MANIFEST}: the destination {str(rel)!r} is not inside the restored data directory")
    return path


def _check_signature(data: bytes, signature_path: Path, ca_key) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    public = ca_key.public_key()
    try:
        signature = base64.b64decode(_read_member(signature_path).strip(), validate=True)
        # as FileKey.sign signs: ECDSA with SHA-256 for an EC key, PKCS#1 v1.5 with SHA-256 for an RSA key
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise TypeError(f"a CA key of type {type(public).__name__}")
    except (OSError, ValueError, TypeError, InvalidSignature, BackupError):
        raise BackupError(f"{SIGNATURE} is missing or is not the CA key's signature of {MANIFEST}: the manifest "
                          "was changed; refusing to restore") from None


def _read_secret(given: Path | None, default: Path | None, env: str | None, what: str,
                 backup_env: str | None = None, *, apart: Path | None = None) -> tuple[bytes, str]:
    """(the secret's bytes, where it came from): the given file, its file in the directory of `--secrets-dir`
    (`apart`), the backup's own file, or the environment variable this deployment's settings name (`env`). The
    variable the backup's manifest names (`backup_env`, where the secret was when it was made) is only mentioned:
    a manifest is written by whoever made the backup, and a restore reads no variable it chose."""
    for path in (given, apart, default):
        if path is not None and path.is_file():
            return (path.read_bytes() if path is given else _read_member(path)), str(path)
        if path is not None and path is given:
            raise BackupError(f"{what}: {path} does not exist")
    if env and os.environ.get(env):
        return os.environ[env].encode(), f"${env}"
    hint = (f" (the backup was made with it in ${backup_env}: set the setting naming that variable)"
            if backup_env and backup_env != env else "")
    where = ("not in the backup" if apart is None else f"not in {apart.parent}, where the backup wrote it apart"
             if default is None else f"neither in the backup nor in {apart.parent}")
    raise BackupError(f"{what}: {where}; give it with the option naming its file"
                      + (f" or in ${env}" if env else "") + hint)


def _apart_missing(secrets_: dict[str, Any], settings: Settings, *, kek_file: Path | None,
                   passphrase_file: Path | None) -> list[str]:
    """The files of the secrets the backup wrote apart from it that nothing else gives (no `--…-file` option, no
    variable of this deployment's settings): a restore without `--secrets-dir` cannot do without them."""
    given = {"ca_passphrase": passphrase_file is not None or bool(os.environ.get(settings.ca.passphrase_env)),
             "otp_kek": kek_file is not None or bool(settings.otp.kek_env and os.environ.get(settings.otp.kek_env)),
             "default_challenge": False}
    return [own for name, own in SECRET_FILES.items()
            if (secrets_.get(name) or {}).get("apart") and not given[name]]


async def restore_backup(settings: Settings, source: Path, data_dir: Path, *, kek_file: Path | None = None,
                         passphrase_file: Path | None = None, secrets_dir: Path | None = None, verify: bool = False,
                         crl_number_gap: int = DEFAULT_CRL_NUMBER_GAP, actor: str = "cli",
                         now: datetime) -> RestoreResult:
    """Restore the backup in `source` into the new data directory `data_dir`.

    Everything is checked before anything is written: the manifest's checksums and signature, that the CA keys
    open with the passphrase, that the KEK is the one the backup was made with and opens every sealed YubiKey
    and client secret, that the schema is this software's (at head or upgradable). With `verify`, also that the
    database passes SQLite's integrity check. The secrets a backup made with `--secrets-dir` wrote apart are read
    from `secrets_dir` (the `--…-file` options still come first), and checked as those of the backup are (the
    default challenge against its SHA-256 in the manifest). The files are written into a temporary
    directory beside `data_dir` which is renamed into place at the end: `data_dir` holds the whole restore or
    does not exist. For a backup without its database (PostgreSQL), the database at the configured URL is the
    one restored with pg_restore: it is checked and its CRL Numbers raised in the same way."""
    from otp.kek import KekError, SecretBox

    from .ca.keys import FileKey

    source, data_dir = Path(source), Path(data_dir)
    if data_dir.exists() and not _is_empty_dir(data_dir):
        raise BackupError(f"{data_dir} exists and is not empty: a backup is restored into a new data directory")
    room = next(p for p in (data_dir.absolute(), *data_dir.absolute().parents) if p.is_dir())
    manifest = read_manifest(source, room=room)
    _check_shape(manifest)
    ca_name, ca_rel = manifest["ca"]["name"], manifest["ca"]["directory"]
    ca_src = _inside(source, ca_rel)
    if not ca_src.is_dir():
        raise BackupError(f"{ca_rel} is missing from the backup")
    secrets_ = manifest.get("secrets") or {}
    notes: list[str] = []
    if secrets_dir is None and (missing := _apart_missing(secrets_, settings, kek_file=kek_file,
                                                          passphrase_file=passphrase_file)):
        raise BackupError(f"the backup was made with --secrets-dir: {', '.join(missing)} "
                          f"{'was' if len(missing) == 1 else 'were'} written apart from it; give the directory "
                          "holding them with --secrets-dir")
    secrets_dir = Path(secrets_dir) if secrets_dir is not None else None

    def places(entry: dict[str, Any]) -> dict[str, Path | None]:
        """Where the file of a secret is read: in `secrets_dir` when given, else in the backup (never for a
        secret the backup wrote apart)."""
        if not entry.get("file"):
            return {"default": None, "apart": None}
        if entry.get("apart"):
            return {"default": None, "apart": secrets_dir / entry["file"] if secrets_dir is not None else None}
        return {"default": _inside(source, entry["file"]),
                "apart": secrets_dir / entry["file"] if secrets_dir is not None else None}

    # the CA passphrase opens every key of the CA directory; the CA key signed the manifest
    pp = secrets_.get("ca_passphrase") or {}
    passphrase, pp_from = _read_secret(passphrase_file, **places(pp), env=settings.ca.passphrase_env,
                                       what="the CA passphrase", backup_env=pp.get("env"))
    if pp_from != f"${settings.ca.passphrase_env}":
        passphrase = passphrase.strip()  # a file's trailing newline, as the server reads it
    keys: dict[str, dict[str, Any]] = {}  # CA directory -> key file -> key: every CA's, a rollover's too
    for rel in sorted(manifest["files"]):  # the keys the manifest lists, never another file
        directory, _, name = rel.rpartition("/")
        if directory.startswith("ca/") and name.endswith(".key"):
            try:
                keys.setdefault(directory, {})[name] = FileKey.from_pem(_read_member(_inside(source, rel)), passphrase)
            except (ValueError, TypeError) as exc:
                raise BackupError(f"{rel} does not open with the passphrase from {pp_from}: {exc}") from None
    if "ca.key" not in keys.get(ca_rel, {}):
        raise BackupError(f"{ca_rel}/ca.key is not in the backup")
    _check_signature(_read_member(source / MANIFEST), source / SIGNATURE, keys[ca_rel]["ca.key"])
    _check_ca_dirs(source, ca_rel, manifest["files"], keys)
    # the OTP key-encryption key
    kek_entry = secrets_.get("otp_kek")
    box = None
    if kek_entry:
        raw, kek_from = _read_secret(kek_file, **places(kek_entry), env=settings.otp.kek_env,
                                     what="the OTP key-encryption key", backup_env=kek_entry.get("env"))
        from otp.kek import _parse_kek

        try:
            box = SecretBox(_parse_kek(raw, kek_from))
        except KekError as exc:
            raise BackupError(str(exc)) from None
        if kek_entry.get("kek_id") and box.kek_id != kek_entry["kek_id"]:
            raise BackupError(f"the OTP key-encryption key from {kek_from} is not the one of the backup "
                              f"(id {box.kek_id}, the backup's {kek_entry['kek_id']})")
    # the default challenge written apart: the file of `secrets_dir`, as the manifest's checksum has it
    challenge_entry = secrets_.get("default_challenge")
    challenge = None
    if challenge_entry:
        path = secrets_dir / CHALLENGE_FILE
        if not path.is_file():
            raise BackupError(f"{CHALLENGE_FILE}: not in {secrets_dir}, where the backup wrote it apart")
        challenge = _read_member(path)
        if (len(challenge) != challenge_entry["bytes"]
                or hashlib.sha256(challenge).hexdigest() != challenge_entry["sha256"]):
            raise BackupError(f"{path} does not match its checksum in the manifest: it is not the default "
                              "challenge written apart from this backup; refusing to restore it")
    database = manifest.get("database") or {}
    created = [p for p in data_dir.absolute().parents if not p.exists()]  # removed again if the restore fails
    staging = None
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=data_dir.parent))
        os.chmod(staging, 0o700)
        for rel in manifest["files"]:
            if rel == DATABASE_FILE:
                continue
            if rel.startswith(ca_rel + "/"):
                _copy_member(_inside(source, rel), _staged(staging, Path("ca", ca_name, rel[len(ca_rel) + 1:])))
            elif rel.startswith("ca/"):  # a CA a rollover made, `ca/active`
                _copy_member(_inside(source, rel), _staged(staging, rel))
            elif rel in EXTRA_FILES:
                _copy_member(_inside(source, rel), _staged(staging, rel))
        if challenge is not None:
            _private_write(staging / CHALLENGE_FILE, challenge)
        if pp.get("file"):
            _private_write(staging / "ca" / "passphrase", passphrase + b"\n")
            notes.append(f"CA passphrase written to {data_dir / 'ca' / 'passphrase'}")
        if kek_entry and kek_entry.get("file"):
            _private_write(staging / "otp-kek.key", raw)
            notes.append(f"OTP key-encryption key written to {data_dir / 'otp-kek.key'}")
        if database.get("kind") == "sqlite":
            db_file = staging / "scep.db"
            _copy_member(_inside(source, DATABASE_FILE), db_file, limit=None)  # the free space was checked
            await asyncio.to_thread(_check_sqlite, db_file)
            url = f"sqlite+aiosqlite:///{db_file.resolve()}"
            if verify:
                await asyncio.to_thread(_integrity_check, db_file)
        elif database.get("kind") == "postgresql":
            url = settings.database_url()
            if is_sqlite(normalise_url(url)):
                raise BackupError("the backup holds no database (PostgreSQL): restore it with pg_restore into an "
                                  "empty database, and configure its URL (database.url) for the restore")
            notes.append(f"database: the PostgreSQL database at {shown_url(normalise_url(url))}")
        else:
            raise BackupError(f"{MANIFEST}: unknown database kind {database.get('kind')!r}")
        _private_dirs(staging)
        try:
            state, floors, checked = await _restore_database(url, manifest, box, gap=crl_number_gap,
                                                             actor=actor, now=now, source=source)
        except Exception as exc:
            if database.get("kind") == "postgresql":  # the configured database (a SQLite one is the copy)
                _database_unusable(settings, exc)
            raise
        if data_dir.exists():
            _move_into(staging, data_dir)
        else:
            try:
                os.rename(staging, data_dir)
            except OSError as exc:  # made meanwhile, and not empty
                raise BackupError(f"cannot move the restored files into {data_dir}: {exc.strerror}") from None
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for path in created:  # the deepest first; never one that is not empty
            try:
                path.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError):  # no room left, no permission: a message, nothing left behind
            raise BackupError(f"cannot write the restored files beside {data_dir}: {exc.strerror or exc} "
                              f"({exc.filename}); nothing was left") from None
        raise
    if state == "upgradable":
        notes.append("the schema is behind this software's: `scep-server db upgrade` (or the first start) "
                     "brings it up to date")
    return RestoreResult(data_dir, manifest, state, floors, checked, notes)


def _move_into(staging: Path, data_dir: Path) -> None:
    """`data_dir` exists and is empty: move the staged files into it, then drop the staging directory. All or
    nothing: when one cannot be moved, those moved go back and `data_dir` is left empty (BackupError)."""
    moved: list[str] = []
    try:
        for entry in sorted(staging.iterdir()):
            if os.path.lexists(data_dir / entry.name):  # made meanwhile: never replaced
                raise FileExistsError(errno.EEXIST, "made meanwhile", str(data_dir / entry.name))
            os.rename(entry, data_dir / entry.name)
            moved.append(entry.name)
    except OSError as exc:
        for name in reversed(moved):
            os.rename(data_dir / name, staging / name)
        raise BackupError(f"cannot move the restored files into {data_dir}: {exc.strerror} ({exc.filename}); "
                          "nothing was left in it") from None
    staging.rmdir()
    os.chmod(data_dir, 0o700)


def _check_ca_dirs(source: Path, ca_rel: str, files: dict[str, Any], keys: dict[str, dict[str, Any]]) -> None:
    """Every CA directory of the backup (the CA's, and those a CA rollover made) holds ca.crt and ra.crt, and every
    certificate belongs to the key beside it: ca.crt to ca.key, each RA certificate (ra.crt, ra-<n>.crt, ra-enc.crt
    ...) to its key, a prepared next CA's next-ca.crt to next-ca.key and next-ra.key; ``ca/active`` names one of
    these directories."""
    from .ca.rafiles import ENCRYPTION, SIGNING, _generation
    from .ca.rollover import ACTIVE_FILE

    directories = sorted({rel.rpartition("/")[0] for rel in files if rel.startswith("ca/") and rel.count("/") == 2})
    for directory in directories:
        names = {rel.rpartition("/")[2] for rel in files if rel.rpartition("/")[0] == directory}
        ras = [n for n in names if _generation(n, SIGNING) is not None or _generation(n, ENCRYPTION) is not None]
        for cert_name in ["ca.crt", "ra.crt", *sorted(set(ras) - {"ra.crt"})]:
            key_name = cert_name[:-4] + ".key"
            if cert_name not in names or key_name not in keys.get(directory, {}):
                raise BackupError(f"{directory}: {cert_name} or {key_name} is missing from the backup's CA directory")
            _check_pair(source, f"{directory}/{cert_name}", 0, keys[directory][key_name], key_name)
        if "next-ca.crt" in names:  # a prepared rollover: the next CA's certificate, then its RA's
            for index, key_name in enumerate(("next-ca.key", "next-ra.key")):
                if key_name not in keys.get(directory, {}):
                    raise BackupError(f"{directory}: next-ca.crt without {key_name}")
                _check_pair(source, f"{directory}/next-ca.crt", index, keys[directory][key_name], key_name)
    if f"ca/{ACTIVE_FILE}" in files:
        active = _read_member(source / "ca" / ACTIVE_FILE).decode("utf-8", "replace").strip()
        if f"ca/{active}" not in directories:
            raise BackupError(f"ca/{ACTIVE_FILE} names {active[:80]!r}, which is not a CA directory of the backup")


def _check_pair(source: Path, cert_rel: str, index: int, key, key_name: str) -> None:
    """The `index`-th certificate of the PEM file `cert_rel` is the certificate of `key` (BackupError otherwise)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        certs = x509.load_pem_x509_certificates(_read_member(source / cert_rel))
        public = certs[index].public_key().public_bytes(*spki)
    except (ValueError, TypeError, IndexError, UnsupportedAlgorithm) as exc:
        raise BackupError(f"{cert_rel} of the backup is not a certificate this software reads: {exc}") from None
    if public != key.public_key().public_bytes(*spki):
        raise BackupError(f"{cert_rel} is not the certificate of {key_name}")


def _check_sqlite(path: Path) -> None:
    """`path` is a SQLite database whose tables can be listed, holding tables and indexes only (BackupError
    otherwise): this software's schema has no trigger nor view, and a hostile backup's trigger would run in the
    restore (setting a CRL Number back after the restore raised it) and in every server after it (undoing a
    revocation, say)."""
    try:
        conn = sqlite3.connect(path)
        try:
            others = conn.execute("SELECT type, name FROM sqlite_master WHERE type NOT IN ('table', 'index') "
                                  "ORDER BY type, name").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{DATABASE_FILE} is not a SQLite database this software reads: {exc}") from None
    if others:
        listed = ", ".join(f"{kind} {name!r}" for kind, name in others[:5])
        raise BackupError(f"{DATABASE_FILE} holds what this software's schema never has ({listed}): "
                          "refusing to restore it")


def _integrity_check(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    if result != ["ok"]:
        raise BackupError(f"the database fails SQLite's integrity check: {'; '.join(result[:5])}")


async def _restore_database(url: str, manifest: dict[str, Any], box, *, gap: int, actor: str,
                            now: datetime, source: Path) -> tuple[str, dict[str, int], dict[str, int]]:
    """Check the restored database and raise its CRL Number floors; (schema state, floors, sealed values opened)."""
    from crl.tables import crl_state

    from .store.events import record_event

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            revisions = list((await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars()) \
                if "alembic_version" in names else []
        if not revisions:
            raise BackupError("the database has no schema (no migration applied): is it the restored database?")
        if not all(isinstance(r, str) for r in revisions):
            raise BackupError("the database's migration revisions are not names: it is not this software's")
        revisions.sort()
        state = schema_state(revisions)
        if state == "unknown":
            raise BackupError(f"the database's schema ({', '.join(revisions)}) is newer than this software knows "
                              f"({', '.join(script_heads())}): restore with the version that made the backup "
                              f"({manifest.get('versions', {}).get('scep_server', '?')})")
        checked = await _open_sealed(engine, box) if box is not None and "otp_yubikeys" in names else {}
        floors: dict[str, int] = {}
        highest = {ca: int(n) for ca, n in (manifest.get("highest_crl_number") or {}).items()}
        async with writer(engine).begin() as conn:
            if "crl_state" in names:
                for ca, last, published in (await conn.execute(
                        sa.select(crl_state.c.ca, crl_state.c.last_number, crl_state.c.crl_number))).all():
                    highest[ca] = max(highest.get(ca, 0), _crl_number(ca, last), _crl_number(ca, published))
                for ca, seen in highest.items():
                    floor = seen + gap
                    if floor > MAX_CRL_NUMBER:
                        raise BackupError(f"the CRL Numbers of CA {ca} ({seen}) leave no room for the gap of {gap} "
                                          f"below {MAX_CRL_NUMBER}")
                    # the published CRL is dropped: the first start signs a new one numbered above the floor,
                    # rather than serving one older than CRLs the old deployment may have published
                    values = dict(last_number=floor, crl_number=None, this_update=None, next_update=None, der=None,
                                  sha256=None, entries=None, published_at=None, published_by=None,
                                  this_update_shared=None)
                    res = await conn.execute(crl_state.update().where(crl_state.c.ca == ca).values(**values))
                    if res.rowcount == 0:
                        await conn.execute(crl_state.insert().values(ca=ca, **values))
                    floors[ca] = floor
            await record_event(conn, at=now, kind="admin.restore", subject=str(manifest.get("created_at")),
                               actor=actor, data={"backup": str(source), "crl_number_floors": floors,
                                                  "schema": state})
    except sa.exc.DBAPIError as exc:  # a file that is SQLite but not this software's database, say
        raise BackupError(f"the database is not one this software reads: {exc.orig}") from None
    finally:
        await engine.dispose()
    return state, floors, checked


def _crl_number(ca: str, value: Any) -> int:
    """A CRL Number the database holds (0 for none); BackupError if it is not a number."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CRL_NUMBER:
        raise BackupError(f"the database's CRL Numbers of CA {ca} are malformed ({value!r})")
    return value


async def _open_sealed(engine, box) -> dict[str, int]:
    """Open every live sealed value with the KEK: YubiKey secrets and API client secrets (BackupError if one
    does not open)."""
    from otp.kek import KekError
    from otp.service import _client_aad, _key_aad
    from otp.tables import otp_clients, otp_yubikeys

    counts = {"yubikeys": 0, "clients": 0}
    async with engine.connect() as conn:
        k = otp_yubikeys.c
        rows = await conn.execute(sa.select(k.public_id, k.secret_sealed).where(
            k.deleted_at.is_(None), sa.func.length(k.secret_sealed) > 0))
        for public_id, sealed in rows:
            try:
                if not isinstance(sealed, (bytes, bytearray, memoryview)):
                    raise TypeError("not bytes")
                box.open(bytes(sealed), _key_aad(public_id))
            except (KekError, TypeError, ValueError):
                raise BackupError(f"the YubiKey {public_id}'s secret does not open with the OTP key-encryption "
                                  "key") from None
            counts["yubikeys"] += 1
        c = otp_clients.c
        rows = await conn.execute(sa.select(c.id, c.secret_sealed).where(sa.func.length(c.secret_sealed) > 0))
        for client_id, sealed in rows:
            try:
                if not isinstance(sealed, (bytes, bytearray, memoryview)):
                    raise TypeError("not bytes")
                box.open(bytes(sealed), _client_aad(client_id))
            except (KekError, TypeError, ValueError):
                raise BackupError(f"the OTP client {client_id}'s secret does not open with the OTP "
                                  "key-encryption key") from None
            counts["clients"] += 1
    return counts


async def record_backup(settings: Settings, result: BackupResult, *, actor: str, now: datetime) -> None:
    """The audit event of a backup, in the database that was backed up (after the copy: it is not in it)."""
    from .store.events import record_event

    engine = create_engine(settings.database_url())
    try:
        async with writer(engine).begin() as conn:
            await record_event(conn, at=now, kind="admin.backup", subject=str(result.directory.resolve()),
                               actor=actor, data={"database": result.manifest["database"]["kind"],
                                                  "highest_crl_number": result.manifest["highest_crl_number"],
                                                  "migration_heads": result.manifest["migration_heads"]})
    finally:
        await engine.dispose()
