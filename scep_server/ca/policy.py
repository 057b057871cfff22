"""Certificate templates and CSR policy: what a profile lets into an issued certificate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import BaseModel, Field


class PolicyViolation(Exception):
    """The CSR does not meet the profile's policy (answered with SCEP badRequest + the text)."""


_KU_NAMES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
_EKU = {"client_auth": ExtendedKeyUsageOID.CLIENT_AUTH, "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
        "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION, "code_signing": ExtendedKeyUsageOID.CODE_SIGNING}
_SAN_TYPES = {"dns": x509.DNSName, "email": x509.RFC822Name, "uri": x509.UniformResourceIdentifier,
              "ip": x509.IPAddress}


class CertificateTemplate(BaseModel):
    """The certificate part of a profile (stored as JSON with the profile)."""

    validity_days: int = Field(365, ge=1, le=3650)
    key_usage: list[Literal["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                            "key_agreement"]] = ["digital_signature"]
    extended_key_usage: list[Literal["client_auth", "server_auth", "email_protection", "code_signing"]] = [
        "client_auth"]
    min_rsa_bits: int = Field(2048, ge=2048, le=16384)
    allow_ec: bool = False
    # csr: copy the CSR subject; cn_only: keep only the CN of the CSR subject
    subject: Literal["csr", "cn_only"] = "csr"
    # which SAN types are copied from the CSR (Intune's SID SAN is a URI); others are refused
    san_types: list[Literal["dns", "email", "uri", "ip"]] = ["dns", "email", "uri", "ip"]
    max_sans: int = Field(20, ge=0, le=100)


@dataclass(frozen=True)
class IssuancePolicy:
    """Applies a CertificateTemplate to a CSR."""

    template: CertificateTemplate

    @property
    def validity_days(self) -> int:
        return self.template.validity_days

    def check_key(self, csr: x509.CertificateSigningRequest) -> None:
        pub = csr.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            if pub.key_size < self.template.min_rsa_bits:
                raise PolicyViolation(f"RSA key of {pub.key_size} bits is below the minimum of "
                                      f"{self.template.min_rsa_bits}")
        elif isinstance(pub, ec.EllipticCurvePublicKey) and self.template.allow_ec:
            if pub.curve.name not in ("secp256r1", "secp384r1"):
                raise PolicyViolation(f"elliptic curve {pub.curve.name} is not allowed")
        else:
            raise PolicyViolation(f"key type {type(pub).__name__.lstrip('_')} is not allowed (RSA required)")

    def subject_and_sans(self, csr: x509.CertificateSigningRequest) -> tuple[x509.Name, list[x509.GeneralName]]:
        subject = csr.subject
        if self.template.subject == "cn_only":
            subject = x509.Name([a for a in subject if a.oid == x509.NameOID.COMMON_NAME])
        sans: list[x509.GeneralName] = []
        try:
            ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            ext = None
        except ValueError as exc:
            raise PolicyViolation(f"the CSR's extensions cannot be parsed: {exc}") from None
        if ext is not None:
            allowed = tuple(_SAN_TYPES[t] for t in self.template.san_types)
            for name in ext.value:
                if not isinstance(name, allowed):
                    raise PolicyViolation(f"subject alternative name {name!r} is not allowed by the profile")
                sans.append(name)
        if len(sans) > self.template.max_sans:
            raise PolicyViolation(f"{len(sans)} subject alternative names exceed the profile's limit of "
                                  f"{self.template.max_sans}")
        if not list(subject) and not sans:
            raise PolicyViolation("the CSR has neither a subject nor subject alternative names")
        return subject, sans

    def check(self, csr: x509.CertificateSigningRequest) -> None:
        """All CSR checks: proof of possession, key, subject and SANs."""
        if not csr.is_signature_valid:
            raise PolicyViolation("the CSR's signature does not verify (no proof of possession)")
        self.check_key(csr)
        self.subject_and_sans(csr)

    def key_usage(self) -> x509.KeyUsage:
        flags = {n: n in self.template.key_usage for n in _KU_NAMES}
        return x509.KeyUsage(**flags, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)

    def extended_key_usage(self) -> x509.ExtendedKeyUsage | None:
        if not self.template.extended_key_usage:
            return None
        return x509.ExtendedKeyUsage([_EKU[n] for n in self.template.extended_key_usage])
