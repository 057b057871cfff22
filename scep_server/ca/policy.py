"""Certificate templates and CSR policy: what a profile lets into an issued certificate.

A CSR is checked before anything is signed, cheapest rule first: the key (type, size, RSA exponent, EC curve),
the CSR's signature algorithm, the subject (allowed attributes, value patterns, never the CA's or the RA's name) and
the subject alternative names (allowed types, patterns, DNS suffixes, e-mail domains), then the proof of
possession (the CSR's signature) and last the known-weak-key tests (ROCA fingerprint, Fermat close primes).
"""
from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..scep.types import Digest, FailInfo, SCEPFailure
from .template import (  # noqa: F401 - the certificate template (scep_server.ca.template), re-exported
    _DNS_LABEL, DEFAULT_SUBJECT_ATTRIBUTES, CertificateTemplate, SanType, SubjectAttribute, _check_pattern, _compile,
    _normalise_domain, compile_pattern)


# the subject and subject alternative names a certificate gets, as a policy allowed them for one CSR and one CA
Vetted = tuple[x509.Name, list[x509.GeneralName]]


class PolicyViolation(Exception):
    """The CSR does not meet the profile's policy (answered with SCEP badRequest + the text)."""


_KU_NAMES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
# the key usages a key of each type cannot have (RFC 3279 §2.3.1: an RSA key does not agree keys; RFC 5480 §3: an EC
# key does not encipher): left out of its certificate when the template names them
_KU_NOT_FOR = {"RSA": frozenset({"key_agreement"}), "EC": frozenset({"key_encipherment", "data_encipherment"})}
_EKU = {"client_auth": ExtendedKeyUsageOID.CLIENT_AUTH, "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
        "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION, "code_signing": ExtendedKeyUsageOID.CODE_SIGNING}
_SAN_TYPES = {"dns": x509.DNSName, "email": x509.RFC822Name, "uri": x509.UniformResourceIdentifier,
              "ip": x509.IPAddress}
_SAN_LABEL = {"dns": "DNS", "email": "email", "uri": "URI", "ip": "IP"}

# attribute name -> (OID, longest value accepted: RFC 5280 appendix A upper bounds where it sets one)
_SUBJECT_ATTRIBUTES: dict[str, tuple[x509.ObjectIdentifier, int]] = {
    "CN": (NameOID.COMMON_NAME, 64), "O": (NameOID.ORGANIZATION_NAME, 64),
    "OU": (NameOID.ORGANIZATIONAL_UNIT_NAME, 64), "C": (NameOID.COUNTRY_NAME, 2),
    "serialNumber": (NameOID.SERIAL_NUMBER, 64), "UID": (NameOID.USER_ID, 256), "L": (NameOID.LOCALITY_NAME, 128),
    "ST": (NameOID.STATE_OR_PROVINCE_NAME, 128), "street": (NameOID.STREET_ADDRESS, 128),
    "postalCode": (NameOID.POSTAL_CODE, 40), "DC": (NameOID.DOMAIN_COMPONENT, 63),
    "emailAddress": (NameOID.EMAIL_ADDRESS, 255), "givenName": (NameOID.GIVEN_NAME, 64),
    "SN": (NameOID.SURNAME, 64), "title": (NameOID.TITLE, 64),
}
_ATTRIBUTE_NAME = {oid: name for name, (oid, _ub) in _SUBJECT_ATTRIBUTES.items()}
# attributes in one subject: a device's names take a handful; a CSR's 64 KiB would otherwise carry thousands into a
# certificate every relying party parses and into the inventory, the audit trail and the console
MAX_SUBJECT_ATTRIBUTES = 32


def _unprintable(ch: str) -> bool:
    """A control character (C0, DEL, C1) or a bidirectional formatting one: in a name a console or a log shows,
    it hides or reorders what follows (`device\u202egpj.exe`)."""
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or code in _BIDI_CONTROLS


_BIDI_CONTROLS = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])
# the string types a subject attribute may have (X.520's, IA5String for emailAddress and DC): an OCTET STRING, a
# BIT STRING or a time whose bytes merely decode as text is refused, not copied into a certificate
_DIRECTORY_STRINGS = frozenset({_ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.T61String,
                                _ASN1Type.UniversalString, _ASN1Type.BMPString, _ASN1Type.IA5String,
                                _ASN1Type.NumericString, _ASN1Type.VisibleString})
