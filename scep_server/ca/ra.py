"""The RA certificates of a CA directory: the first one (``ra.crt``, ``ra.key``) and its renewals
(``ra-<n>.crt``, ``ra-<n>.key``, n = 1, 2, ... in the order they were issued); in split mode also the
encryption RA certificate (``ra-enc.crt``, ``ra-enc.key``) and its renewals (``ra-enc-<n>.crt``).

Split mode (`scep-server ca renew-ra --mode split`, or from the start: `scep-server init --ra-mode split`,
scep_server.ca.authority.create_ca), as Microsoft NDES publishes its RA: the current RA certificate
only signs (digitalSignature), and the newest encryption RA certificate (keyEncipherment, dataEncipherment)
is the one clients that choose by key usage encrypt to. The mode is what the newest RA certificate says: one
without keyEncipherment is split. A renewal in split mode renews both.

The current RA is the one issued last (the highest n); GetCACert serves it and replies are signed with
it. Every earlier RA certificate that has not expired still decrypts requests addressed to it (the overlap
of a renewal: a device that read the old RA certificate just before the renewal still enrols). A renewal
writes its key first and its certificate last, each exclusively: a crash leaves at most a key without a
certificate, which is ignored. With the keys in a PKCS#11 token, ``ra-<n>.label`` names the new key in the
token instead of ``ra-<n>.key``. Renewals of one directory serialise on the directory's lock (``ca.lock``,
the lock that creates the CA): one process renews, the others find the new certificate and load it.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from .authority import CertificateAuthority, _directory_lock, split_ras, write_ra
from .keys import KeyOps, KeyStore
from .rafiles import (ENCRYPTION, _generation, _ra_cert_files, files_state, is_split, load_encryption_ras, load_ras,
                      ra_certificates)

__all__ = ["files_state", "load_ras", "load_encryption_ras", "ra_certificates", "with_ras", "renewal_due",
           "renew_ra", "is_split"]


def with_ras(ca: CertificateAuthority, ras: list[tuple[x509.Certificate, KeyOps]],
             next_ca_certs: list[x509.Certificate] | None = None,
             enc_ras: list[tuple[x509.Certificate, KeyOps]] | None = None) -> CertificateAuthority:
    """A copy of ``ca`` with these RA certificates (the first current), encryption RA certificates (newest
    first; default: none) and next CA certificates (default: its own); its GetCACert answer and reply caches
    start afresh."""
    (ra_cert, ra_key), *previous = ras
    return CertificateAuthority(name=ca.name, cert=ca.cert, key=ca.key, ra_cert=ra_cert, ra_key=ra_key,
                                base_url=ca.base_url, previous_ras=previous, ca_decrypts=ca.ca_decrypts,
                                crl_partitions=ca.crl_partitions,
                                next_ca_certs=list(ca.next_ca_certs if next_ca_certs is None else next_ca_certs),
                                **split_ras(ra_cert, enc_ras or []))


def renewal_due(ra_cert: x509.Certificate, *, now: datetime, renew_before: timedelta) -> bool:
    return ra_cert.not_valid_after_utc - now < renew_before


def renew_ra(directory: Path, ca: CertificateAuthority, *, validity_days: int, passphrase: bytes, now: datetime,
             only_if_due: timedelta | None = None, mode: str | None = None,
             key_store: KeyStore | None = None) -> x509.Certificate | None:
    """Issue a new RA certificate with a new key under ``ca`` and write it to ``directory``; the new one.

    In split mode (the newest RA certificate only signs) the encryption RA certificate is renewed too, with
    its own new key, and written first. ``mode`` ("single", "split") switches the mode: "split" issues a
    signing-only RA certificate and an encryption-only one, "single" one RA certificate for both (the
    encryption RA certificates then still decrypt until they expire); None keeps the current mode.

    With a ``key_store`` (a PKCS#11 token) the new key pair is generated in the token (sensitive, never
    extractable) under a new label (``KeyStore.renewed_ra_label``), which ``ra-<n>.label`` records in place of
    a key file: every process finds the key by it (scep_server.ca.rafiles.load_ras). Split mode is not made
    there.

    With ``only_if_due`` (the automatic renewal), nothing is done (None) when the newest RA certificate on
    disk has more than that left (another process renewed it first), or when a new certificate would end no
    later than it (the CA itself ends first: that needs a CA rollover, not another RA).
    """
    if mode not in (None, "single", "split"):
        raise ValueError(f"unknown RA mode {mode!r} (single or split)")
    with _directory_lock(directory):
        newest = _ra_cert_files(directory)[0]
        current = x509.load_pem_x509_certificate(newest.read_bytes())
        not_after = min(now + timedelta(days=validity_days), ca.cert.not_valid_after_utc)
        if only_if_due is not None and (not renewal_due(current, now=now, renew_before=only_if_due)
                                        or not_after <= current.not_valid_after_utc):
            return None
        split = is_split(current) if mode is None else mode == "split"
        if split and key_store is not None:
            raise ValueError("split RA certificates are not made with the keys in a PKCS#11 token")
        subject = current.subject.rfc4514_string()
        if split:
            enc_files = _ra_cert_files(directory, ENCRYPTION)
            generation = _generation(enc_files[0].name, ENCRYPTION) + 1 if enc_files else 0
            write_ra(directory, ENCRYPTION if generation == 0 else f"{ENCRYPTION}-{generation}", ca,
                     subject=subject, validity_days=validity_days, passphrase=passphrase, now=now, usage="encrypt")
        cert, _ = write_ra(directory, f"ra-{(_generation(newest.name) or 0) + 1}", ca, subject=subject,
                           validity_days=validity_days, passphrase=passphrase, now=now,
                           usage="sign" if split else "both", key_store=key_store)
        return cert
