"""A profile's certificate template: what a certificate issued under the profile may and must contain.

Apart from the issuance policy that applies it (:mod:`scep_server.ca.policy`, which re-exports these names), so
that reading a profile's settings loads neither cryptography's X.509 names nor the SCEP codec.
"""
from __future__ import annotations

import functools
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SanType = Literal["dns", "email", "uri", "ip"]
SubjectAttribute = Literal["CN", "O", "OU", "C", "serialNumber", "UID", "L", "ST", "street", "postalCode", "DC",
                           "emailAddress", "givenName", "SN", "title"]
DEFAULT_SUBJECT_ATTRIBUTES = ["CN", "O", "OU", "C", "serialNumber", "UID"]
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@functools.lru_cache(maxsize=512)
def _compile(pattern: str):
    """A linear-time (RE2) pattern: a profile's regex meets attacker-chosen values."""
    import re2  # here: a template without patterns (what a profile list reads) needs no RE2

    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def compile_pattern(pattern: str):
    """The RE2 (linear-time) compilation of a profile's pattern (cached): for values an attacker chooses."""
    return _compile(pattern)


def _check_pattern(pattern: str) -> str:
    import re2

    try:
        _compile(pattern)
    except re2.error as exc:
        raise ValueError(f"invalid pattern {pattern!r}: {exc}") from None
    return pattern


def _normalise_domain(value: str) -> str:
    return value.strip().strip(".").lower()


class CertificateTemplate(BaseModel):
    """The certificate part of a profile (stored as JSON with the profile).

    A stored template lacking a key reads the default below, and each default is the restrictive choice.
    """

    model_config = ConfigDict(extra="forbid")

    validity_days: int = Field(365, ge=1, le=3650)
    key_usage: list[Literal["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                            "key_agreement"]] = ["digital_signature"]
    extended_key_usage: list[Literal["client_auth", "server_auth", "email_protection", "code_signing"]] = [
        "client_auth"]
    min_rsa_bits: int = Field(2048, ge=2048, le=16384)
    max_rsa_bits: int = Field(8192, ge=2048, le=16384)
    # public exponent 3 (otherwise an odd exponent above 65535 is required: 65537 in practice)
    allow_rsa_exponent_3: bool = False
    allow_ec: bool = False  # P-256 and P-384
    # CSRs signed with SHA-1 (legacy clients); MD5 is never accepted
    allow_sha1_csr: bool = False
    # csr: copy the CSR subject; cn_only: keep only the CN of the CSR subject
    subject: Literal["csr", "cn_only"] = "csr"
    # subject attributes a CSR may carry; any other refuses the CSR
    subject_attributes: list[SubjectAttribute] = Field(default_factory=lambda: list(DEFAULT_SUBJECT_ATTRIBUTES))
    # per attribute, a regular expression (RE2 syntax) every value must match in full
    subject_patterns: dict[SubjectAttribute, str] = {}
    # which SAN types are copied from the CSR (Intune's SID SAN is a URI); others are refused
    san_types: list[SanType] = []
    # per SAN type, a regular expression (RE2 syntax) every name of that type must match in full
    san_patterns: dict[SanType, str] = {}
    # DNS SANs must be one of these domains or below one (empty: any)
    dns_suffixes: list[str] = []
    # e-mail SANs must be at one of these domains (empty: any)
    email_domains: list[str] = []
    max_sans: int = Field(20, ge=0, le=100)

    @field_validator("subject_patterns", "san_patterns")
    @classmethod
    def _patterns_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value.values():
            _check_pattern(pattern)
        return value

    @field_validator("dns_suffixes", "email_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        out = [_normalise_domain(v) for v in value]
        for domain in out:
            if not domain or not all(_DNS_LABEL.fullmatch(label) for label in domain.split(".")):
                raise ValueError(f"{domain!r} is not a domain name")
        return out

    @model_validator(mode="after")
    def _consistent(self) -> "CertificateTemplate":
        if self.min_rsa_bits > self.max_rsa_bits:
            raise ValueError("min_rsa_bits is above max_rsa_bits")
        for name in self.subject_patterns:
            if name not in self.subject_attributes:
                raise ValueError(f"subject_patterns names {name}, which subject_attributes does not allow")
        for kind in self.san_patterns:
            if kind not in self.san_types:
                raise ValueError(f"san_patterns names {kind}, which san_types does not allow")
        return self