# what an attribute is issued as (RFC 5280 §4.1.2.4: a DirectoryString as PrintableString or UTF8String; X.520's
# countryName and serialNumber are PrintableString, emailAddress and DC IA5String): whatever string type a CSR
# chose, a certificate carries one a relying party decodes
_ISSUED_TYPE = {"C": _ASN1Type.PrintableString, "serialNumber": _ASN1Type.PrintableString,
                "DC": _ASN1Type.IA5String, "emailAddress": _ASN1Type.IA5String}
_PRINTABLE_STRING = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]+")
# SAN syntax (RFC 5280 §4.2.1.6): a dNSName in the preferred name syntax (letters, digits, hyphens; no trailing
# dot), an rfc822Name a Mailbox (RFC 5321: a dot-string local part, a domain), a URI absolute (RFC 3986)
_LDH_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# a host label as issued in a DNS SAN or a URI's host: LDH, plus `_` inside a label, which Windows computer names
# carry (DESKTOP_01.corp.example.com) and relying parties (OpenSSL, Go, Windows, NSS) match; a label starting with
# `_` is a service label (_ldap._tcp), never a host, and none ends with one
_HOST_LABEL = re.compile(r"(?![-_])[A-Za-z0-9_-]{1,63}(?<![-_])")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+")
_MAX_SAN_CHARS = {"dns": 253, "email": 254, "uri": 1024, "ip": 64}
_CSR_HASHES = {"sha224", "sha256", "sha384", "sha512", "sha3-224", "sha3-256", "sha3-384", "sha3-512"}
_EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}

# The outer SignedData digests GetCACaps advertises (RFC 8894 §3.5.2); anything else is badAlg.
MESSAGE_DIGESTS = (Digest.SHA1, Digest.SHA256, Digest.SHA512)
_CAPS_NAME = {Digest.SHA1: "SHA-1", Digest.SHA256: "SHA-256", Digest.SHA512: "SHA-512"}
MESSAGE_DIGEST_CAPS = tuple(_CAPS_NAME[d] for d in MESSAGE_DIGESTS)


def check_message_digest(msg) -> None:
    """Refuse a pkiMessage whose SignedData digest is not one GetCACaps offers (e.g. MD5) with badAlg."""
    if msg.digest not in MESSAGE_DIGESTS:
        raise SCEPFailure(FailInfo.BAD_ALG, f"the message digest {msg.digest.name} is not accepted; use one of "
                          f"{', '.join(MESSAGE_DIGEST_CAPS)} (GetCACaps)", msg)


def _is_dns_name(value: str) -> bool:
    """A host name in RFC 5280's preferred name syntax (RFC 1034 §3.5, RFC 1123 §2.1): no `_`, no trailing dot."""
    return all(_LDH_LABEL.fullmatch(label) for label in value.split("."))


def _is_host(value: str) -> bool:
    """A host a DNS SAN or a URI names: _is_dns_name's syntax, but a `_` inside a label (a Windows computer name)."""
    return all(_HOST_LABEL.fullmatch(label) for label in value.split("."))


def _uri_host(uri: str) -> str | None:
    """The host a URI's authority names (RFC 3986 §3.2.2: after any userinfo, before any port; an IP literal without
    its brackets), "" for an authority naming none, None for a URI without an authority."""
    rest = uri.partition(":")[2]
    if not rest.startswith("//"):
        return None
    host = re.split(r"[/?#]", rest[2:], maxsplit=1)[0].rpartition("@")[2]
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else ""
    return host.partition(":")[0]


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_host_name(value: str) -> bool:
    labels = value.rstrip(".").split(".")
    return bool(value) and all(_DNS_LABEL.fullmatch(label) for label in labels)


