"""The issuing CA and its SCEP RA: creation on first start, loading, and certificate issuance."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from crl.partitions import partition_of

from ..replycache import FailureReplies
from . import tbs
from .keylabels import directory_store
from .keys import FileKey, KeyOps, KeyStore, durable_write
from .policy import IssuancePolicy, Vetted
from .rafiles import ENCRYPTION, is_split, load_encryption_ras, load_ras


def random_serial() -> int:
    """A positive serial with 127 random bits (RFC 5280 §4.1.2.2: at most 20 octets; CA/B: >= 64 bits)."""
    return int.from_bytes(secrets.token_bytes(16), "big") >> 1 or 1


def parse_name(text: str) -> x509.Name:
    """An RFC 4514 string, e.g. "CN=Device Trust CA,O=Example"."""
    return x509.Name.from_rfc4514_string(text)


def cdp_url(base_url: str, ca_name: str) -> str:
    return f"{base_url}/crl/{ca_name}.crl"


def partition_cdp_url(base_url: str, ca_name: str, partition: int) -> str:
    """The CRL Distribution Point of a certificate in a partition (crl.partitions), and its CRL's IDP."""
    return f"{base_url}/crl/{ca_name}/{partition}.crl"


def aia_url(base_url: str, ca_name: str) -> str:
    return f"{base_url}/ca/{ca_name}.crt"


def ocsp_url(base_url: str, ca_name: str) -> str:
    return f"{base_url}/ocsp/{ca_name}"


