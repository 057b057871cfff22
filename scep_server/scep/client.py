"""SCEP client-side codec (RFC 8894 §3): build requests and read CertReps, for tests and benchmarks.

Pure like the server codec: keys, nonces, CEKs, IVs and times are passed in. It can emit single DES and
MD5 so that legacy requests can be produced; the server side never does.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import AttributeOID, NameOID

from trustkit import der

from . import algorithms, cms, oids
from .cms import Signer
from .types import ContentCipher, Digest, FailInfo, MessageType, PKIStatus

__all__ = [
    "build_request", "issuer_and_subject", "issuer_and_serial", "make_self_signed_signer", "make_csr",
    "parse_cert_rep", "parse_next_ca_cert", "CertRepResult", "CertRepError", "rsa_signer",
]


class CertRepError(ValueError):
    """A reply that does not parse or verify as a CertRep from the expected RA."""


def rsa_signer(key: rsa.RSAPrivateKey) -> Signer:
    """A Signer doing RSA PKCS#1 v1.5 with an in-process key (RFC 8017 §8.2)."""
    def sign(data: bytes, digest: Digest) -> bytes:
        return key.sign(data, padding.PKCS1v15(), digest.hash_algorithm())
    return sign


def build_request(message_type: MessageType, *, content: bytes, signer_cert_der: bytes, signer_key: rsa.RSAPrivateKey,
                  recipient_cert_der: bytes, transaction_id: str, sender_nonce: bytes,
                  cipher: ContentCipher = ContentCipher.AES128_CBC, digest: Digest = Digest.SHA256,
                  cek: bytes, iv: bytes, key_transport: str = "pkcs1v15", signing_time: datetime | None = None,
                  recipient_key: rsa.RSAPublicKey | None = None, recipient_id_der: bytes | None = None,
                  sign: Signer | None = None, signature_alg_der: bytes | None = None) -> bytes:
    """A request pkiMessage: ``content`` enveloped to the RA, signed by the requester (RFC 8894 §3.2, §3.3);
    the recipient is named by issuer and serial unless ``recipient_id_der`` names it otherwise
    (cms.subject_key_identifier_rid). Signed with PKCS#1 v1.5 by ``signer_key`` unless ``sign`` signs
    otherwise, ``signature_alg_der`` then naming the SignerInfo's signatureAlgorithm (e.g. RSASSA-PSS)."""
    if recipient_key is None:
        pub = x509.load_der_x509_certificate(recipient_cert_der).public_key()
        if not isinstance(pub, rsa.RSAPublicKey):
            raise ValueError("the RA certificate key is not RSA")
        recipient_key = pub
    envelope = cms.build_enveloped_data(content, recipient_cert_der=recipient_cert_der, recipient_key=recipient_key,
                                        cipher=cipher, cek=cek, iv=iv, key_transport=key_transport,
                                        recipient_id_der=recipient_id_der)
    attrs = [
        cms.attribute(oids.MESSAGE_TYPE_DER, der.printable(str(int(message_type)))),
        cms.attribute(oids.TRANSACTION_ID_DER, der.printable(transaction_id)),
        cms.attribute(oids.SENDER_NONCE_DER, der.octet_string(sender_nonce)),
    ]
    return cms.build_signed_data(econtent=envelope, signer_cert_der=signer_cert_der,
                                 sign=sign or rsa_signer(signer_key), digest=digest, extra_attrs=attrs,
                                 signing_time=signing_time, signature_alg_der=signature_alg_der)


def issuer_and_subject(issuer: x509.Name, subject: x509.Name) -> bytes:
    """IssuerAndSubject for CertPoll (RFC 8894 §3.3.3)."""
    return der.seq(issuer.public_bytes(), subject.public_bytes())


def issuer_and_serial(issuer: x509.Name, serial: int) -> bytes:
    """IssuerAndSerialNumber for GetCert and GetCRL (RFC 8894 §3.3.4)."""
    return der.seq(issuer.public_bytes(), der.integer(serial))


