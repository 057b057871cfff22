"""Who signs OCSP responses of one CA: a delegated OCSP signing certificate (RFC 6960 §4.2.2.2), or the CA key.

The delegated certificate is issued by the CA itself: key usage digitalSignature, extended key usage
id-kp-OCSPSigning, id-pkix-ocsp-nocheck (clients need not check its own status) and a short validity
(``ocsp.signer_validity``). Its key is a 2048-bit RSA key kept encrypted with the CA passphrase beside the CA
material (``ocsp.key``, ``ocsp.crt`` in the CA directory, like ``ra.key``). It is renewed
``ocsp.signer_renew_before`` its expiry: the process that looks first (every ``ocsp.signer_check_interval``)
issues the new one under the CA directory lock, the others load it from the files when they look.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crl.config import OcspSettings
from crl.ocsp import ResponseSigner
from crl.signing import algorithm_for_public_key

from ..ca.authority import CertificateAuthority, _directory_lock, random_serial
from ..ca.keys import FileKey, durable_write
from ..ca.tbs import digest_for

log = structlog.get_logger("ocsp.signer")

KEY_FILE = "ocsp.key"
CERT_FILE = "ocsp.crt"
KEY_BITS = 2048


def _signer(key, responder_der: bytes, certs: tuple[bytes, ...] = ()) -> ResponseSigner:
    """Sign with ``key`` (a KeyOps) under the algorithm of its public key: sha256WithRSAEncryption for RSA,
    ecdsa-with-SHA256 / SHA384 for P-256 / P-384 (the hash the CA signs its certificates and CRLs with)."""
    digest = digest_for(key.public_key())
    algorithm = algorithm_for_public_key(key.public_key(), digest.name)
    return ResponseSigner(algorithm, lambda tbs: key.sign(tbs, digest), responder_der, certs,
                          blocking=getattr(key, "in_process_key", None) is None)  # a token's key: in a thread


def ca_signer(ca: CertificateAuthority) -> ResponseSigner:
    """The CA key signs its responses itself (``ocsp.signer = "ca"``): no certificate is sent along."""
    return _signer(ca.key, ca.cert_der)


def _key_signer(key: FileKey, cert: x509.Certificate) -> ResponseSigner:
    der = cert.public_bytes(serialization.Encoding.DER)
    return _signer(key, der, (der,))


def issue_signer_certificate(ca: CertificateAuthority, public_key, *, now: datetime,
                             validity: timedelta) -> x509.Certificate:
    """A delegated OCSP signing certificate for ``public_key``, issued by ``ca``."""
    cn = ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = f"{cn[0].value if cn else ca.name} OCSP Responder"[:64]
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(ca.cert.subject)
         .public_key(public_key)
         .serial_number(random_serial())
         .not_valid_before(now - timedelta(minutes=5))
         .not_valid_after(min(now + validity, ca.cert.not_valid_after_utc))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                      crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
         .add_extension(x509.OCSPNoCheck(), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca.ski), critical=False))
    return ca.key.sign_certificate(b, digest_for(ca.key.public_key()))


class DelegatedSigner:
    """The delegated signer of one CA, loaded from its files and renewed when due (blocking: run in a thread)."""

    def __init__(self, ca: CertificateAuthority, directory: Path, passphrase: bytes, settings: OcspSettings) -> None:
        self.ca = ca
        self.directory = directory
        self.passphrase = passphrase
        self.settings = settings
        self.cert: x509.Certificate | None = None
        self.signer: ResponseSigner | None = None
        self._mtime: float | None = None

    def _usable(self, cert: x509.Certificate, key: FileKey, now: datetime) -> bool:
        """The certificate is the key's, issued by this CA, and not due for renewal."""
        if cert.public_key() != key.public_key() or cert.issuer != self.ca.cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.ca.cert)
        except Exception:  # noqa: BLE001 - another CA's signature, an unsupported algorithm
            return False
        return cert.not_valid_after_utc - now > self.settings.signer_renew_before

    def _load(self, now: datetime) -> bool:
        """Read the files (when they changed since last read); True when they hold a usable signer."""
        cert_path, key_path = self.directory / CERT_FILE, self.directory / KEY_FILE
        try:
            mtime = max(cert_path.stat().st_mtime, key_path.stat().st_mtime)
        except FileNotFoundError:
            return False
        if mtime == self._mtime and self.cert is not None:
            return self.cert.not_valid_after_utc - now > self.settings.signer_renew_before
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = FileKey.load(key_path, self.passphrase)
        except (ValueError, TypeError) as exc:
            log.warning("ocsp.signer.unreadable", ca=self.ca.name, error=f"{type(exc).__name__}: {exc}")
            return False
        if not self._usable(cert, key, now):
            return False
        self.cert, self.signer, self._mtime = cert, _key_signer(key, cert), mtime
        return True

    def refresh(self, now: datetime) -> bool:
        """Make sure a usable signer is loaded, renewing it when due; True when a new certificate was issued."""
        if self._load(now):
            return False
        with _directory_lock(self.directory):
            if self._load(now):  # another process renewed it meanwhile
                return False
            key = FileKey.generate(KEY_BITS)
            cert = issue_signer_certificate(self.ca, key.public_key(), now=now, validity=self.settings.signer_validity)
            key.save(self.directory / KEY_FILE, self.passphrase, replace=True)
            durable_write(self.directory / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
            if not self._load(now):  # pragma: no cover - what was just written is usable
                raise RuntimeError("the new OCSP signing certificate cannot be loaded back")
        log.info("ocsp.signer.renewed", ca=self.ca.name, serial=format(cert.serial_number, "x"),
                 not_after=cert.not_valid_after_utc.isoformat())
        return True
