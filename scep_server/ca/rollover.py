"""Preparing a CA rollover (RFC 8894 §4.7): the next CA of a CA directory, announced by GetNextCACert.

`prepare` creates, in the CA's directory, a new self-signed CA certificate with a new key
(``next-ca.key``), the RA certificate that will serve it (``next-ra.key``), optionally a cross certificate of
the new CA signed by the current one, and last ``next-ca.crt``: the new CA certificate, then the next RA
certificate and the cross certificate. Its presence marks the rollover prepared: every server loads it
(`scep_server.ca.authority.load_ca`), GetCACaps advertises GetNextCACert and GetNextCACert serves those
certificates signed by the current RA. Files are created exclusively, never overwritten.

With the keys in a PKCS#11 token (a ``key_store``), the next CA's and RA's keys are generated in the token
(sensitive, never extractable), under the current CA's labels made one generation higher ("scep-ca" ->
"scep-ca-g2" -> "scep-ca-g3", the same for the RA key's label): a label any object of the token has already is
refused (LabelTaken), nothing is overwritten. ``next-key-labels.json`` records those labels in place of
``next-ca.key`` and ``next-ra.key`` (scep_server.ca.keylabels), and on activation the new CA's directory gets
them as ``key-labels.json``: no key file is written.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from .authority import (RA_KEY_BITS, CertificateAuthority, _ca_extensions, _directory_lock, issue_ra_cert, parse_name,
                        random_serial)
from .keylabels import LABELS_FILE, NEXT_LABELS_FILE, read_labels, write_labels
from .keys import FileKey, KeyOps, KeyStore, durable_write

NEXT_FILES = ("next-ca.key", "next-ra.key", "next-ca.crt")
NEXT_TOKEN_FILES = (NEXT_LABELS_FILE, "next-ca.crt")
"""What a rollover prepared in a PKCS#11 token writes: the labels of the next keys, then the certificates."""
ACTIVE_FILE = "active"
"""In the directory of the CA directories: the name of the CA that issues (after a rollover's activation)."""


def generation(name: str) -> tuple[str, int]:
    """A CA name's lineage and rollover generation: "default" -> ("default", 1), "default-g3" -> ("default", 3)."""
    m = re.fullmatch(r"(.+)-g(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, 1)


def successor_name(name: str) -> str:
    """The name the next CA of CA ``name`` gets on activation: "default" -> "default-g2" -> "default-g3"."""
    base, n = generation(name)
    return f"{base}-g{n + 1}"


class RolloverPrepared(Exception):
    """The CA directory already holds a next CA (or part of one)."""


class PrepareNotUndone(RuntimeError):
    """A prepare in the PKCS#11 token failed and what it had made (the next labels' record, key pairs it
    generated) could not be removed; the message names what to delete before preparing again."""


class LabelTaken(Exception):
    """A label the next CA's keys would get in the PKCS#11 token is there already: nothing is overwritten."""


def next_labels(key_store: KeyStore) -> tuple[str, str]:
    """The labels of the next CA's and RA's keys in the token: the current ones a generation higher."""
    ca_label, ra_label = key_store.labels()
    return successor_name(ca_label), successor_name(ra_label)


def next_subject(current: x509.Name) -> x509.Name:
    """The current CA's name with its common name numbered one higher ("... CA" -> "... CA G2" -> "... CA G3")."""
    attrs = []
    changed = False
    for attr in current:
        if attr.oid == NameOID.COMMON_NAME and not changed:
            value = str(attr.value)
            m = re.fullmatch(r"(.*) G(\d+)", value)
            value = f"{m.group(1)} G{int(m.group(2)) + 1}" if m else f"{value} G2"
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, value[:64]))
            changed = True
        else:
            attrs.append(attr)
    if not changed:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, "Issuing CA G2"))
    return x509.Name(attrs)