@dataclass
class CertificateAuthority:
    """An issuing CA with a separate RSA RA certificate that decrypts and signs SCEP messages, or (split RA
    certificates, as Microsoft NDES publishes them) a signing-only RA certificate and an encryption-only one."""

    name: str
    cert: x509.Certificate
    key: KeyOps
    ra_cert: x509.Certificate
    ra_key: KeyOps
    base_url: str
    next_ca_certs: list[x509.Certificate] = field(default_factory=list)
    # earlier RA certificates still valid, with their keys: requests encrypted to them still decrypt (ca.ra)
    previous_ras: list[tuple[x509.Certificate, KeyOps]] = field(default_factory=list)
    # split mode: the encryption RA certificate (keyEncipherment, dataEncipherment) and its key; ra_cert then
    # only signs (digitalSignature)
    ra_enc_cert: x509.Certificate | None = None
    ra_enc_key: KeyOps | None = None
    # earlier encryption RA certificates still valid (a renewal, or a switch back to one RA certificate)
    previous_enc_ras: list[tuple[x509.Certificate, KeyOps]] = field(default_factory=list)
    # a request addressed to the CA certificate is decrypted with the CA key (setting ca.decrypt_with_ca_key)
    ca_decrypts: bool = False
    failure_replies: FailureReplies = field(default_factory=FailureReplies, repr=False, compare=False)
    # the CA's recorded CRL partition count while partitioning is on (crl.partitions): issued certificates
    # name their partition's CRL; None: they name the full CRL
    crl_partitions: int | None = None

    def __post_init__(self) -> None:
        enc = serialization.Encoding.DER
        self.cert_der = self.cert.public_bytes(enc)
        self.ra_cert_der = self.ra_cert.public_bytes(enc)
        self.next_ca_ders = [c.public_bytes(enc) for c in self.next_ca_certs]
        self.ra_enc_cert_der = self.ra_enc_cert.public_bytes(enc) if self.ra_enc_cert is not None else None
        # (certificate DER, its key transport): the current encryption RA (split mode), the current RA, their
        # predecessors, then the CA when its key may decrypt (an RSA key only)
        current = [] if self.ra_enc_key is None else [(self.ra_enc_cert_der, self.ra_enc_key.decrypt)]
        self.ra_recipients = [*current, (self.ra_cert_der, self.ra_key.decrypt),
                              *((c.public_bytes(enc), k.decrypt) for c, k in self.previous_ras),
                              *((c.public_bytes(enc), k.decrypt) for c, k in self.previous_enc_ras)]
        if self.ca_decrypts and isinstance(self.cert.public_key(), rsa.RSAPublicKey):
            self.ra_recipients.append((self.cert_der, self.key.decrypt))
        # GetCACert (RFC 8894 §4.2.1.2): the RA certificate(s), then the CA; split as NDES orders them: the
        # signing RA certificate, the encryption RA certificate, the CA
        self.ca_cert_ders = [self.ra_cert_der, *([self.ra_enc_cert_der] if self.ra_enc_cert_der else []),
                             self.cert_der]
        self.ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self.ski)
        self._cdp = x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(cdp_url(self.base_url, self.name))],
            relative_name=None, reasons=None, crl_issuer=None)])
        self._aia = x509.AuthorityInformationAccess([x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier(aia_url(self.base_url, self.name)))])
        # the same AIA with the OCSP responder first (RFC 5280 §4.2.2.1), for profiles that name it
        self._aia_ocsp = x509.AuthorityInformationAccess([x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.OCSP,
            x509.UniformResourceIdentifier(ocsp_url(self.base_url, self.name))), *self._aia])
        self.fingerprint_sha256 = hashlib.sha256(self.cert_der).hexdigest()
        self._verified: dict[bytes, bool] = {}  # signature check results by certificate fingerprint
        self._partition_cdps: dict[int, x509.CRLDistributionPoints] = {}

    def partition_of(self, serial: int) -> int | None:
        """The CRL partition a certificate with this serial is issued into (None: the full CRL only)."""
        return None if not self.crl_partitions else partition_of(serial, self.crl_partitions)

    def _cdp_for(self, serial: int) -> x509.CRLDistributionPoints:
        partition = self.partition_of(serial)
        if partition is None:
            return self._cdp
        cdp = self._partition_cdps.get(partition)
        if cdp is None:
            cdp = self._partition_cdps[partition] = x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(partition_cdp_url(self.base_url, self.name, partition))],
                relative_name=None, reasons=None, crl_issuer=None)])
        return cdp

    @property
    def ra_mode(self) -> str:
        """"split" (a signing and an encryption RA certificate) or "single" (one RA certificate for both)."""
        return "split" if self.ra_enc_cert is not None else "single"

    @property
    def subject(self) -> x509.Name:
        return self.cert.subject

    @property
    def reserved_names(self) -> tuple[x509.Name, ...]:
        """Names never issued to a requester: this CA's, its RA's and a configured next CA's."""
        enc = () if self.ra_enc_cert is None else (self.ra_enc_cert.subject,)
        return (self.cert.subject, self.ra_cert.subject, *enc, *(c.subject for c in self.next_ca_certs))

    def issued_by_us(self, cert: x509.Certificate) -> bool:
        """True if `cert` carries a valid signature by this CA's key."""
        try:
            if cert.issuer != self.cert.subject:
                return False
        except ValueError:  # an issuer Name that does not decode (cryptography reads Names when asked)
            return False
        # one SCEP request asks several times (idempotency key, renewal check): verify each certificate once
        fingerprint = cert.fingerprint(hashes.SHA256())
        known = self._verified.get(fingerprint)
        if known is None:
            try:
                cert.verify_directly_issued_by(self.cert)
                known = True
            except (ValueError, TypeError, Exception):  # InvalidSignature, unsupported algorithms
                known = False
            if len(self._verified) >= 4096:
                self._verified.clear()
            self._verified[fingerprint] = known
        return known

    def issue(self, csr: x509.CertificateSigningRequest, policy: IssuancePolicy, *, serial: int,
              now: datetime, ocsp: bool = False, vetted: Vetted | None = None) -> x509.Certificate:
        """Sign a certificate for `csr` under `policy` (subject and SANs already vetted by the policy); with
        ``ocsp`` its AIA names the OCSP responder too. ``vetted``: what `policy` returned for `csr` and this CA's
        reserved names (IssuancePolicy.check or subject_and_sans); judged here when None."""
        if vetted is None:
            vetted = policy.subject_and_sans(csr, reserved_names=self.reserved_names)
        subject, sans = vetted
        not_before = now - timedelta(minutes=5)  # tolerate device clock skew
        not_after = min(now + timedelta(days=policy.validity_days), self.cert.not_valid_after_utc)
        b = (x509.CertificateBuilder()
             .subject_name(subject)
             .issuer_name(self.cert.subject)
             .public_key(csr.public_key())
             .serial_number(serial)
             .not_valid_before(not_before)
             .not_valid_after(not_after)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(policy.key_usage(csr.public_key()), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
             .add_extension(self._aki, critical=False)
             .add_extension(self._cdp_for(serial), critical=False)
             .add_extension(self._aia_ocsp if ocsp else self._aia, critical=False))
        eku = policy.extended_key_usage()
        if eku is not None:
            b = b.add_extension(eku, critical=False)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=not list(subject))
        return tbs.sign_certificate(b, self.key)


