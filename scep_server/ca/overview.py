"""Our issuing CAs as administrators see them (`GET /api/v1/cas`, `scep-server ca list`): each CA's
certificate and RA certificate with their subjects and validity, and the state of its CRL."""
from __future__ import annotations

import hashlib
from typing import Any, Awaitable, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .authority import CertificateAuthority, aia_url

CA_KEY = (str,)
"""The kinds of a CA list's cursor: by name."""


class CrlStatus(Protocol):
    """What the CRL capability tells of one CA's CRL (``scep_server.crlwiring.service.CrlService.status``)."""

    def status(self, ca: str) -> Awaitable[dict[str, Any]]: ...


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial": format(cert.serial_number, "x"),
            "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
            "fingerprint_sha256": hashlib.sha256(der).hexdigest(),
            "pem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii")}


def describe_ca(ca: CertificateAuthority) -> dict[str, Any]:
    """A CA, its RA certificate and the next CA certificates it announces (GetNextCACert)."""
    return {"name": ca.name, "certificate": describe_certificate(ca.cert), "certificate_url": aia_url(ca.base_url, ca.name),
            "ra_certificate": describe_certificate(ca.ra_cert), "ra_mode": ca.ra_mode,
            "ra_encryption_certificate": describe_certificate(ca.ra_enc_cert) if ca.ra_enc_cert else None,
            "next_ca_certificates": [describe_certificate(c) for c in ca.next_ca_certs]}


def expiry(cas: dict[str, CertificateAuthority]) -> dict[str, dict[str, str]]:
    """Each CA's notAfter (ISO 8601) of its certificate (``ca``), its current RA certificate (``ra``) and, once a
    rollover is prepared, the next CA's certificate (``next_ca``): /readyz, metrics, `ca list`."""
    out = {}
    for name, ca in sorted(cas.items()):
        out[name] = {"ca": ca.cert.not_valid_after_utc.isoformat(), "ra": ca.ra_cert.not_valid_after_utc.isoformat(),
                     **({"next_ca": ca.next_ca_certs[0].not_valid_after_utc.isoformat()} if ca.next_ca_certs else {})}
    return out


async def overview(cas: dict[str, CertificateAuthority], crl: CrlStatus | None,
                   names: list[str] | None = None) -> list[dict[str, Any]]:
    """The CAs named (default: all, by name), each with its CRL's state (``crl`` None: no CRL capability)."""
    out = []
    for name in sorted(cas) if names is None else names:
        out.append({**describe_ca(cas[name]), "crl": await crl.status(name) if crl is not None else None})
    return out
