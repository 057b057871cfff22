"""The RA certificate files of a CA directory: ``ra.crt`` (``ra.key``) and its renewals ``ra-<n>.crt``
(``ra-<n>.key``), n = 1, 2, ... in the order they were issued; read by `scep_server.ca.authority.load_ca`,
written by `scep_server.ca.ra.renew_ra`. With the keys in a PKCS#11 token there is no key file: ``ra-<n>.label``
holds the label of a renewal's key in the token."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from cryptography import x509

from .keys import FileKey, KeyOps, KeyStore


def _generation(name: str) -> int | None:
    """0 for ``ra.crt``, n for ``ra-<n>.crt``, None for any other name."""
    if name == "ra.crt":
        return 0
    stem = name[3:-4] if name.startswith("ra-") and name.endswith(".crt") else ""
    return int(stem) if stem.isdigit() and stem.isascii() else None


def _ra_cert_files(directory: Path) -> list[Path]:
    """``ra.crt`` and every ``ra-<n>.crt`` (complete renewals), the newest first."""
    found = [(g, e.name) for e in os.scandir(directory) if (g := _generation(e.name)) is not None]
    return [directory / name for _, name in sorted(found, reverse=True)]


def files_state(directory: Path) -> tuple[tuple[str, int], ...]:
    """What the RA certificate files are now (names and modification times): a cheap change check."""
    return tuple((p.name, p.stat().st_mtime_ns) for p in _ra_cert_files(directory))


def ra_certificates(directory: Path) -> list[tuple[x509.Certificate, Path]]:
    """Every RA certificate of the directory with the path of its key, the newest first."""
    found = [(x509.load_pem_x509_certificate(p.read_bytes()), p.with_suffix(".key"))
             for p in _ra_cert_files(directory)]
    if not found:
        raise FileNotFoundError(f"no RA certificate in {directory}")
    return found


def load_ras(directory: Path, passphrase: bytes, *, now: datetime | None = None, key_store: KeyStore | None = None
             ) -> list[tuple[x509.Certificate, KeyOps]]:
    """The current RA certificate and key, then the earlier ones that have not expired (at ``now``). With a
    ``key_store`` (a PKCS#11 token) the keys are found there by label: ``ca.ra_key_label`` for ``ra.crt``,
    the label recorded in ``ra-<n>.label`` for a renewal; ValueError when a key is not its certificate's."""
    certs = ra_certificates(directory)
    now = now or datetime.now().astimezone()
    kept = [certs[0]] + [(c, k) for c, k in certs[1:] if c.not_valid_after_utc > now]
    if key_store is None:
        return [(c, FileKey.load(k, passphrase)) for c, k in kept]
    return [(c, _token_key(key_store, c, k)) for c, k in kept]


def _token_key(key_store: KeyStore, cert: x509.Certificate, key_path: Path) -> KeyOps:
    crt = key_path.with_suffix(".crt").name
    if crt == "ra.crt":
        key = key_store.ra_key()
    else:
        label_path = key_path.with_suffix(".label")
        try:
            label = label_path.read_text().strip()
        except FileNotFoundError:
            raise ValueError(f"{crt} has no {label_path.name}: the label of its key in the token is unknown") from None
        key = key_store.ra_key(label=label)
    if key.public_key() != cert.public_key():
        raise ValueError(f"the RA key in the key store is not the key of {crt}")
    return key


def key_files(directory: Path) -> list[Path]:
    """Every encrypted private key of a CA directory: the CA's, every RA's and a prepared next CA's and RA's."""
    names = {"ca.key", "ra.key", "next-ca.key", "next-ra.key"}
    return sorted(p for p in directory.iterdir()
                  if p.name in names or (p.name.startswith("ra-") and p.name.endswith(".key")
                                         and _generation(p.name[:-4] + ".crt") is not None))