# ---------------------------------------------------------------------------------------------
# Creation and loading of CA material in the data directory: ca.crt, ca.key (encrypted), ra.crt, ra.key
# (split RA certificates: also ra-enc.crt, ra-enc.key)


def _ca_extensions(b: x509.CertificateBuilder, pub) -> x509.CertificateBuilder:
    ski = x509.SubjectKeyIdentifier.from_public_key(pub)
    return (b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False))


CA_FILES = ("ca.key", "ra.key", "ra.crt", "ca.crt")
ENCRYPTION_FILES = (f"{ENCRYPTION}.key", f"{ENCRYPTION}.crt")  # split RA certificates (create_ca, ra.renew_ra)
CERT_FILES = ("ra.crt", "ca.crt")  # what a CA whose keys are in a key store (PKCS#11 token) writes
LOCK_FILE = "ca.lock"


class CAFilesExist(RuntimeError):
    """CA material is (partly) present: creating a CA would overwrite keys that may be in use."""

    def __init__(self, directory: Path, present: list[str]):
        self.directory, self.present = directory, present
        missing = [f for f in CA_FILES if f not in present]
        super().__init__(
            f"refusing to create a CA in {directory}: {', '.join(present)} already exist"
            + (f" but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing" if missing else "")
            + "; restore the missing files from a backup, or move the directory away to create a new CA")