def transaction_id_for(public_key: rsa.RSAPublicKey) -> str:
    """A transactionID derived from the key, hex SHA-256 of the SubjectPublicKeyInfo (RFC 8894 §3.2.1.1)."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest().upper()


_SIG_ALG = {
    Digest.MD5: "1.2.840.113549.1.1.4", Digest.SHA1: "1.2.840.113549.1.1.5",
    Digest.SHA256: "1.2.840.113549.1.1.11", Digest.SHA512: "1.2.840.113549.1.1.13",
}
_EXT_SKI, _EXT_KU, _EXT_AKI, _EXT_BC = "2.5.29.14", "2.5.29.15", "2.5.29.35", "2.5.29.19"
_DEFAULT_NOT_BEFORE = datetime(2020, 1, 1, tzinfo=timezone.utc)
_DEFAULT_NOT_AFTER = datetime(2049, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


def _extension(dotted: str, value: bytes, critical: bool) -> bytes:
    return der.seq(der.oid(dotted), b"\x01\x01\xff" if critical else b"", der.octet_string(value))


def make_self_signed_signer(key: rsa.RSAPrivateKey, cn: str = "SCEP SIGNER", critical_aki: bool = False, *,
                            organization: str | None = None, digest: Digest | None = None,
                            not_before: datetime = _DEFAULT_NOT_BEFORE, not_after: datetime = _DEFAULT_NOT_AFTER) -> bytes:
    """A self-signed signer certificate for an initial request (RFC 8894 §2.3), DER.

    ``critical_aki=True`` makes the Windows one: CN "SCEP Protocol Certificate"-style, a critical
    AuthorityKeyIdentifier and sha1WithRSAEncryption unless ``digest`` says otherwise. Serial and
    validity are fixed functions of the inputs, so the result is reproducible.
    """
    digest = digest or (Digest.SHA1 if critical_aki else Digest.SHA256)
    pub = key.public_key()
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ski = x509.SubjectKeyIdentifier.from_public_key(pub).digest
    serial = int.from_bytes(hashlib.sha256(spki + cn.encode()).digest()[:8], "big") >> 1 | 1
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    name = x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]).public_bytes()
    sig_alg = der.seq(der.oid(_SIG_ALG[digest]), der.NULL_DER)
    exts = [
        _extension(_EXT_KU, der.tlv(der.BIT_STRING, b"\x05\xa0"), True),  # digitalSignature, keyEncipherment
        _extension(_EXT_SKI, der.octet_string(ski), False),
        _extension(_EXT_AKI, der.seq(der.tlv(0x80, ski)), critical_aki),
    ]
    tbs = der.seq(
        der.tlv(der.ctx(0), der.integer(2)), der.integer(serial), sig_alg, name,
        der.seq(der.encode_time(not_before), der.encode_time(not_after)), name, spki,
        der.tlv(der.ctx(3), der.seq(*exts)),
    )
    signature = key.sign(tbs, padding.PKCS1v15(), digest.hash_algorithm())
    return der.seq(tbs, sig_alg, der.tlv(der.BIT_STRING, b"\x00" + signature))


def make_csr(key: rsa.RSAPrivateKey, cn: str, challenge: str | None = None, sans: Iterable[str | x509.GeneralName] = (),
             *, organization: str | None = None, digest: Digest = Digest.SHA256) -> bytes:
    """A PKCS#10 request with an optional challengePassword (RFC 8894 §3.3.1, RFC 2985 §5.4.1), DER."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    names = [x509.DNSName(s) if isinstance(s, str) else s for s in sans]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode("utf-8"))
    return builder.sign(key, digest.hash_algorithm()).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class CertRepResult:
    """What a CertRep says (RFC 8894 §3.3.2), with the decrypted certificates and CRLs on SUCCESS."""

    status: PKIStatus
    fail_info: FailInfo | None
    fail_text: str | None
    transaction_id: str
    sender_nonce: bytes
    recipient_nonce: bytes
    certs: list[bytes]
    crls: list[bytes]
    digest: Digest
    cipher: ContentCipher | None
    key_transport: str | None
    signer_cert_der: bytes
    signing_time: datetime | None


