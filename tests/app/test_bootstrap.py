"""CA bootstrap safety: durable writes, never overwriting a key whose certificate is missing, one CA when
several instances start together on one directory."""
from __future__ import annotations

import multiprocessing as mp
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server import runtime
from scep_server.ca.authority import CAFilesExist
from tests.factories import settings_for

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)


def _settings(tmp_path: Path):
    return settings_for(tmp_path / "data")


def _bootstrap(data_dir: str, barrier, out) -> None:
    """In a child process: first start's CA step, released together with the other child."""
    settings = settings_for(Path(data_dir))
    barrier.wait(30)
    try:
        report: list[str] = []
        ca = runtime._load_or_create_ca(settings, NOW, report)
        out.put((ca.fingerprint_sha256, any(line.startswith("created CA") for line in report), None))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out.put((None, False, f"{type(exc).__name__}: {exc}"))


def test_two_instances_starting_together_make_one_ca(tmp_path):
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    data_dir = str(tmp_path / "data")
    procs = [ctx.Process(target=_bootstrap, args=(data_dir, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [r[2] for r in results] == [None, None], results
    assert results[0][0] == results[1][0], "two different CAs were created"
    assert sorted(r[1] for r in results) == [False, True], "exactly one instance creates the CA"
    # what is on disk is that CA, and its key opens with the passphrase on disk and matches it
    settings = settings_for(Path(data_dir))
    ca = runtime.load_cas(settings)[settings.ca.name]
    assert ca.fingerprint_sha256 == results[0][0]
    assert ca.key.public_key().public_numbers() == ca.cert.public_key().public_numbers()
    assert ca.ra_key.public_key().public_numbers() == ca.ra_cert.public_key().public_numbers()
    assert not [f for f in os.listdir(settings.ca_dir()) if f.endswith(".tmp")]


@pytest.mark.parametrize("lost", ["ca.crt", "ra.crt"])
async def test_a_key_without_its_certificate_is_refused_and_left_untouched(tmp_path, lost):
    settings = _settings(tmp_path)
    await runtime.initialise(settings)
    directory = settings.ca_dir()
    before = {f: (directory / f).read_bytes() for f in ("ca.key", "ra.key")}
    (directory / lost).unlink()
    if lost == "ra.crt":  # a crash between the RA certificate and the CA certificate leaves ca.crt absent too
        (directory / "ca.crt").unlink()
    with pytest.raises(CAFilesExist) as ei:
        await runtime.initialise(settings)
    message = str(ei.value)
    assert "ca.key" in message and "ca.crt" in message and str(directory) in message
    assert {f: (directory / f).read_bytes() for f in ("ca.key", "ra.key")} == before
    assert not (directory / "ca.crt").exists()


@pytest.mark.parametrize("ra_mode", ["single", "split"])
async def test_a_stray_encryption_ra_certificate_is_refused_not_taken_for_ours(tmp_path, ra_mode):
    settings = settings_for(tmp_path / "data", ca={"ra_mode": ra_mode})
    directory = settings.ca_dir()
    directory.mkdir(parents=True)
    (directory / "ra-enc.crt").write_bytes(b"someone else's")
    with pytest.raises(CAFilesExist) as ei:
        await runtime.initialise(settings)
    assert "ra-enc.crt" in str(ei.value)
    assert (directory / "ra-enc.crt").read_bytes() == b"someone else's" and not (directory / "ca.crt").exists()


def test_the_cli_names_the_files_instead_of_a_traceback(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from scep_server.cli import main

    settings = _settings(tmp_path)
    directory = settings.ca_dir()
    directory.mkdir(parents=True)
    (directory / "ca.key").write_bytes(b"precious")
    monkeypatch.setenv("SCEP_SERVER_DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 1
    assert "refusing to create a CA" in result.output and "ca.key" in result.output
    assert (directory / "ca.key").read_bytes() == b"precious"


@pytest.mark.parametrize("ra_mode", ["single", "split"])
def test_keys_and_certificates_are_written_durably(tmp_path, monkeypatch, ra_mode):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    settings = settings_for(tmp_path / "data", ca={"ra_mode": ra_mode})
    runtime._load_or_create_ca(settings, NOW, [])
    directory = str(settings.ca_dir())
    for name in ("ca.key", "ra.key", "ra.crt", "ca.crt", *(("ra-enc.key", "ra-enc.crt") if ra_mode == "split" else ())):
        # the bytes were synced in a temporary file of the same directory, renamed or linked afterwards
        assert any(Path(p).parent == Path(directory) and Path(p).name.startswith(f".{name}.") for p in synced), \
            (name, synced)
    assert synced.count(directory) >= 4, "the directory entry of each new file is synced"
    assert str(settings.passphrase_path()) not in synced  # never the final name: always a temporary file
    assert any(Path(p).name.startswith(".passphrase.") for p in synced)
    assert not [f for f in os.listdir(directory) if f.endswith(".tmp")]
    cert = x509.load_pem_x509_certificate((settings.ca_dir() / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((settings.ca_dir() / "ca.key").read_bytes(),
                                             settings.passphrase_path().read_bytes().strip())
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


async def test_an_instance_without_the_deployments_ca_directory_makes_no_second_ca(tmp_path, db_url, monkeypatch):
    """`init` (or a first start) on a second host, with a data directory of its own but the deployment's database,
    made a second CA under the same name: it issued and signed CRLs beside the first. It is refused, with nothing
    written, and so is a data directory whose CA is not the one the database records."""
    import shutil

    monkeypatch.delenv("SCEP_CA_PASSPHRASE", raising=False)
    assert await runtime.initialise(settings_for(tmp_path / "a", db_url))
    with pytest.raises(runtime.ForeignCa, match=r"the database records CA 'default' \(SHA-256 [0-9a-f]{64}\), made "
                                                r"by another instance .* holds no CA"):
        await runtime.initialise(settings_for(tmp_path / "b", db_url))
    assert not (tmp_path / "b" / "ca").exists()
    await runtime.initialise(settings_for(tmp_path / "c"))  # a CA of another deployment (its own SQLite database)
    with pytest.raises(runtime.ForeignCa, match="is not the CA 'default' the database records .* different "
                                                "deployments"):
        await runtime.initialise(settings_for(tmp_path / "c", db_url))
    shutil.copytree(tmp_path / "a" / "ca", tmp_path / "d" / "ca")  # given the deployment's CA directory: it starts
    assert await runtime.initialise(settings_for(tmp_path / "d", db_url), default_profile=None) == []


def test_the_cli_says_so_without_a_traceback(tmp_path, sqlite_template, monkeypatch):
    from click.testing import CliRunner

    from scep_server.cli import main

    monkeypatch.setenv("SCEP_CA_PASSPHRASE", "pw")
    monkeypatch.setenv("SCEP_SERVER_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}")
    args = ["init", "--no-input", "--key-size", "2048"]
    assert CliRunner().invoke(main, ["--data-dir", str(tmp_path / "a"), *args]).exit_code == 0
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "b"), *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Error: the database records CA 'default'" in result.output
    assert not (tmp_path / "b" / "ca").exists()


async def test_a_default_profile_made_by_another_process_at_the_same_moment_is_kept(tmp_path, db_url, monkeypatch):
    """Two `init` at once on a CA without profiles: both saw no profile, the second one's create failed with
    ProfileExists, a traceback. The second now finds it made and leaves it (and its challenge file) alone."""
    from scep_server.profiles import ProfileStore

    settings = settings_for(tmp_path / "data", db_url)
    await runtime.initialise(settings)
    written = (tmp_path / "data" / "default-challenge.txt").read_bytes()

    async def nothing_yet(self, *args, **kwargs):  # the other process's create lands after this one's list
        return []

    monkeypatch.setattr(ProfileStore, "list", nothing_yet)
    assert await runtime.initialise(settings) == []
    assert (tmp_path / "data" / "default-challenge.txt").read_bytes() == written
