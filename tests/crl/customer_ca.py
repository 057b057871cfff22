"""Helpers of the customer-CA checker tests: a customer CA, leaves with chosen CDPs, CRLs made with cryptography."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

UTC = timezone.utc
T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
_K = {}


def key(slot=0):
    if slot not in _K:
        _K[slot] = ec.generate_private_key(ec.SECP256R1())
    return _K[slot]


class Ca:
    def __init__(self, cn="Customer CA", slot=0, cdp=None, ski=True, not_after=None, not_before=None):
        self.key = key(slot)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self.name = name
        b = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(1000 + slot)
                     .not_valid_before(not_before or T0 - timedelta(days=30))
                     .not_valid_after(not_after or T0 + timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True))
        if ski:
            b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        if cdp:
            b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(cdp)], relative_name=None, reasons=None,
                crl_issuer=None)]), critical=False)
        self.cert = b.sign(self.key, hashes.SHA256())

    def leaf(self, serial, cdps=("http://cdp.example/a.crl",), is_ca=False, aki=True):
        k = self.leaf_key = key(99)
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
             .issuer_name(self.name).public_key(k.public_key()).serial_number(serial)
             .not_valid_before(T0 - timedelta(days=1)).not_valid_after(T0 + timedelta(days=365))
             .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if aki:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                critical=False)
        if cdps:
            b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(u) for u in cdps], relative_name=None, reasons=None,
                crl_issuer=None)]), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def crl(self, *, number=1, this_update=T0 - timedelta(hours=1), next_update=T0 + timedelta(hours=1),
            revoked=(), idp=None, extra=(), signer=None):
        """revoked: iterable of (serial, reason flag or None)."""
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.name)
             .last_update(this_update).next_update(next_update)
             .add_extension(x509.CRLNumber(number), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        if idp is not None:
            b = b.add_extension(idp, critical=True)
        for ext, crit in extra:
            b = b.add_extension(ext, critical=crit)
        for serial, reason in revoked:
            rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update)
            if reason is not None:
                rb = rb.add_extension(x509.CRLReason(reason), critical=False)
            b = b.add_revoked_certificate(rb.build())
        from cryptography.hazmat.primitives.serialization import Encoding
        return b.sign(signer or self.key, hashes.SHA256()).public_bytes(Encoding.DER)


def idp(uris=(), user=False, ca=False, reasons=None, indirect=False):
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(u) for u in uris] or None, relative_name=None,
        only_contains_user_certs=user, only_contains_ca_certs=ca, only_some_reasons=reasons,
        indirect_crl=indirect, only_contains_attribute_certs=False)
