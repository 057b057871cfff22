"""Changing the passphrase that encrypts the private keys of the CA directories (`scep-server ca passphrase
change`).

Under the directory's lock (``ca.lock``: no RA renewal or rollover writes a key meanwhile) every key is read
with the current passphrase first (a wrong one changes nothing), then each is written encrypted with the new
one beside it (``<key>.new``) and only then put in place, one rename each; the previous files are kept as
``<key>.previous`` until the operator removes them, so a crash half-way leaves every key readable with one of
the two passphrases. The new passphrase goes to the passphrase file last (or, when the passphrase comes from
the environment, the operator sets the new value there before the next start). Running servers keep the
keys they loaded; they read the new passphrase when they load a key next (a renewed RA, a restart).
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from .authority import _directory_lock
from .keys import _write_private, fsync_directory
from .rafiles import key_files


def change(directory: Path, old: bytes, new: bytes) -> list[Path]:
    """Re-encrypt every key of ``directory`` from ``old`` to ``new``; the keys changed. ValueError when ``old``
    opens none of them or ``new`` is empty or the same."""
    if not new or new == old:
        raise ValueError("the new passphrase must be non-empty and differ from the current one")
    with _directory_lock(directory):
        keys = key_files(directory)
        loaded = []
        for path in keys:  # all of them first: a wrong passphrase changes nothing
            try:
                loaded.append(serialization.load_pem_private_key(path.read_bytes(), password=old))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path.name}: cannot be read with the current passphrase ({exc})") from None
        for path, key in zip(keys, loaded):
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(new))
            _write_private(path.with_name(path.name + ".new"), pem)
        for path in keys:
            previous = path.with_name(path.name + ".previous")
            if previous.exists():
                previous.unlink()
            os.link(path, previous)
            os.replace(path.with_name(path.name + ".new"), path)
        fsync_directory(directory)
        return keys