# full stops that IDNA (UTS #46) reads as label separators, beside "."
_LABEL_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _as_read(value: str) -> str:
    """A subject value the way a relying party that maps it to a host or a mailbox reads it: compatibility
    characters folded (NFKC: fullwidth letters and dots), every full stop IDNA knows a dot, and insignificant
    spaces dropped (RFC 4518: leading, trailing, and runs of them)."""
    return " ".join(unicodedata.normalize("NFKC", value).translate(_LABEL_DOTS).split())


@functools.lru_cache(maxsize=64)  # the CA's and RA's names, asked for every request
def _reserved_key(name: x509.Name) -> tuple:
    return _name_key(name)


def _name_key(name: x509.Name) -> tuple:
    """A distinguished name compared as RFC 5280 §7.1 does: case and insignificant spaces ignored."""
    def norm(value) -> object:
        return " ".join(value.split()).casefold() if isinstance(value, str) else value
    return tuple(frozenset((a.oid.dotted_string, norm(a.value)) for a in rdn) for rdn in name.rdns)


def subject_mailboxes(subject: x509.Name, sans: Iterable[x509.GeneralName]) -> list[x509.RFC822Name]:
    """The subject's emailAddress values that are not e-mail SANs already, as rfc822Name SANs. RFC 5280 §4.1.2.6:
    a certificate names an address in an rfc822Name SAN; an emailAddress in the subject is only the deprecated
    legacy copy of one, so the certificate gets the SAN beside it (Intune's "CN and e-mail" subject, say)."""
    have = {name.value for name in sans if isinstance(name, x509.RFC822Name)}
    out = []
    for attr in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if isinstance(attr.value, str) and attr.value not in have:
            have.add(attr.value)
            out.append(x509.RFC822Name(attr.value))
    return out


def _as_issued(subject: x509.Name) -> x509.Name:
    """The subject (its attributes checked) with each value in the string type it is issued as: _ISSUED_TYPE's, else
    a PrintableString kept as one and every other type (BMPString, UniversalString, TeletexString, IA5String, ...)
    as UTF8String. Names compare equal whatever their types (RFC 5280 §7.1, and cryptography's Name)."""
    def issued(attr: x509.NameAttribute) -> x509.NameAttribute:
        kind = _ISSUED_TYPE.get(_ATTRIBUTE_NAME[attr.oid])
        if kind is None:
            kind = _ASN1Type.PrintableString if attr._type is _ASN1Type.PrintableString else _ASN1Type.UTF8String
        return attr if attr._type is kind else x509.NameAttribute(attr.oid, attr.value, kind)
    try:
        return x509.Name([x509.RelativeDistinguishedName([issued(a) for a in rdn]) for rdn in subject.rdns])
    except ValueError as exc:  # an RDN that names one value twice
        raise PolicyViolation(f"the subject cannot be issued: {exc}") from None


def _describe_san(name: x509.GeneralName) -> str:
    for kind, cls in _SAN_TYPES.items():
        if isinstance(name, cls):
            return f"{_SAN_LABEL[kind]}:{name.value}"
    return type(name).__name__