def _verified(data: bytes, expected_signer_der: bytes | None) -> tuple[cms.SignedData, dict, Digest, bytes]:
    """Parse a signed reply and verify its signature, contentType and messageDigest (RFC 5652 §5.6)."""
    try:
        sd = cms.parse_signed_data(data)
        if len(sd.signer_infos) != 1:
            raise CertRepError("expected exactly one SignerInfo")
        si = sd.signer_info(0)
        found = cms.find_signer(sd, si)
        if found is None:
            raise CertRepError("the signer certificate is not in the reply")
        signer_der = found[0]
        if expected_signer_der is not None and signer_der != expected_signer_der:
            raise CertRepError("the reply is not signed by the expected RA certificate")
        alg = der.children(data, si.digest_alg)
        digest = algorithms.DIGEST_BY_OID.get(der.decode_oid(der.contents(data, alg[0])))
        if digest is None:
            raise CertRepError("unknown digest algorithm")
        if si.signed_attrs is None:
            raise CertRepError("no signed attributes")
        pad, hash_alg = algorithms.signature_scheme(data, si.signature_alg, digest)
        pub = x509.load_der_x509_certificate(signer_der).public_key()
        assert isinstance(pub, rsa.RSAPublicKey)
        pub.verify(si.signature, sd.signed_attrs_der(si), pad, hash_alg)
        attrs = sd.attributes(si)
        ct = attrs.get(oids.CONTENT_TYPE)
        if ct is None or der.decode_oid(der.contents(data, ct)) != sd.econtent_type:
            raise CertRepError("contentType attribute does not match")
        md = attrs.get(oids.MESSAGE_DIGEST)
        if md is None or der.contents(data, md) != algorithms.digest_bytes(digest, sd.econtent or b""):
            raise CertRepError("messageDigest attribute does not match")
    except InvalidSignature:
        raise CertRepError("the reply signature does not verify") from None
    except (der.DERError, algorithms.UnsupportedAlgorithm) as exc:
        raise CertRepError(f"malformed reply: {exc}") from None
    return sd, attrs, digest, signer_der


def parse_cert_rep(data: bytes, recipient_key: rsa.RSAPrivateKey, *, ra_cert_der: bytes | None = None) -> CertRepResult:
    """Verify a CertRep's RA signature and decrypt a SUCCESS (RFC 8894 §3.3.2, §3.4)."""
    sd, attrs, digest, signer_der = _verified(data, ra_cert_der)

    def text(oid: str) -> str | None:
        el = attrs.get(oid)
        return der.decode_string(data, el) if el is not None else None

    def octets(oid: str) -> bytes:
        el = attrs.get(oid)
        return der.string_bytes(data, el) if el is not None else b""

    try:
        if text(oids.MESSAGE_TYPE) != str(int(MessageType.CERT_REP)):
            raise CertRepError("messageType is not CertRep")
        status = PKIStatus(int(text(oids.PKI_STATUS) or "-1"))
        fail = text(oids.FAIL_INFO)
        st = attrs.get(oids.SIGNING_TIME)
        signing_time = der.decode_time(st[0], der.contents(data, st)) if st is not None else None
        certs: list[bytes] = []
        crls: list[bytes] = []
        cipher = scheme = None
        if status == PKIStatus.SUCCESS:
            env = cms.parse_enveloped_data(sd.econtent or b"")
            if env.cipher is None or not env.recipients or env.recipients[0].scheme is None:
                raise CertRepError("unsupported envelope algorithms")
            cipher, scheme = env.cipher, env.recipients[0].scheme
            cek = recipient_key.decrypt(env.recipients[0].encrypted_key, algorithms.rsa_padding(scheme))
            certs, crls = cms.parse_degenerate(algorithms.decrypt_content(cipher, cek, env.iv, env.ciphertext))
        return CertRepResult(
            status=status, fail_info=FailInfo(int(fail)) if fail is not None else None,
            fail_text=text(oids.FAIL_INFO_TEXT), transaction_id=text(oids.TRANSACTION_ID) or "",
            sender_nonce=octets(oids.SENDER_NONCE), recipient_nonce=octets(oids.RECIPIENT_NONCE),
            certs=certs, crls=crls, digest=digest, cipher=cipher, key_transport=scheme,
            signer_cert_der=signer_der, signing_time=signing_time,
        )
    except (der.DERError, ValueError) as exc:
        if isinstance(exc, CertRepError):
            raise
        raise CertRepError(f"malformed CertRep: {exc}") from None


def parse_next_ca_cert(data: bytes, *, ra_cert_der: bytes | None = None) -> list[bytes]:
    """The next CA certificates of a GetNextCACert reply, after verifying the RA signature (RFC 8894 §4.7.1)."""
    sd, _, _, _ = _verified(data, ra_cert_der)
    if sd.econtent is None:
        raise CertRepError("GetNextCACert reply without content")
    try:
        return cms.parse_degenerate(sd.econtent)[0]
    except der.DERError as exc:
        raise CertRepError(f"malformed certificate bundle: {exc}") from None


def certs_in_order(bundle: bytes) -> list[bytes]:
    """The certificates of a degenerate SignedData as they appear on the wire (RFC 8894 §4.2.1.2)."""
    return cms.parse_degenerate(bundle)[0]

