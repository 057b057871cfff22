"""The RA certificate files of a CA directory: ``ra.crt`` (``ra.key``) and its renewals ``ra-<n>.crt``
(``ra-<n>.key``), n = 1, 2, ... in the order they were issued; with split RA certificates
(`scep_server.ca.ra`) also the encryption RA ``ra-enc.crt`` (``ra-enc.key``) and its renewals
``ra-enc-<n>.crt``. Read by `scep_server.ca.authority.load_ca`, written by `scep_server.ca.ra.renew_ra`. With
the keys in a PKCS#11 token there is no key file: ``ra-<n>.label`` holds the label of a renewal's key in the
token (split RA certificates are not made there)."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from cryptography import x509

from .keys import FileKey, KeyOps, KeyStore

SIGNING = "ra"
"""The file stem of the RA certificate (signing, and in single mode also decrypting)."""
ENCRYPTION = "ra-enc"
"""The file stem of the encryption RA certificate (split mode)."""


def _generation(name: str, stem: str = SIGNING) -> int | None:
    """0 for ``<stem>.crt``, n for ``<stem>-<n>.crt``, None for any other name."""
    if name == f"{stem}.crt":
        return 0
    prefix = f"{stem}-"
    number = name[len(prefix):-4] if name.startswith(prefix) and name.endswith(".crt") else ""
    return int(number) if number.isdigit() and number.isascii() else None


def _ra_cert_files(directory: Path, stem: str = SIGNING) -> list[Path]:
    """``<stem>.crt`` and every ``<stem>-<n>.crt`` (complete renewals), the newest first."""
    found = [(g, e.name) for e in os.scandir(directory) if (g := _generation(e.name, stem)) is not None]
    return [directory / name for _, name in sorted(found, reverse=True)]


def files_state(directory: Path) -> tuple[tuple[str, int], ...]:
    """What the RA certificate files are now (names and modification times): a cheap change check."""
    return tuple((p.name, p.stat().st_mtime_ns)
                 for stem in (SIGNING, ENCRYPTION) for p in _ra_cert_files(directory, stem))


def ra_certificates(directory: Path, stem: str = SIGNING) -> list[tuple[x509.Certificate, Path]]:
    """Every RA certificate of the directory (of ``stem``) with the path of its key, the newest first."""
    found = [(x509.load_pem_x509_certificate(p.read_bytes()), p.with_suffix(".key"))
             for p in _ra_cert_files(directory, stem)]
    if not found and stem == SIGNING:
        raise FileNotFoundError(f"no RA certificate in {directory}")
    return found


def is_split(ra_cert: x509.Certificate) -> bool:
    """Whether an RA certificate is a signing-only one (split mode): its key usage lacks keyEncipherment."""
    try:
        usage = ra_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return not usage.key_encipherment


def load_ras(directory: Path, passphrase: bytes, *, now: datetime | None = None, key_store: KeyStore | None = None
             ) -> list[tuple[x509.Certificate, KeyOps]]:
    """The current RA certificate and key, then the earlier ones that have not expired (at ``now``). With a
    ``key_store`` (a PKCS#11 token) the keys are found there by label: ``ca.ra_key_label`` for ``ra.crt``,
    the label recorded in ``ra-<n>.label`` for a renewal; ValueError when a key is not its certificate's."""
    certs = ra_certificates(directory)
    now = now or datetime.now().astimezone()
    kept = [certs[0]] + [(c, k) for c, k in certs[1:] if c.not_valid_after_utc > now]
    if key_store is None:
        return [(c, _file_key(c, k, passphrase)) for c, k in kept]
    return [(c, _token_key(key_store, c, k)) for c, k in kept]


def _file_key(cert: x509.Certificate, key_path: Path, passphrase: bytes) -> KeyOps:
    key = FileKey.load(key_path, passphrase)
    if key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the key of {key_path.with_suffix('.crt').name}")
    return key


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


def load_encryption_ras(directory: Path, passphrase: bytes, *, split: bool, now: datetime | None = None
                        ) -> list[tuple[x509.Certificate, KeyOps]]:
    """The encryption RA certificates and keys, the newest first: in split mode (``split``) the current one and
    the earlier ones that have not expired; otherwise (a CA switched back to one RA certificate) those that
    have not expired, which still decrypt requests addressed to them."""
    certs = ra_certificates(directory, ENCRYPTION)
    now = now or datetime.now().astimezone()
    kept = [(c, k) for i, (c, k) in enumerate(certs) if (split and i == 0) or c.not_valid_after_utc > now]
    return [(c, _file_key(c, k, passphrase)) for c, k in kept]


def key_files(directory: Path) -> list[Path]:
    """Every encrypted private key of a CA directory: the CA's, every RA's and a prepared next CA's and RA's."""
    names = {"ca.key", "ra.key", "next-ca.key", "next-ra.key"}
    return sorted(p for p in directory.iterdir()
                  if p.name in names or (p.name.endswith(".key") and any(
                      _generation(p.name[:-4] + ".crt", stem) is not None for stem in (SIGNING, ENCRYPTION))))