@dataclass(frozen=True)
class IssuancePolicy:
    """Applies a CertificateTemplate to a CSR."""

    template: CertificateTemplate

    @property
    def validity_days(self) -> int:
        return self.template.validity_days

    def check_signature_algorithm(self, csr: x509.CertificateSigningRequest) -> hashes.HashAlgorithm | None:
        """The CSR's signature hash, when the profile accepts it."""
        try:
            algorithm = csr.signature_hash_algorithm
        except UnsupportedAlgorithm:
            raise PolicyViolation(
                f"the CSR's signature algorithm {csr.signature_algorithm_oid.dotted_string} is not supported") from None
        name = algorithm.name if algorithm is not None else None
        if isinstance(algorithm, hashes.MD5):
            raise PolicyViolation("the CSR is signed with MD5, which is never accepted; sign it with SHA-256")
        if isinstance(algorithm, hashes.SHA1):
            if not self.template.allow_sha1_csr:
                raise PolicyViolation("the CSR is signed with SHA-1, which this profile does not accept; "
                                      "sign it with SHA-256")
        elif name not in _CSR_HASHES:
            raise PolicyViolation(f"the CSR's signature algorithm ({name or 'no hash'}) is not accepted")
        return algorithm

    def check_key(self, csr: x509.CertificateSigningRequest) -> None:
        """Key type, size, exponent and curve (cheap: no arithmetic on the modulus)."""
        t = self.template
        pub = csr.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            numbers = pub.public_numbers()
            if pub.key_size < t.min_rsa_bits:
                raise PolicyViolation(f"RSA key of {pub.key_size} bits is below the minimum of {t.min_rsa_bits}")
            if pub.key_size > t.max_rsa_bits:
                raise PolicyViolation(f"RSA key of {pub.key_size} bits is above the maximum of {t.max_rsa_bits}")
            e = numbers.e
            if not (e == 3 and t.allow_rsa_exponent_3) and not (e % 2 == 1 and 65535 < e < 2**256):
                allowed = "3 or 65537" if t.allow_rsa_exponent_3 else "65537 (odd, above 65535)"
                shown = str(e) if e.bit_length() <= 64 else f"of {e.bit_length()} bits"
                raise PolicyViolation(f"RSA public exponent {shown} is not allowed: use {allowed}")
            if numbers.n % 2 == 0:
                raise PolicyViolation("the RSA modulus is even: the key is invalid")
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            if not t.allow_ec:
                raise PolicyViolation("key type EC is not allowed by this profile (RSA required)")
            if pub.curve.name not in _EC_CURVES:
                raise PolicyViolation(f"elliptic curve {pub.curve.name} is not allowed (P-256 or P-384)")
        else:
            kinds = "RSA, P-256 or P-384" if t.allow_ec else "RSA required"
            raise PolicyViolation(f"key type {type(pub).__name__.lstrip('_')} is not allowed ({kinds})")
        if not self._usages(pub):  # a keyUsage extension sets at least one bit (RFC 5280 §4.2.1.3)
            kind = "EC" if isinstance(pub, ec.EllipticCurvePublicKey) else "RSA"
            raise PolicyViolation(f"the profile's key usage ({', '.join(t.key_usage) or 'none'}) leaves nothing an "
                                  f"{kind} key may be used for")

    @staticmethod
    def check_weak_key(csr: x509.CertificateSigningRequest) -> None:
        """Known-weak RSA keys: the ROCA fingerprint (CVE-2017-15361) and primes close enough for Fermat."""
        pub = csr.public_key()
        if not isinstance(pub, rsa.RSAPublicKey):
            return
        from badkeys.rsakeys import fermat, roca  # imported when first needed: CLI commands never need it

        n = pub.public_numbers().n
        if roca(n):
            raise PolicyViolation("the RSA key has the ROCA fingerprint (CVE-2017-15361, Infineon key generation): "
                                  "its private key can be computed; generate a new key elsewhere")
        if fermat(n):
            raise PolicyViolation("the RSA key's primes are too close together (Fermat factorization): its private "
                                  "key can be computed; generate a new key")

    def _check_subject(self, subject: x509.Name) -> None:
        t = self.template
        allowed = set(t.subject_attributes)
        count = len(list(subject))
        if count > MAX_SUBJECT_ATTRIBUTES:
            raise PolicyViolation(f"the subject has {count} attributes, more than {MAX_SUBJECT_ATTRIBUTES}")
        for attr in subject:
            name = _ATTRIBUTE_NAME.get(attr.oid)
            if name is None or name not in allowed:
                label = name or attr.oid.dotted_string
                raise PolicyViolation(f"subject attribute {label} is not allowed by the profile (allowed: "
                                      f"{', '.join(t.subject_attributes) or 'none'})")
            value = attr.value
            if not isinstance(value, str) or attr._type not in _DIRECTORY_STRINGS:
                raise PolicyViolation(f"subject attribute {name} is not a string")
            limit = _SUBJECT_ATTRIBUTES[name][1]
            if not value or len(value) > limit or any(_unprintable(ch) for ch in value):
                raise PolicyViolation(f"subject attribute {name} must be 1 to {limit} printable characters")
            issued_as = _ISSUED_TYPE.get(name)
            if issued_as is _ASN1Type.PrintableString and not _PRINTABLE_STRING.fullmatch(value):
                raise PolicyViolation(f"subject attribute {name} must be a PrintableString (letters, digits, space "
                                      f"and '()+,-./:=?)")
            if issued_as is _ASN1Type.IA5String and not value.isascii():
                raise PolicyViolation(f"subject attribute {name} must be ASCII (IA5String)")
            if name == "C" and len(value) != 2:
                raise PolicyViolation("subject attribute C must be a two-letter country code")
            pattern = t.subject_patterns.get(name)
            if pattern is not None and not _compile(pattern).fullmatch(value):
                raise PolicyViolation(f"subject {name}={value!r} does not match the profile's pattern {pattern!r}")
            if name in ("CN", "emailAddress"):
                self._check_subject_name(name, value)
        components = [a.value for a in subject if a.oid == NameOID.DOMAIN_COMPONENT]
        if components and t.dns_suffixes:
            domain = ".".join(_as_read(c) for c in reversed(components))
            if not _is_host_name(domain):
                raise PolicyViolation(f"subject DC {domain!r} is not a host name (no wildcards), outside the "
                                      f"profile's DNS suffixes ({', '.join(t.dns_suffixes)})")
            self._within_dns_suffixes(f"subject DC {domain!r}", domain)

    def _check_subject_name(self, name: str, value: str) -> None:
        """A CN or emailAddress that names a host or a mailbox is held to the rules of a SAN of its kind: a relying
        party that maps a certificate by its subject (a VPN or RADIUS server by CN, a client by emailAddress)
        reads it as one. An emailAddress is an e-mail address; a CN with an `@` is read as one, a CN of dotted
        host-name labels as a host name; other CNs (`laptop-42`, `Jane Doe`) are names only.

        The value is judged as read (_as_read): a CN with one word containing a dot or an `@` is read as a host name
        or an address whatever its spacing, full stops or compatibility characters, and one the profile's domain
        rules cannot place (a wildcard, a label that is not a host-name label) is refused while they are set."""
        t = self.template
        read = _as_read(value)
        local, at, domain = read.rpartition("@")
        if name == "emailAddress" or at:
            if not local or not _is_host_name(domain):
                if name == "emailAddress":
                    raise PolicyViolation(f"subject emailAddress={value!r} is not an e-mail address")
                if t.email_domains and " " not in read:
                    raise PolicyViolation(f"subject {name}={value!r} reads as an e-mail address whose domain is "
                                          f"not a host name, outside the profile's e-mail domains "
                                          f"({', '.join(t.email_domains)})")
                return
            if t.email_domains and _normalise_domain(domain) not in t.email_domains:
                raise PolicyViolation(f"subject {name}={value!r} is outside the profile's e-mail domains "
                                      f"({', '.join(t.email_domains)})")
        elif t.dns_suffixes and "." in read.rstrip(".") and " " not in read:
            if not _is_host_name(read):
                raise PolicyViolation(f"subject {name}={value!r} reads as a host name but is not one (no wildcards), "
                                      f"outside the profile's DNS suffixes ({', '.join(t.dns_suffixes)})")
            self._within_dns_suffixes(f"subject {name}={value!r}", read)

    def _within_dns_suffixes(self, what: str, host: str) -> None:
        suffixes = self.template.dns_suffixes
        host = _normalise_domain(host)
        if not any(host == s or host.endswith("." + s) for s in suffixes):
            raise PolicyViolation(f"{what} is outside the profile's DNS suffixes ({', '.join(suffixes)})")

    def _check_san(self, kind: str, name: x509.GeneralName) -> None:
        t = self.template
        if kind == "ip" and not isinstance(name.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            # 8 or 32 octets read as an address and a mask (a name constraint's form), no address (RFC 5280 4.2.1.6)
            raise PolicyViolation(f"subject alternative name IP:{str(name.value)[:60]!r} is not one IP address")
        value = str(name.value)
        label = f"{_SAN_LABEL[kind]}:{value}"
        if len(value) > _MAX_SAN_CHARS[kind] or not value.isascii() or not value.isprintable() or " " in value:
            raise PolicyViolation(f"subject alternative name {label[:80]!r} is not a valid {_SAN_LABEL[kind]} name")
        if kind == "dns":
            if not _is_host(value):
                raise PolicyViolation(f"subject alternative name {label!r} is not a host name (no wildcards), "
                                      f"as RFC 5280 reads one: letters, digits and hyphens in dot-separated labels "
                                      f"(an `_` inside one), no trailing dot")
            if t.dns_suffixes:
                self._within_dns_suffixes(f"subject alternative name {label!r}", value)
        elif kind == "email":
            local, at, domain = value.rpartition("@")
            if not at or len(local) > 64 or not _DOT_STRING.fullmatch(local) or not _is_dns_name(domain):
                raise PolicyViolation(f"subject alternative name {label!r} is not an e-mail address")
            if t.email_domains and _normalise_domain(domain) not in t.email_domains:
                raise PolicyViolation(f"subject alternative name {label!r} is outside the profile's e-mail "
                                      f"domains ({', '.join(t.email_domains)})")
        elif kind == "uri" and not _ABSOLUTE_URI.fullmatch(value):
            raise PolicyViolation(f"subject alternative name {label[:80]!r} is not an absolute URI (RFC 3986: a "
                                  f"scheme, `:` and the rest)")
        pattern = t.san_patterns.get(kind)
        if pattern is not None and not _compile(pattern).fullmatch(value):
            raise PolicyViolation(f"subject alternative name {label!r} does not match the profile's pattern "
                                  f"{pattern!r}")
        host = _uri_host(value) if kind == "uri" else None
        if host is not None and not _is_ip(host):
            # RFC 5280 §4.2.1.6: a URI with an authority names a host name or an IP address; a host a relying party
            # (or a name constraint, §4.2.1.10) reads as a domain is held to the DNS suffixes as a DNS SAN is. An
            # undotted one (Intune's IntuneDeviceId://<id>) is a name only, as a CN is.
            if not _is_host(host):
                raise PolicyViolation(f"subject alternative name {label[:80]!r} names no host name or IP address")
            if t.dns_suffixes and "." in host:
                self._within_dns_suffixes(f"subject alternative name {label!r}", host)

    def subject_and_sans(self, csr: x509.CertificateSigningRequest, *,
                         reserved_names: Iterable[x509.Name] = ()) -> Vetted:
        """The subject and SANs the certificate gets, after the template's rules; PolicyViolation otherwise.

        ``reserved_names`` (of every CA loaded, and of their RAs) are never issued as a subject.
        """
        try:
            subject = csr.subject
            ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            ext = None
        except ValueError as exc:
            raise PolicyViolation(f"the CSR's subject or extensions cannot be parsed: {exc}") from None
        if self.template.subject == "cn_only":
            subject = x509.Name([a for a in subject if a.oid == NameOID.COMMON_NAME])
        self._check_subject(subject)
        subject = _as_issued(subject)
        if list(subject):
            key = _name_key(subject)
            if any(key == _reserved_key(reserved) for reserved in reserved_names):
                raise PolicyViolation(f"the subject {subject.rfc4514_string()!r} is the name of a CA or an RA of this server")
        sans: list[x509.GeneralName] = []
        if ext is not None:
            if len(ext.value) > self.template.max_sans:
                raise PolicyViolation(f"{len(ext.value)} subject alternative names exceed the profile's limit of "
                                      f"{self.template.max_sans}")
            kinds = {cls: kind for kind, cls in _SAN_TYPES.items() if kind in self.template.san_types}
            for name in ext.value:
                kind = next((k for cls, k in kinds.items() if isinstance(name, cls)), None)
                if kind is None:
                    raise PolicyViolation(f"subject alternative name {_describe_san(name)[:80]!r} is not allowed by "
                                          f"the profile (allowed SAN types: "
                                          f"{', '.join(self.template.san_types) or 'none'})")
                self._check_san(kind, name)
                sans.append(name)
        if not list(subject) and not sans:
            raise PolicyViolation("the CSR has neither a subject nor subject alternative names")
        # the only SANs a certificate gets that its CSR did not ask for: one per subject emailAddress (RFC 5280
        # §4.1.2.6), held to the e-mail SAN rules. The subject's address is allowed by subject_attributes, so
        # san_types and max_sans (what a CSR may ask for as SANs) do not hold it back: profiles that issued such
        # certificates keep issuing and renewing them. Whatever judges "the SANs" (a one-time challenge's
        # expectations, a webhook, an approver) sees them in what this returns
        derived = subject_mailboxes(subject, sans)
        for name in derived:
            try:  # held to the e-mail SAN syntax and the profile's e-mail rules
                self._check_san("email", name)
            except PolicyViolation as exc:
                raise PolicyViolation(f"subject emailAddress={name.value!r} is issued as an e-mail subject "
                                      f"alternative name too (RFC 5280 §4.1.2.6), and {exc}") from None
            sans.append(name)
        return subject, sans

    def check(self, csr: x509.CertificateSigningRequest, *, reserved_names: Iterable[x509.Name] = (),
              proof_checked: bool = False) -> Vetted:
        """All CSR checks, cheapest first: key, signature algorithm, subject and SANs, proof of possession, weak key.
        Returns the subject and SANs the certificate gets (subject_and_sans).

        ``proof_checked``: the CSR's signature was verified already (the SCEP decryption stage does it, see
        scep.message.open_request). CPU-bound (the weak-key arithmetic, a signature verification unless
        ``proof_checked``): call it from a worker thread.
        """
        from ..scep.message import csr_signature_valid  # the SCEP codec, loaded when a CSR is first checked

        try:
            self.check_key(csr)
            self.check_signature_algorithm(csr)
            vetted = self.subject_and_sans(csr, reserved_names=reserved_names)
            valid = proof_checked or csr_signature_valid(csr) is True
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise PolicyViolation(f"the CSR cannot be checked: {exc}") from None
        if not valid:
            raise PolicyViolation("the CSR's signature does not verify (no proof of possession)")
        self.check_weak_key(csr)
        return vetted

    def _usages(self, public_key) -> set[str]:
        """The template's key usages a key of this type may have."""
        kind = "EC" if isinstance(public_key, ec.EllipticCurvePublicKey) else "RSA"
        return set(self.template.key_usage) - _KU_NOT_FOR[kind]

    def key_usage(self, public_key) -> x509.KeyUsage:
        """The keyUsage of a certificate for ``public_key``: the template's, less what its key type cannot do."""
        usages = self._usages(public_key)
        flags = {n: n in usages for n in _KU_NAMES}
        return x509.KeyUsage(**flags, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)

    def extended_key_usage(self) -> x509.ExtendedKeyUsage | None:
        if not self.template.extended_key_usage:
            return None
        return x509.ExtendedKeyUsage([_EKU[n] for n in self.template.extended_key_usage])
