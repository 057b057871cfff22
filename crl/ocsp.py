"""OCSP wire codec (RFC 6960) in the RFC 5019 profile: bounded request parsing and signed responses.

Pure code: no I/O, no knowledge of where certificate status is kept. ``parse_request`` turns request bytes into
`CertRequest` values (or raises `MalformedRequest`); `IssuerIdentity` says whether a CertID names a CA;
`build_response` signs a BasicOCSPResponse for a list of `Answer` values; `error_response` is the unsigned
answer of a request that cannot be answered (malformedRequest, unauthorized, tryLater, internalError).

Bounds (the request is parsed before anything about it is trusted): the DER size (`MAX_REQUEST_BYTES` unless
the caller names another), the number of CertIDs (`MAX_CERT_IDS`), the nonce length (RFC 8954: 1 to 32 octets),
the serial number's length (`MAX_SERIAL_OCTETS`), the hash algorithm's parameters (absent or NULL).
Only SHA-1 and SHA-256 CertID hashes are matched; an unparsable request of any kind raises `MalformedRequest`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence

from asn1crypto import core, ocsp
from asn1crypto import x509 as asn1_x509

from trustkit import der

MAX_REQUEST_BYTES = 4096
MAX_CERT_IDS = 8
MAX_NONCE = 32  # RFC 8954 §2.1
# RFC 5280 §4.1.2.2: a serial number is at most 20 octets (21 as some CAs encode a 160-bit one); no certificate has
# a longer one, and a CertID holding one is echoed and kept with its pre-signed response: a 4,000-octet serial made
# each response cached ten times the size of a real one
MAX_SERIAL_OCTETS = 21
HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
DIGEST_LENGTHS = {"sha1": 20, "sha256": 32}
# RFC 6960 §2.2: a "revoked" answer for a serial never issued carries this revocation time and
# certificateHold, and the response carries the extended revoke extension (§4.4.8)
NEVER_ISSUED_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
CERTIFICATE_HOLD = 6

# id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1) and id-kp-OCSPSigning, for the delegated signer's certificate
OCSP_NOCHECK_OID = "1.3.6.1.5.5.7.48.1.5"
OCSP_SIGNING_OID = "1.3.6.1.5.5.7.3.9"


class MalformedRequest(ValueError):
    """The request is not a well-formed OCSPRequest within the bounds (answered with malformedRequest)."""


@dataclass(frozen=True)
class CertRequest:
    """One CertID of a request: its hash algorithm, the issuer hashes, the serial, and its DER (echoed back)."""

    hash_algorithm: str  # "sha1", "sha256", or the dotted OID of a hash this codec does not match
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    der: bytes


@dataclass(frozen=True)
class OcspRequest:
    cert_ids: tuple[CertRequest, ...]
    nonce: bytes | None  # the Nonce extension's extnValue contents, echoed as they came (None: no nonce)

    @property
    def cacheable(self) -> bool:
        """One CertID and no nonce: the answer may be a pre-signed response (RFC 5019 §2.1)."""
        return self.nonce is None and len(self.cert_ids) == 1


def parse_request(der: bytes, *, max_bytes: int = MAX_REQUEST_BYTES, max_cert_ids: int = MAX_CERT_IDS
                  ) -> OcspRequest:
    """Parse an OCSPRequest (RFC 6960 §4.1.1). A request signature, when present, is not checked (RFC 5019
    §2.1.2: a responder may ignore it); unknown request extensions are ignored."""
    if not der:
        raise MalformedRequest("the request is empty")
    if len(der) > max_bytes:
        raise MalformedRequest(f"the request is {len(der)} bytes, more than {max_bytes}")
    try:
        return _parse(der, max_cert_ids)
    except MalformedRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - asn1crypto raises several types for malformed DER
        raise MalformedRequest(f"not an OCSPRequest: {type(exc).__name__}") from None


def _parse(der: bytes, max_cert_ids: int) -> OcspRequest:
    req = ocsp.OCSPRequest.load(der, strict=True)
    tbs = req["tbs_request"]
    if tbs["version"].native != "v1":
        raise MalformedRequest("only OCSP version 1 is answered")
    requests = tbs["request_list"]
    count = len(requests)
    if count < 1:
        raise MalformedRequest("the request names no certificate")
    if count > max_cert_ids:
        raise MalformedRequest(f"the request names {count} certificates, more than {max_cert_ids}")
    cert_ids = []
    for item in requests:
        cid = item["req_cert"]
        alg = cid["hash_algorithm"]["algorithm"]
        if cid["hash_algorithm"].contents not in (alg.dump(), alg.dump() + b"\x05\x00"):
            # echoed with the CertID and kept with its response, as a serial number is (RFC 5754 §2: absent or NULL)
            raise MalformedRequest("a CertID's hash algorithm has parameters (only an absent or NULL one is read)")
        name = alg.native if alg.dotted in _HASH_OIDS else alg.dotted
        name_hash, key_hash = cid["issuer_name_hash"].native, cid["issuer_key_hash"].native
        if not isinstance(name_hash, bytes) or not isinstance(key_hash, bytes):
            raise MalformedRequest("a CertID lacks its issuer hashes")
        if len(cid["serial_number"].contents or b"") > MAX_SERIAL_OCTETS:
            raise MalformedRequest(f"a CertID's serial number is longer than {MAX_SERIAL_OCTETS} octets")
        serial = cid["serial_number"].native
        if not isinstance(serial, int):
            raise MalformedRequest("a CertID lacks its serial number")
        cert_ids.append(CertRequest(name, name_hash, key_hash, serial, cid.dump()))
    nonce = None
    for ext in tbs["request_extensions"] or []:
        if ext["extn_id"].dotted != NONCE_OID:
            continue
        if nonce is not None:
            raise MalformedRequest("the request carries two nonces")
        raw = ext["extn_value"].contents
        inner = core.OctetString.load(raw, strict=True).native  # Nonce ::= OCTET STRING (RFC 8954)
        if not 1 <= len(inner) <= MAX_NONCE:
            raise MalformedRequest(f"the nonce is {len(inner)} octets; 1 to {MAX_NONCE} are accepted")
        nonce = raw
    return OcspRequest(tuple(cert_ids), nonce)


NONCE_OID = "1.3.6.1.5.5.7.48.1.2"
_HASH_OIDS = {"1.3.14.3.2.26": "sha1", "2.16.840.1.101.3.4.2.1": "sha256"}


@dataclass(frozen=True)
class IssuerIdentity:
    """The CertID hashes of one CA (RFC 6960 §4.1.1: SHA over the issuer's DN and over its key's BIT STRING)."""

    name_hashes: dict[str, bytes]
    key_hashes: dict[str, bytes]

    @classmethod
    def from_certificate(cls, cert_der: bytes) -> "IssuerIdentity":
        cert = asn1_x509.Certificate.load(cert_der)
        name_der = cert.subject.dump()
        key_bits = cert.public_key["public_key"].contents[1:]  # the BIT STRING's value, without the unused-bits octet
        return cls({n: h(name_der).digest() for n, h in HASHES.items()},
                   {n: h(key_bits).digest() for n, h in HASHES.items()})

    def names(self, cid: CertRequest) -> bool:
        """Whether ``cid`` names this CA (its hash algorithm is one the codec matches)."""
        name_hash = self.name_hashes.get(cid.hash_algorithm)
        return (name_hash is not None and name_hash == cid.issuer_name_hash
                and self.key_hashes[cid.hash_algorithm] == cid.issuer_key_hash)


@dataclass(frozen=True)
class Answer:
    """The status of one CertID: "good", "revoked" (with time and reason; 6 is certificateHold) or "unknown"."""

    cert_id: CertRequest
    status: str
    revoked_at: datetime | None = None
    reason: int | None = None

    def __post_init__(self) -> None:
        if self.status not in ("good", "revoked", "unknown"):
            raise ValueError(f"unknown OCSP status {self.status!r}")
        if self.status == "revoked" and self.revoked_at is None:
            raise ValueError("a revoked answer needs its revocation time")
        if self.reason is not None and not 0 <= self.reason <= 10:
            raise ValueError(f"CRLReason {self.reason} is out of range")


@dataclass(frozen=True)
class ResponseSigner:
    """Who signs: the DER AlgorithmIdentifier and a raw signing function, the signer's certificate (its key hash
    is the ResponderID, RFC 6960 §4.2.2.3), and the certificates sent with the response (the delegated
    signer's own certificate; none when the CA signs)."""

    algorithm: bytes
    sign: Callable[[bytes], bytes]
    cert_der: bytes
    include_certs: tuple[bytes, ...] = ()
    # the signing function waits on a device (a key in a PKCS#11 token): call build_response off the event loop
    blocking: bool = False

    def __post_init__(self) -> None:
        cert = asn1_x509.Certificate.load(self.cert_der)
        object.__setattr__(self, "key_hash", hashlib.sha1(cert.public_key["public_key"].contents[1:]).digest())


# DER of the fixed parts (RFC 6960 §4.2.1): id-pkix-ocsp-basic, the status "successful", good and unknown
_BASIC_OID = der.oid("1.3.6.1.5.5.7.48.1.1")
_SUCCESSFUL = b"\x0a\x01\x00"
_GOOD = b"\x80\x00"  # [0] IMPLICIT NULL
_UNKNOWN = b"\x82\x00"  # [2] IMPLICIT NULL
_NONCE_OID = der.oid(NONCE_OID)
_EXTENDED_REVOKE = der.seq(der.oid("1.3.6.1.5.5.7.48.1.9"), der.octet_string(der.NULL_DER))


def build_response(answers: Sequence[Answer], signer: ResponseSigner, *, produced_at: datetime,
                   this_update: datetime, next_update: datetime, nonce: bytes | None = None) -> bytes:
    """A successful OCSPResponse (RFC 6960 §4.2.1) with one SingleResponse per answer, in order.

    ``nonce``: the request's Nonce extnValue contents, echoed in responseExtensions. An answer for a serial
    never issued, given as revoked at `NEVER_ISSUED_TIME`, adds the extended revoke extension (§4.4.8).
    Written with the DER writer of `trustkit.der` (the parsed request's CertIDs are echoed as received)."""
    this_der = der.encode_generalized_time(this_update)
    next_der = der.tlv(der.ctx(0), der.encode_generalized_time(next_update))
    singles = []
    extended_revoke = False
    for a in answers:
        if a.status == "good":
            status = _GOOD
        elif a.status == "unknown":
            status = _UNKNOWN
        else:
            assert a.revoked_at is not None
            info = der.encode_generalized_time(a.revoked_at)
            if a.reason is not None:
                info += der.tlv(der.ctx(0), der.tlv(0x0A, bytes((a.reason,))))  # [0] EXPLICIT CRLReason
            if a.revoked_at == NEVER_ISSUED_TIME:
                extended_revoke = True
            status = der.tlv(der.ctx(1), info)  # [1] IMPLICIT RevokedInfo
        singles.append(der.seq(a.cert_id.der, status, this_der, next_der))
    exts = []
    if nonce is not None:
        exts.append(der.seq(_NONCE_OID, der.octet_string(nonce)))
    if extended_revoke:
        exts.append(_EXTENDED_REVOKE)
    tbs = der.seq(der.tlv(der.ctx(2), der.octet_string(signer.key_hash)),  # type: ignore[attr-defined]
                  der.encode_generalized_time(produced_at), der.seq(*singles),
                  der.tlv(der.ctx(1), der.seq(*exts)) if exts else b"")
    parts = [tbs, signer.algorithm, der.tlv(0x03, b"\x00" + signer.sign(tbs))]
    if signer.include_certs:
        parts.append(der.tlv(der.ctx(0), der.seq(*signer.include_certs)))
    basic = der.seq(*parts)
    return der.seq(_SUCCESSFUL, der.tlv(der.ctx(0), der.seq(_BASIC_OID, der.octet_string(basic))))


_ERRORS = {name: ocsp.OCSPResponse({"response_status": name}).dump()
           for name in ("malformed_request", "internal_error", "try_later", "unauthorized")}


def error_response(status: str) -> bytes:
    """An unsigned OCSPResponse with only a status (RFC 6960 §4.2.1): "malformed_request", "internal_error",
    "try_later" or "unauthorized"."""
    return _ERRORS[status]
