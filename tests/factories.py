"""Builders for test material: a CA on disk, settings for a server in a temporary data directory."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from scep_server.ca.authority import CertificateAuthority, create_ca
from scep_server.config import Settings, load_settings

# A fixed instant in the recent past, so that OpenSSL (using the real clock) accepts what tests issue at NOW
NOW = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
PASSPHRASE = b"test passphrase"


def make_ca(directory: Path, *, name: str = "default", base_url: str = "http://127.0.0.1:8080",
            now: datetime = NOW, key_type: str = "rsa") -> CertificateAuthority:
    return create_ca(directory, name=name, subject="CN=Test Device CA,O=Device Trust Tests",
                     ra_subject="CN=Test SCEP RA,O=Device Trust Tests", key_size=2048, validity_days=3650,
                     ra_validity_days=730, passphrase=PASSPHRASE, base_url=base_url, now=now, key_type=key_type)


def settings_for(data_dir: Path, db_url: str | None = None, *, listen: str = "127.0.0.1:8080", **extra) -> Settings:
    """Settings for a server in `data_dir` (a 2048-bit CA keeps tests quick)."""
    overrides = {"data_dir": str(data_dir), "server": {"listen": listen}, "ca": {"key_size": 2048},
                 "log": {"level": "warning"},
                 # a cheap scrypt cost keeps logins quick (production: challenge.scrypt_log2_n = 17)
                 "challenge": {"scrypt_log2_n": 10}}
    if db_url:
        overrides["database"] = {"url": db_url}
    for key, value in extra.items():  # a section given by the test is merged over these defaults
        overrides[key] = {**overrides[key], **value} if isinstance(value, dict) and isinstance(
            overrides.get(key), dict) else value
    return load_settings(None, **overrides)


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def csr(key, cn: str = "device-1", *, challenge: str | None = None, sans: list[x509.GeneralName] | None = None,
        digest=hashes.SHA256()) -> x509.CertificateSigningRequest:
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if challenge is not None:
        b = b.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, digest)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


async def register_ca(engine, ca: CertificateAuthority, now: datetime = NOW) -> None:
    from scep_server.ca.inventory import register_ca as register
    from trustkit.db import writer

    async with writer(engine).begin() as conn:
        await register(conn, ca, now)


async def record_issued(engine, ca: CertificateAuthority, cert: x509.Certificate, *, issued_at: datetime = NOW,
                        profile: str = "default", txid: str | None = None) -> str:
    """Put a certificate into the inventory as the SCEP service does; returns its serial (hex)."""
    from scep_server.ca.inventory import certificate_row, public_key_sha256
    from trustkit.db import writer
    from scep_server.store.tables import certificates

    der = cert.public_bytes(serialization.Encoding.DER)
    row = certificate_row(cert, der, ca.name, profile, txid or f"tx-{cert.serial_number:x}",
                          public_key_sha256(cert.public_key()), issued_at,
                          crl_partition=ca.partition_of(cert.serial_number))
    async with writer(engine).begin() as conn:
        await conn.execute(certificates.insert().values(row))
    return row["serial"]