def prepare(directory: Path, ca: CertificateAuthority, *, key_size: int, validity_days: int, ra_validity_days: int,
            passphrase: bytes, now: datetime, subject: str | None = None, cross_sign: bool = False,
            key_store: KeyStore | None = None, key_type: str = "rsa") -> list[x509.Certificate]:
    """Create the next CA of ``ca`` in ``directory``; the certificates GetNextCACert will serve (the new CA,
    its RA, and with ``cross_sign`` the new CA's certificate signed by the current CA).

    With a ``key_store`` (the current CA's: a PKCS#11 token) the keys are generated there, the CA key of
    ``key_type`` and ``key_size`` as `scep-server init` makes it, under :func:`next_labels`, which
    ``next-key-labels.json`` records (written before the keys are made: an interrupted prepare names them).
    When anything fails after that record was written (a key the token refuses to generate, a full token, the
    token gone), the key pairs generated in this call and then the record are removed, and the failure raised:
    a retry starts afresh.

    Raises RolloverPrepared when a next CA is there already (or a prepare was interrupted: the message names
    what to delete), LabelTaken when a next label is in the token already, PrepareNotUndone when a failed
    prepare could not remove what it made (the message names it), ValueError for a subject that does not parse
    or that is the current CA's.
    """
    name = parse_name(subject) if subject else next_subject(ca.cert.subject)
    if name == ca.cert.subject:
        raise ValueError("the next CA needs a name of its own (the current CA's is taken)")
    with _directory_lock(directory):
        present = [f for f in (*NEXT_FILES, NEXT_LABELS_FILE) if (directory / f).exists()]
        if present == [NEXT_LABELS_FILE] and not (directory / "next-ca.crt.activated").exists():
            raise RolloverPrepared(f"a prepare of the next CA of {ca.name!r} was interrupted: "
                                   f"{_leftover(directory)}, then prepare again")
        if present:
            raise RolloverPrepared(f"a next CA is already prepared in {directory} ({', '.join(present)})")
        if key_store is not None:
            labels = next_labels(key_store)
            taken = [label for label in labels if key_store.label_taken(label)]
            if taken:
                raise LabelTaken(f"the next CA of {ca.name!r} gets its keys under the labels {labels[0]!r} (CA) and "
                                 f"{labels[1]!r} (RA), and the PKCS#11 token already holds an object labelled "
                                 f"{' and '.join(map(repr, taken))}: nothing was written (delete a key an "
                                 "interrupted prepare left there with the token's tools first)")
            write_labels(directory / NEXT_LABELS_FILE, labels)
            next_store = key_store.for_labels(labels)
        try:
            return _prepare(directory, ca, name, key_size=key_size, validity_days=validity_days,
                            ra_validity_days=ra_validity_days, passphrase=passphrase, now=now, cross_sign=cross_sign,
                            next_store=next_store if key_store is not None else None, key_type=key_type)
        except BaseException as exc:
            if key_store is not None and not (directory / "next-ca.crt").exists():
                _undo_prepare(directory, ca.name, next_store, exc)
            raise


def _leftover(directory: Path) -> str:
    """What to delete after a prepare in the token that stopped before writing next-ca.crt."""
    path = directory / NEXT_LABELS_FILE
    try:
        labels = read_labels(path)
    except ValueError:
        labels = None
    keys = (f"the key objects labelled {labels[0]!r} and {labels[1]!r} it may have left in the PKCS#11 token "
            "(with the token's tools), then ") if labels else ""
    return f"delete {keys}{path}"


def _undo_prepare(directory: Path, name: str, next_store: KeyStore, exc: BaseException) -> None:
    """A prepare in the token failed after recording the next labels: delete the key pairs it generated (by
    label and the CKA_ID each got, none other) and then the record, so that a retry works. PrepareNotUndone,
    naming what is left to remove, when that fails."""
    left: list[str] = []
    try:
        next_store.discard_generated()
    except Exception as cleanup:  # noqa: BLE001 - reported below with what to remove
        ca_label, ra_label = next_store.labels()
        left.append(f"the key objects labelled {ca_label!r} and {ra_label!r} in the PKCS#11 token ({cleanup})")
    if not left:  # the record goes last: while keys it names may be in the token, it names them
        try:
            (directory / NEXT_LABELS_FILE).unlink(missing_ok=True)
        except OSError as cleanup:
            left.append(f"{directory / NEXT_LABELS_FILE} ({cleanup.strerror})")
    else:
        left.append(str(directory / NEXT_LABELS_FILE))
    if left:
        raise PrepareNotUndone(f"preparing the next CA of {name!r} failed ({type(exc).__name__}: {exc}) and what it "
                               f"made could not be removed: delete {' and then '.join(left)} (the keys with the "
                               "token's tools), then prepare again") from exc