@contextlib.contextmanager
def _directory_lock(directory: Path):
    """An exclusive lock on the CA directory (flock on ca.lock): one instance creates, the others wait."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def load_or_create_ca(directory: Path, *, name: str, subject: str, ra_subject: str, key_size: int,
                      validity_days: int, ra_validity_days: int, passphrase: bytes, base_url: str,
                      now: datetime, key_type: str = "rsa", key_store: KeyStore | None = None,
                      ra_mode: str = "single") -> tuple[CertificateAuthority, bool]:
    """The CA in ``directory``, created first if the directory holds none; (ca, created). ``ra_mode`` only
    matters to a new CA (create_ca); an existing one keeps the RA certificates it has.

    Instances starting together on one directory serialise on a lock: one creates, the others load its CA.
    A directory holding a key without ``ca.crt`` (a lost file, a crash mid-creation) is refused
    (CAFilesExist), never overwritten.
    """
    with _directory_lock(directory):
        if (directory / "ca.crt").exists():
            return load_ca(directory, name=name, passphrase=passphrase, base_url=base_url, key_store=key_store), False
        return create_ca(directory, name=name, subject=subject, ra_subject=ra_subject, key_size=key_size,
                         validity_days=validity_days, ra_validity_days=ra_validity_days, passphrase=passphrase,
                         base_url=base_url, now=now, key_type=key_type, key_store=key_store, ra_mode=ra_mode), True


RA_MODES = ("single", "split")
RA_KEY_BITS = 2048


def create_ca(directory: Path, *, name: str, subject: str, ra_subject: str, key_size: int, validity_days: int,
              ra_validity_days: int, passphrase: bytes, base_url: str, now: datetime,
              key_type: str = "rsa", key_store: KeyStore | None = None, ra_mode: str = "single"
              ) -> CertificateAuthority:
    """Create a self-signed issuing CA and its RA certificate, and write them durably to `directory`.

    The CA key is RSA of `key_size` bits or EC (`key_type` "ec-p256", "ec-p384"); the RA key is always RSA
    (RFC 8894 §2.1.2: clients encrypt to it). With a `key_store` the keys are taken from it by label, or
    generated there, and no key file is written.

    ``ra_mode`` "split" starts the CA with split RA certificates, as `scep_server.ca.ra.renew_ra` switches an
    existing one: ``ra.crt`` only signs, and the encryption RA certificate ``ra-enc.crt`` (its own key) is
    written with :func:`write_ra`, as a renewal writes it. Not with a `key_store` (ValueError).

    Raises CAFilesExist if any of the four files (or an encryption RA's) is already there (checked before the
    keys are generated).
    """
    if ra_mode not in RA_MODES:
        raise ValueError(f"unknown RA mode {ra_mode!r} (single or split)")
    split = ra_mode == "split"
    if split and key_store is not None:
        raise ValueError("split RA certificates are not made with the keys in a PKCS#11 token")
    present = [f for f in (*CA_FILES, *ENCRYPTION_FILES) if (directory / f).exists()]
    if present:
        raise CAFilesExist(directory, present)
    if key_store is None:
        ca_key: KeyOps = FileKey.generate(key_size, key_type)
    else:
        ca_key = key_store.ca_key(create=(key_type, key_size))
    ca_name = parse_name(subject)
    ca_cert = tbs.sign_certificate(_ca_extensions(
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(random_serial()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=validity_days)), ca_key.public_key()), ca_key)
    ra_key = FileKey.generate(RA_KEY_BITS) if key_store is None else key_store.ra_key(create=("rsa", RA_KEY_BITS))
    ra_cert = issue_ra_cert(ca_cert, ca_key, ra_key.public_key(), subject=ra_subject, validity_days=ra_validity_days,
                            base_url=base_url, ca_name=name, now=now, usage="sign" if split else "both")
    ca = CertificateAuthority(name=name, cert=ca_cert, key=ca_key, ra_cert=ra_cert, ra_key=ra_key, base_url=base_url)
    directory.mkdir(parents=True, exist_ok=True)
    # each file is created exclusively (never an overwrite); ca.crt last: its presence marks the directory
    # complete (load_or_create_ca)
    if key_store is None:
        ca_key.save(directory / "ca.key", passphrase)
        ra_key.save(directory / "ra.key", passphrase)
    if split:  # the encryption RA before the signing-only one, as a renewal writes them
        enc_cert, enc_key = write_ra(directory, ENCRYPTION, ca, subject=ra_subject, validity_days=ra_validity_days,
                                     passphrase=passphrase, now=now, usage="encrypt")
        ca = dataclasses.replace(ca, ra_enc_cert=enc_cert, ra_enc_key=enc_key)
    durable_write(directory / "ra.crt", ra_cert.public_bytes(serialization.Encoding.PEM), mode=0o644, exclusive=True)
    durable_write(directory / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644, exclusive=True)
    return ca


def write_ra(directory: Path, stem: str, ca: CertificateAuthority, *, subject: str, validity_days: int,
             passphrase: bytes, now: datetime, usage: str, key_store: KeyStore | None = None
             ) -> tuple[x509.Certificate, KeyOps]:
    """Issue an RA certificate (``usage``: issue_ra_cert) with a new key under ``ca`` and write it to
    ``directory`` as ``<stem>.crt`` and ``<stem>.key`` (with a ``key_store``: the key generated in the token
    under a new label, which ``<stem>.label`` records); the certificate and its key."""
    label, file_key = None, None
    key: KeyOps
    if key_store is None:
        key = file_key = FileKey.generate(RA_KEY_BITS)
    else:
        label = key_store.renewed_ra_label(now)
        key = key_store.ra_key(create=("rsa", RA_KEY_BITS), label=label)
    cert = issue_ra_cert(ca.cert, ca.key, key.public_key(), subject=subject, validity_days=validity_days,
                         base_url=ca.base_url, ca_name=ca.name, now=now, usage=usage)
    # the key (or its label) first, the certificate (which completes it) last: a key or label without its
    # certificate is what a crash between the writes leaves, never used, replaced here
    if file_key is None:
        durable_write(directory / f"{stem}.label", f"{label}\n".encode(), mode=0o644)
    else:
        (directory / f"{stem}.key").unlink(missing_ok=True)
        file_key.save(directory / f"{stem}.key", passphrase)
    durable_write(directory / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), mode=0o644,
                  exclusive=True)
    return cert, key


RA_USAGES = ("both", "sign", "encrypt")


def issue_ra_cert(ca_cert: x509.Certificate, ca_key: KeyOps, ra_pub: rsa.RSAPublicKey, *, subject: str,
                  validity_days: int, base_url: str, ca_name: str, now: datetime,
                  usage: str = "both") -> x509.Certificate:
    """The RA certificate (RFC 8894 §2.1.2), RSA: digitalSignature + keyEncipherment (``usage`` "both"); in split
    mode the signing one (digitalSignature, "sign") or the encryption one (keyEncipherment + dataEncipherment,
    "encrypt"). Its CRL and CA certificate locations are left out when the base URL names a wildcard address
    (0.0.0.0, ::): nobody could reach them, and the RA certificate lives two years (RA renewal writes them once
    server.base_url is set)."""
    if usage not in RA_USAGES:
        raise ValueError(f"unknown RA certificate usage {usage!r}")
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    b = (x509.CertificateBuilder().subject_name(parse_name(subject)).issuer_name(ca_cert.subject)
         .public_key(ra_pub).serial_number(random_serial())
         .not_valid_before(now - timedelta(minutes=5))
         .not_valid_after(min(now + timedelta(days=validity_days), ca_cert.not_valid_after_utc))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=usage != "encrypt", content_commitment=False,
                                      key_encipherment=usage != "sign", data_encipherment=usage == "encrypt",
                                      key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                                      decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(ra_pub), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False))
    if not names_wildcard(base_url):
        b = (b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                 full_name=[x509.UniformResourceIdentifier(cdp_url(base_url, ca_name))], relative_name=None,
                 reasons=None, crl_issuer=None)]), critical=False)
              .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                  x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                  x509.UniformResourceIdentifier(aia_url(base_url, ca_name)))]), critical=False))
    return tbs.sign_certificate(b, ca_key)


def names_wildcard(base_url: str) -> bool:
    """Whether the URL's host is a wildcard address (0.0.0.0, ::), which no client can reach."""
    from ipaddress import ip_address
    from urllib.parse import urlsplit

    try:
        return ip_address(urlsplit(base_url).hostname or "").is_unspecified
    except ValueError:
        return False


