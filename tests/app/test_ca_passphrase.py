"""`scep-server ca passphrase change`: every CA and RA key re-encrypted, the passphrase file replaced, the
previous files kept; a wrong current passphrase changes nothing."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

from scep_server.store.tables import events


def _opens(path, passphrase: bytes) -> bool:
    try:
        serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
        return True
    except (ValueError, TypeError):
        return False


def test_change_reencrypts_every_key_and_replaces_the_passphrase_file(cli, tmp_path):
    data = tmp_path / "data"
    directory = data / "ca" / "default"
    cli("ca", "renew-ra")  # a renewed RA's key is re-encrypted too
    cli("ca", "renew-ra", "--mode", "split")  # and split RA certificates' keys
    assert "\tRA (split) until " in cli("ca", "list")
    cli("ca", "rollover", "prepare")  # and a prepared next CA's
    old = (data / "ca" / "passphrase").read_bytes().strip()
    keys = sorted(p.name for p in directory.glob("*.key"))
    assert keys == ["ca.key", "next-ca.key", "next-ra.key", "ra-1.key", "ra-2.key", "ra-enc.key", "ra.key"]

    out = cli("ca", "passphrase", "change")
    assert "7 keys re-encrypted" in out
    new = (data / "ca" / "passphrase").read_bytes().strip()
    assert new != old
    for name in keys:
        assert _opens(directory / name, new) and not _opens(directory / name, old), name
        assert _opens(directory / f"{name}.previous", old), name  # kept until the operator removes them
    assert not list(directory.glob("*.new"))
    listed = json.loads(cli("ca", "list", "--format", "json"))  # the keys load with the new passphrase
    assert listed[0]["name"] == "default" and len(listed[0]["next_ca_certificates"]) == 2
    assert listed[0]["ra_mode"] == "split" and listed[0]["ra_encryption_certificate"]["serial"]

    chosen = tmp_path / "chosen.txt"
    chosen.write_text("correct horse battery staple\n")
    cli("ca", "passphrase", "change", "--new-from-file", str(chosen))
    assert (data / "ca" / "passphrase").read_bytes().strip() == b"correct horse battery staple"
    assert _opens(directory / "ca.key", b"correct horse battery staple")
    assert _opens(directory / "ca.key.previous", new)

    import asyncio

    from trustkit.db import create_engine

    async def kinds():
        engine = create_engine(f"sqlite+aiosqlite:///{data / 'scep.db'}")
        try:
            async with engine.connect() as conn:
                return (await conn.execute(sa.select(events.c.actor, events.c.data).where(
                    events.c.kind == "pki.ca.passphrase.change"))).all()
        finally:
            await engine.dispose()
    rows = asyncio.run(kinds())
    assert len(rows) == 2 and rows[0].actor.startswith("cli")
    assert old.decode() not in rows[0].data and new.decode() not in rows[1].data  # never the secret itself
    assert json.loads(rows[0].data)["keys"] == [f"default/{k}" for k in keys]


def test_a_backup_names_the_keys_kept_under_the_previous_passphrase(cli, tmp_path):
    """The <key>.previous files a change leaves open with the passphrase it retired: a backup copies them with the
    rest of the CA directory, and says so."""
    cli("ca", "passphrase", "change")
    out = cli("backup", str(tmp_path / "backup"))
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert {"ca/default/ca.key.previous", "ca/default/ra.key.previous"} <= set(manifest["files"])
    assert "ca/default/ca.key.previous, ca/default/ra.key.previous: the keys encrypted with the passphrase before " \
           "the last `ca passphrase change`" in out


def test_a_wrong_current_passphrase_changes_nothing(cli, tmp_path, monkeypatch):
    data = tmp_path / "data"
    directory = data / "ca" / "default"
    before = {p.name: p.read_bytes() for p in directory.glob("*.key")}
    monkeypatch.setenv("SCEP_CA_PASSPHRASE", "not the passphrase")
    out = cli("ca", "passphrase", "change", code=1)
    assert "cannot be read with the current passphrase" in out
    assert {p.name: p.read_bytes() for p in directory.glob("*.key")} == before
    assert not list(directory.glob("*.new")) and not list(directory.glob("*.previous"))


@pytest.mark.parametrize("value", ["", "same"])
def test_an_empty_or_unchanged_new_passphrase_is_refused(cli, tmp_path, value):
    chosen = tmp_path / "new.txt"
    current = (tmp_path / "data" / "ca" / "passphrase").read_text().strip()
    chosen.write_text(current if value == "same" else "")
    assert "must be non-empty and differ" in cli("ca", "passphrase", "change", "--new-from-file", str(chosen), code=1)


async def test_a_missing_passphrase_is_a_clear_error_and_no_new_one_is_made(tmp_path, monkeypatch):
    """Keys encrypted with the passphrase of $SCEP_CA_PASSPHRASE, started without it: the start stops saying
    the passphrase is missing, and no random passphrase file (which could never open the keys) is written."""
    from scep_server.runtime import CaKeysUnavailable, initialise, load_cas
    from tests.factories import settings_for

    monkeypatch.setenv("SCEP_CA_PASSPHRASE", "kept-in-the-environment")
    settings = settings_for(tmp_path / "data")
    await initialise(settings)
    monkeypatch.delenv("SCEP_CA_PASSPHRASE")
    for start in (lambda: initialise(settings), lambda: _async(load_cas, settings)):
        with pytest.raises(CaKeysUnavailable, match=r"no CA passphrase: \$SCEP_CA_PASSPHRASE is not set .*/ca\.key is "
                                                    "encrypted with one"):
            await start()
        assert not settings.passphrase_path().exists()


async def _async(fn, *args):
    return fn(*args)


def test_a_passphrase_change_without_the_current_passphrase_makes_no_new_one(cli, tmp_path):
    """`ca passphrase change` with the passphrase file gone (and none in the environment) wrote a random one, which
    opens no key, left it behind, and the next start failed on it as on a wrong passphrase."""
    path = tmp_path / "data" / "ca" / "passphrase"
    path.unlink()
    out = cli("ca", "passphrase", "change", code=1)
    assert "no CA passphrase" in out and "is encrypted with one" in out
    assert not path.exists()