def _prepare(directory: Path, ca: CertificateAuthority, name: x509.Name, *, key_size: int, validity_days: int,
             ra_validity_days: int, passphrase: bytes, now: datetime, cross_sign: bool, next_store: KeyStore | None,
             key_type: str) -> list[x509.Certificate]:
    """`prepare` once the next CA may be written: its keys (in files, or generated in ``next_store``'s token),
    its certificates, and last next-ca.crt."""
    key: KeyOps
    ra_key: KeyOps
    if next_store is None:
        key = FileKey.generate(key_size)
    else:
        key = next_store.ca_key(create=(key_type, key_size))
    not_before = now - timedelta(minutes=5)
    not_after = now + timedelta(days=validity_days)
    builder = (x509.CertificateBuilder().subject_name(name).public_key(key.public_key())
               .not_valid_before(not_before).not_valid_after(not_after))
    new_ca = key.sign_certificate(_ca_extensions(
        builder.issuer_name(name).serial_number(random_serial()), key.public_key()), hashes.SHA256())
    if next_store is None:
        ra_key = FileKey.generate(RA_KEY_BITS)
    else:
        ra_key = next_store.ra_key(create=("rsa", RA_KEY_BITS))
    ra_cert = issue_ra_cert(new_ca, key, ra_key.public_key(), subject=ca.ra_cert.subject.rfc4514_string(),
                            validity_days=ra_validity_days, base_url=ca.base_url,
                            ca_name=successor_name(ca.name), now=now)
    out = [new_ca, ra_cert]
    if cross_sign:
        cross = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.cert.subject)
                 .public_key(key.public_key()).serial_number(random_serial()).not_valid_before(not_before)
                 .not_valid_after(min(not_after, ca.cert.not_valid_after_utc)))
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cross = (cross.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                 .add_extension(new_ca.extensions.get_extension_for_class(x509.KeyUsage).value, critical=True)
                 .add_extension(ski, critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca.ski),
                                critical=False))
        out.append(ca.key.sign_certificate(cross, hashes.SHA256()))
    if isinstance(key, FileKey) and isinstance(ra_key, FileKey):
        key.save(directory / "next-ca.key", passphrase)
        ra_key.save(directory / "next-ra.key", passphrase)
    durable_write(directory / "next-ca.crt",
                  b"".join(c.public_bytes(serialization.Encoding.PEM) for c in out), mode=0o644, exclusive=True)
    return out


class NotPrepared(Exception):
    """No next CA is prepared in the CA directory."""