def load_ca(directory: Path, *, name: str, passphrase: bytes, base_url: str,
            key_store: KeyStore | None = None, ca_decrypts: bool = False) -> CertificateAuthority:
    """Load CA material written by create_ca (plus an optional next CA for GetNextCACert: next-ca.crt).

    Every key must be the key of its certificate (ValueError if not: a key file or certificate restored from
    another CA, a token key under the wrong label). With a `key_store`, the keys come from it: those of a CA made
    by a rollover by the labels its directory records (scep_server.ca.keylabels), the others by the settings'
    labels, a renewed RA's key by the label recorded beside its certificate (scep_server.ca.rafiles)."""
    def cert(fname: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((directory / fname).read_bytes())

    next_path = directory / "next-ca.crt"
    next_certs = x509.load_pem_x509_certificates(next_path.read_bytes()) if next_path.exists() else []
    if key_store is None:
        ca_key: KeyOps = FileKey.load(directory / "ca.key", passphrase)
        (ra_cert, ra_key), *previous = load_ras(directory, passphrase)  # the current RA and those still valid
        enc_ras = load_encryption_ras(directory, passphrase, split=is_split(ra_cert))
    else:  # a CA made by a rollover in the token: its keys by the labels recorded in its directory
        key_store = directory_store(directory, key_store)
        ca_key = key_store.ca_key()
        (ra_cert, ra_key), *previous = load_ras(directory, passphrase, key_store=key_store)
        enc_ras = []  # split RA certificates are not made with the keys in a token
    ca_cert = cert("ca.crt")
    where = "the key store" if key_store is not None else directory / "ca.key"
    if ca_key.public_key() != ca_cert.public_key():  # it would sign what ca.crt does not verify
        raise ValueError(f"the CA key in {where} is not the key of ca.crt")
    return CertificateAuthority(
        name=name, cert=ca_cert, key=ca_key, ra_cert=ra_cert, ra_key=ra_key, base_url=base_url,
        next_ca_certs=next_certs, previous_ras=previous, ca_decrypts=ca_decrypts,
        **split_ras(ra_cert, enc_ras))


def split_ras(ra_cert: x509.Certificate, enc_ras: list[tuple[x509.Certificate, KeyOps]]) -> dict:
    """The encryption RA arguments of a CertificateAuthority whose current RA certificate is ``ra_cert``: in
    split mode the first of ``enc_ras`` is current and the rest previous, otherwise all are previous."""
    if is_split(ra_cert) and enc_ras:
        (enc_cert, enc_key), *rest = enc_ras
        return {"ra_enc_cert": enc_cert, "ra_enc_key": enc_key, "previous_enc_ras": rest}
    return {"previous_enc_ras": enc_ras}