def activate(root: Path, name: str, passphrase: bytes | None = None, key_store: KeyStore | None = None) -> str:
    """Make the prepared next CA of CA ``name`` (in ``root``/``name``) a CA of its own, ``root``/<successor
    name> (its key, RA key and certificates), and the issuing one (``root``/active); the CA ``name`` stops
    announcing it. The new CA's name. Idempotent: a second call after a completed one changes nothing.

    With the ``passphrase``, ``next-ca.key`` and ``next-ra.key`` must open with it and be the keys of the new CA
    and RA certificates in ``next-ca.crt`` (NotPrepared otherwise, before anything is written).

    With a ``key_store`` (a PKCS#11 token) the next CA was prepared there: the keys labelled as
    ``next-key-labels.json`` records must be in the token and be the keys of those certificates (NotPrepared
    otherwise), and the new CA's directory gets the record (``key-labels.json``) in place of key files."""
    directory, new_name = root / name, successor_name(name)
    target = root / new_name
    with _directory_lock(directory):
        if (target / "ca.crt").exists():  # activated before (the database step may still be due)
            durable_write(root / ACTIVE_FILE, new_name.encode() + b"\n", mode=0o644)
            return new_name
        in_token = key_store is not None
        if in_token != (directory / NEXT_LABELS_FILE).exists() and (directory / "next-ca.crt").exists():
            raise NotPrepared(f"the next CA of {name!r} was prepared with its keys "
                              f"{'in files' if in_token else 'in a PKCS#11 token'}, and the CA keys are "
                              f"{'in a PKCS#11 token' if in_token else 'files'} now (ca.key_backend): it cannot be "
                              "activated")
        missing = [f for f in (NEXT_TOKEN_FILES if in_token else NEXT_FILES) if not (directory / f).exists()]
        if in_token and missing == ["next-ca.crt"] and not (directory / "next-ca.crt.activated").exists():
            raise NotPrepared(f"no next CA is prepared for {name!r}: its prepare was interrupted; "
                              f"{_leftover(directory)} and run `ca rollover prepare` again")
        if missing:
            raise NotPrepared(f"no next CA is prepared for {name!r} ({', '.join(missing)} missing): run "
                              "`ca rollover prepare` first")
        new_ca, ra_cert, *cross = x509.load_pem_x509_certificates((directory / "next-ca.crt").read_bytes())
        if key_store is not None:
            labels = _check_next_token_keys(directory, name, key_store, new_ca, ra_cert)
        elif passphrase is not None:
            _check_next_keys(directory, name, passphrase, new_ca, ra_cert)
        target.mkdir(parents=True, exist_ok=True)
        for leftover in target.iterdir():  # what an interrupted activation wrote; ca.crt (written last) is absent
            leftover.unlink()
        pem = serialization.Encoding.PEM
        if key_store is not None:
            write_labels(target / LABELS_FILE, labels)
        else:
            durable_write(target / "ca.key", (directory / "next-ca.key").read_bytes(), exclusive=True)
            durable_write(target / "ra.key", (directory / "next-ra.key").read_bytes(), exclusive=True)
        durable_write(target / "ra.crt", ra_cert.public_bytes(pem), mode=0o644, exclusive=True)
        if cross:
            durable_write(target / "cross.crt", b"".join(c.public_bytes(pem) for c in cross), mode=0o644,
                          exclusive=True)
        durable_write(target / "ca.crt", new_ca.public_bytes(pem), mode=0o644, exclusive=True)
        durable_write(root / ACTIVE_FILE, new_name.encode() + b"\n", mode=0o644)
        (directory / "next-ca.crt").replace(directory / "next-ca.crt.activated")  # no longer announced
        return new_name


def _check_next_keys(directory: Path, name: str, passphrase: bytes, new_ca: x509.Certificate,
                     ra_cert: x509.Certificate) -> None:
    """NotPrepared unless next-ca.key and next-ra.key open and are the keys of the next CA's certificates."""
    for fname, cert in (("next-ca.key", new_ca), ("next-ra.key", ra_cert)):
        try:
            key = FileKey.load(directory / fname, passphrase)
        except (ValueError, TypeError) as exc:
            raise NotPrepared(f"the next CA of {name!r} cannot be activated: {fname} cannot be read with the CA "
                              f"passphrase ({exc})") from None
        if key.public_key() != cert.public_key():
            raise NotPrepared(f"the next CA of {name!r} cannot be activated: {fname} is not the key of its "
                              f"certificate in next-ca.crt") from None


def _check_next_token_keys(directory: Path, name: str, key_store: KeyStore, new_ca: x509.Certificate,
                           ra_cert: x509.Certificate) -> tuple[str, str]:
    """The labels ``next-key-labels.json`` records; NotPrepared unless the token holds keys with them that are
    the keys of the next CA's certificates (the token's equivalent of :func:`_check_next_keys`)."""
    from .pkcs11 import HsmError, TokenUnavailable

    try:
        labels = read_labels(directory / NEXT_LABELS_FILE)
    except ValueError as exc:
        raise NotPrepared(f"the next CA of {name!r} cannot be activated: {exc}") from None
    assert labels is not None  # checked by the caller
    store = key_store.for_labels(labels)
    for what, label, cert, find in (("CA", labels[0], new_ca, store.ca_key), ("RA", labels[1], ra_cert, store.ra_key)):
        try:
            key = find()
        except TokenUnavailable:
            raise
        except HsmError as exc:
            raise NotPrepared(f"the next CA of {name!r} cannot be activated: its {what} key {label!r} is not usable "
                              f"in the PKCS#11 token ({exc})") from None
        if key.public_key() != cert.public_key():
            raise NotPrepared(f"the next CA of {name!r} cannot be activated: the key {label!r} in the PKCS#11 token "
                              f"is not the key of its {what} certificate in next-ca.crt")
    return labels
