"""The CMS subset SCEP is built on: SignedData and EnvelopedData, read in place and written as DER (RFC 5652).

Parsing keeps offsets into the received bytes (signed attributes are verified over the bytes that were
sent, never a re-encoding); building assembles DER from pre-encoded pieces.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from trustkit import der

from . import algorithms, oids
from .types import ContentCipher, Digest

Signer = Callable[[bytes, Digest], bytes]
"""RSA PKCS#1 v1.5 signature over the DER of the signed attributes, hashed with the given digest."""

_A0 = der.ctx(0)
_A1 = der.ctx(1)

# Bounds on what one message may list (a SCEP request carries one signer certificate, or a short chain, and
# about eight signed attributes): each listed item costs a parse when the signer is looked for.
MAX_CERTIFICATES = 32
MAX_SIGNER_INFOS = 8
MAX_ATTRIBUTES = 64
# a pkcsPKIEnvelope names the certificates its content key was encrypted to: one RA certificate, or every
# certificate GetCACert returned (micromdm's scepclient: the RA certificates and the CA); each is parsed and
# compared with every RA certificate that may be addressed
MAX_RECIPIENTS = 16


# ---------------------------------------------------------------- certificates

@dataclass(frozen=True, slots=True)
class CertIdentity:
    """What a CMS IssuerAndSerialNumber says about a certificate (RFC 5652 §10.2.4)."""

    issuer: bytes   # the Name TLV exactly as encoded in the certificate
    serial: int
    serial_der: bytes


def cert_identity(data: bytes, cert: der.Element | None = None) -> CertIdentity:
    """Issuer and serial of a certificate, read from its TBSCertificate (RFC 5280 §4.1)."""
    if cert is None:
        cert = der.read_one(data)
    c = der.expect(cert, der.SEQUENCE, "certificate")
    tbs = der.read(data, c[2], c[3])
    der.expect(tbs, der.SEQUENCE, "tbsCertificate")
    p = tbs[2]
    el = der.read(data, p, tbs[3])
    if el[0] == _A0:  # version
        el = der.read(data, el[4], tbs[3])
    serial = der.expect(el, der.INTEGER, "serialNumber")
    sig = der.read(data, serial[4], tbs[3])
    issuer = der.expect(der.read(data, sig[4], tbs[3]), der.SEQUENCE, "issuer")
    return CertIdentity(der.raw(data, issuer), der.decode_integer(der.contents(data, serial)), der.raw(data, serial))


@lru_cache(maxsize=128)
def issuer_and_serial_der(cert_der: bytes) -> bytes:
    """IssuerAndSerialNumber of a DER certificate (RFC 5652 §10.2.4)."""
    ident = cert_identity(cert_der)
    return der.seq(ident.issuer, ident.serial_der)


@lru_cache(maxsize=128)
def subject_key_identifier(cert_der: bytes) -> bytes | None:
    """The SubjectKeyIdentifier extension value, if any (RFC 5280 §4.2.1.2)."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (ValueError, x509.InvalidVersion, x509.ExtensionNotFound):
        return None


def rid_matches(data: bytes, rid: der.Element, cert_der: bytes, ident: CertIdentity | None = None) -> bool:
    """Whether a SignerIdentifier/RecipientIdentifier names this certificate (RFC 5652 §5.3, §6.2.1)."""
    if rid[0] == der.SEQUENCE:
        kids = der.children(data, rid)
        if len(kids) != 2 or kids[1][0] != der.INTEGER:
            raise der.DERError("malformed IssuerAndSerialNumber")
        ident = ident or cert_identity(cert_der)
        return (der.decode_integer(der.contents(data, kids[1])) == ident.serial
                and der.raw(data, kids[0]) == ident.issuer)
    if rid[0] in (0x80, _A0):  # [0] SubjectKeyIdentifier
        return der.string_bytes(data, rid) == subject_key_identifier(cert_der)
    raise der.DERError("unknown signer or recipient identifier")


# ---------------------------------------------------------------- SignedData (RFC 5652 §5)

@dataclass(frozen=True, slots=True)
class SignerInfo:
    """One SignerInfo, as offsets into the message (RFC 5652 §5.3)."""

    sid: der.Element
    digest_alg: der.Element
    signed_attrs: der.Element | None
    signature_alg: der.Element
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedData:
    """A parsed ContentInfo(SignedData); every element points into ``data``."""

    data: bytes
    econtent_type: str
    econtent: bytes | None
    certificates: list[der.Element]
    crls: list[der.Element]
    signer_infos: list[der.Element]

    def cert_bytes(self) -> list[bytes]:
        return [der.raw(self.data, c) for c in self.certificates if c[0] == der.SEQUENCE]

    def crl_bytes(self) -> list[bytes]:
        return [der.raw(self.data, c) for c in self.crls if c[0] == der.SEQUENCE]

    def signer_info(self, index: int = 0) -> SignerInfo:
        """Split one SignerInfo into its fields (RFC 5652 §5.3)."""
        data = self.data
        kids = der.children(data, der.expect(self.signer_infos[index], der.SEQUENCE, "SignerInfo"))
        if len(kids) < 5 or kids[0][0] != der.INTEGER:
            raise der.DERError("malformed SignerInfo")
        sid, digest_alg = kids[1], der.expect(kids[2], der.SEQUENCE, "digestAlgorithm")
        i = 3
        signed = None
        if kids[i][0] == _A0:
            signed = kids[i]
            i += 1
        if len(kids) < i + 2:
            raise der.DERError("malformed SignerInfo")
        sig_alg = der.expect(kids[i], der.SEQUENCE, "signatureAlgorithm")
        if kids[i + 1][0] & ~der.CONSTRUCTED != der.OCTET_STRING:
            raise der.DERError("signature is not an OCTET STRING")
        sig = der.string_bytes(data, kids[i + 1])
        return SignerInfo(sid, digest_alg, signed, sig_alg, sig)

    def signed_attrs_der(self, si: SignerInfo) -> bytes:
        """The signed attributes as the DER SET OF the signature covers (RFC 5652 §5.4)."""
        el = si.signed_attrs
        assert el is not None
        if self.data[el[1] + 1] == 0x80:  # BER indefinite length: give the SET a definite length
            return der.tlv(der.SET, self.data[el[2]:el[3]])
        return b"\x31" + self.data[el[1] + 1:el[4]]

    def attributes(self, si: SignerInfo) -> dict[str, der.Element]:
        """Signed attributes by OID: the single value of each (RFC 5652 §5.3: attribute types appear once)."""
        data = self.data
        out: dict[str, der.Element] = {}
        if si.signed_attrs is None:
            return out
        for attr in der.children(data, si.signed_attrs, MAX_ATTRIBUTES):
            kids = der.children(data, der.expect(attr, der.SEQUENCE, "Attribute"))
            if len(kids) != 2 or kids[0][0] != der.OID or kids[1][0] != der.SET:
                raise der.DERError("malformed Attribute")
            dotted = der.decode_oid(der.contents(data, kids[0]))
            if dotted in out:
                raise der.DERError(f"attribute {dotted} appears twice")
            values = der.children(data, kids[1])
            if len(values) != 1:
                raise der.DERError(f"attribute {dotted} must have exactly one value")
            out[dotted] = values[0]
        return out


def find_signer(sd: SignedData, si: SignerInfo) -> tuple[bytes, CertIdentity] | None:
    """The certificate in ``sd.certificates`` that the SignerInfo's sid names (RFC 5652 §5.3), or None."""
    for c in sd.certificates:
        if c[0] != der.SEQUENCE:
            continue
        try:
            ident = cert_identity(sd.data, c)
            cert_der = der.raw(sd.data, c)
            if rid_matches(sd.data, si.sid, cert_der, ident):
                return cert_der, ident
        except der.DERError:
            continue
    return None


def parse_signed_data(data: bytes) -> SignedData:
    """ContentInfo(SignedData) (RFC 5652 §3, §5.1), BER accepted; raises der.DERError."""
    ci = der.read_one(data, der.SEQUENCE)
    kids = der.children(data, ci)
    if len(kids) != 2 or kids[0][0] != der.OID:
        raise der.DERError("not a ContentInfo")
    ctype = der.decode_oid(der.contents(data, kids[0]))
    if ctype != oids.SIGNED_DATA:
        raise der.DERError(f"content type is {ctype}, not signedData")
    wrapper = der.expect(kids[1], _A0, "ContentInfo content")
    inner = der.children(data, wrapper)
    if len(inner) != 1:
        raise der.DERError("ContentInfo content must hold one value")
    sd = der.children(data, der.expect(inner[0], der.SEQUENCE, "SignedData"))
    if len(sd) < 4 or sd[0][0] != der.INTEGER or sd[1][0] != der.SET:
        raise der.DERError("malformed SignedData")
    eci = der.children(data, der.expect(sd[2], der.SEQUENCE, "encapContentInfo"))
    if not eci or eci[0][0] != der.OID:
        raise der.DERError("malformed encapContentInfo")
    etype = der.decode_oid(der.contents(data, eci[0]))
    econtent = None
    if len(eci) > 1:
        wrapped = der.children(data, der.expect(eci[1], _A0, "eContent"))
        if len(wrapped) != 1 or wrapped[0][0] & ~der.CONSTRUCTED != der.OCTET_STRING:
            raise der.DERError("eContent is not an OCTET STRING")
        econtent = der.string_bytes(data, wrapped[0])
    certs: list[der.Element] = []
    crls: list[der.Element] = []
    i = 3
    if i < len(sd) and sd[i][0] == _A0:
        certs = der.children(data, sd[i], MAX_CERTIFICATES)
        i += 1
    if i < len(sd) and sd[i][0] == _A1:
        crls = der.children(data, sd[i], MAX_CERTIFICATES)
        i += 1
    if i != len(sd) - 1:
        raise der.DERError("malformed SignedData")
    signer_infos = der.children(data, der.expect(sd[i], der.SET, "signerInfos"), MAX_SIGNER_INFOS)
    return SignedData(data, etype, econtent, certs, crls, signer_infos)


def content_info(content_type_der: bytes, body: bytes) -> bytes:
    """ContentInfo ::= SEQUENCE { contentType, [0] EXPLICIT content } (RFC 5652 §3)."""
    return der.seq(content_type_der, der.tlv(_A0, body))


def attribute(type_der: bytes, value_der: bytes) -> bytes:
    """Attribute ::= SEQUENCE { attrType, attrValues SET OF } with one value (RFC 5652 §5.3)."""
    return der.seq(type_der, der.tlv(der.SET, value_der))


_CONTENT_TYPE_DATA_ATTR = attribute(oids.CONTENT_TYPE_DER, oids.DATA_DER)
_EMPTY_SET = der.tlv(der.SET, b"")
_DATA_ECI_NO_CONTENT = der.seq(oids.DATA_DER)
_VERSION_1 = der.integer(1)
_VERSION_0 = der.integer(0)
_VERSION_2 = der.integer(2)


def build_signed_data(*, econtent: bytes, signer_cert_der: bytes, sign: Signer, digest: Digest,
                      extra_attrs: Sequence[bytes] = (), signing_time: datetime | None = None,
                      certs: Sequence[bytes] | None = None, signature_alg_der: bytes | None = None) -> bytes:
    """ContentInfo(SignedData) over id-data ``econtent`` with one signer and signed attributes (RFC 5652 §5);
    the signatureAlgorithm is rsaEncryption (PKCS#1 v1.5) unless ``signature_alg_der`` names what ``sign`` does."""
    attrs = [_CONTENT_TYPE_DATA_ATTR,
             attribute(oids.MESSAGE_DIGEST_DER, der.octet_string(algorithms.digest_bytes(digest, econtent)))]
    if signing_time is not None:
        attrs.append(attribute(oids.SIGNING_TIME_DER, der.encode_time(signing_time)))
    attrs.extend(extra_attrs)
    attrs.sort()  # DER SET OF order (X.690 §11.6)
    attrs_body = b"".join(attrs)
    signature = sign(der.tlv(der.SET, attrs_body), digest)
    alg = algorithms.DIGEST_ALG_DER[digest]
    signer_info = der.seq(
        _VERSION_1, issuer_and_serial_der(signer_cert_der), alg, der.tlv(_A0, attrs_body),
        signature_alg_der or algorithms.RSA_ENCRYPTION_ALG_DER, der.octet_string(signature),
    )
    cert_list = [signer_cert_der] if certs is None else list(certs)
    signed = der.seq(
        _VERSION_1, der.tlv(der.SET, alg),
        der.seq(oids.DATA_DER, der.tlv(_A0, der.octet_string(econtent))),
        der.tlv(_A0, b"".join(cert_list)),
        der.tlv(der.SET, signer_info),
    )
    return content_info(oids.SIGNED_DATA_DER, signed)


def build_degenerate(certs: Sequence[bytes], crls: Sequence[bytes] = ()) -> bytes:
    """Certificates-only SignedData (RFC 5652 §5.2, RFC 8894 §3.4) keeping the given order.

    The certificates are NOT put in DER SET order: the first one is meaningful (the RA in GetCACert,
    the issued certificate in a CertRep), and clients such as certmonger read them in order.
    """
    parts = [_VERSION_1, _EMPTY_SET, _DATA_ECI_NO_CONTENT]
    if certs:
        parts.append(der.tlv(_A0, b"".join(certs)))
    if crls:
        parts.append(der.tlv(_A1, b"".join(crls)))
    parts.append(_EMPTY_SET)
    return content_info(oids.SIGNED_DATA_DER, der.seq(*parts))


def parse_degenerate(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """Certificates and CRLs of a certificates-only SignedData, in wire order (RFC 8894 §3.4)."""
    sd = parse_signed_data(data)
    return sd.cert_bytes(), sd.crl_bytes()


# ---------------------------------------------------------------- EnvelopedData (RFC 5652 §6)

@dataclass(frozen=True, slots=True)
class Recipient:
    """One KeyTransRecipientInfo (RFC 5652 §6.2.1)."""

    rid: der.Element
    scheme: str | None       # "pkcs1v15" / "oaep-<hash>", or None if unsupported
    unsupported: str | None  # why the scheme is unsupported
    encrypted_key: bytes


@dataclass(frozen=True, slots=True)
class EnvelopedData:
    """A parsed ContentInfo(EnvelopedData); ``recipients`` are the key-transport ones only."""

    data: bytes
    recipients: list[Recipient]
    other_recipients: int
    cipher: ContentCipher | None
    cipher_oid: str
    iv: bytes
    ciphertext: bytes


def parse_enveloped_data(data: bytes) -> EnvelopedData:
    """ContentInfo(EnvelopedData), BER accepted, Go's constructed [0] encryptedContent too; raises der.DERError."""
    ci = der.read_one(data, der.SEQUENCE)
    kids = der.children(data, ci)
    if len(kids) != 2 or kids[0][0] != der.OID:
        raise der.DERError("not a ContentInfo")
    ctype = der.decode_oid(der.contents(data, kids[0]))
    if ctype != oids.ENVELOPED_DATA:
        raise der.DERError(f"content type is {ctype}, not envelopedData")
    inner = der.children(data, der.expect(kids[1], _A0, "ContentInfo content"))
    if len(inner) != 1:
        raise der.DERError("ContentInfo content must hold one value")
    ed = der.children(data, der.expect(inner[0], der.SEQUENCE, "EnvelopedData"))
    if len(ed) < 3 or ed[0][0] != der.INTEGER:
        raise der.DERError("malformed EnvelopedData")
    i = 1
    if ed[i][0] == _A0:  # originatorInfo
        i += 1
    if i + 1 >= len(ed):
        raise der.DERError("malformed EnvelopedData")
    recipients: list[Recipient] = []
    others = 0
    for ri in der.children(data, der.expect(ed[i], der.SET, "recipientInfos"), MAX_RECIPIENTS):
        if ri[0] != der.SEQUENCE:  # kari [1], kekri [2], pwri [3], ori [4]
            others += 1
            continue
        f = der.children(data, ri)
        if len(f) != 4 or f[0][0] != der.INTEGER:
            raise der.DERError("malformed KeyTransRecipientInfo")
        scheme, why = None, None
        try:
            scheme = algorithms.key_transport(data, f[2])
        except algorithms.UnsupportedAlgorithm as exc:
            why = str(exc)
        ek = der.string_bytes(data, f[3]) if f[3][0] & ~der.CONSTRUCTED == der.OCTET_STRING else None
        if ek is None:
            raise der.DERError("encryptedKey is not an OCTET STRING")
        recipients.append(Recipient(f[1], scheme, why, ek))
    eci = der.children(data, der.expect(ed[i + 1], der.SEQUENCE, "encryptedContentInfo"))
    if len(eci) < 2 or eci[0][0] != der.OID:
        raise der.DERError("malformed encryptedContentInfo")
    alg = der.children(data, der.expect(eci[1], der.SEQUENCE, "contentEncryptionAlgorithm"))
    if not alg or alg[0][0] != der.OID:
        raise der.DERError("malformed contentEncryptionAlgorithm")
    cipher_oid = der.decode_oid(der.contents(data, alg[0]))
    cipher = algorithms.CIPHER_BY_OID.get(cipher_oid)
    iv = b""
    if cipher is not None:
        if len(alg) != 2 or alg[1][0] != der.OCTET_STRING:
            raise der.DERError("content encryption parameters are not an IV")
        iv = der.contents(data, alg[1])
        if len(iv) != cipher.block_size:
            raise der.DERError("IV length does not match the cipher")
    if len(eci) < 3 or eci[2][0] not in (0x80, _A0):
        raise der.DERError("no encryptedContent")
    # micromdm scepclient (Go pkcs7) sends [0] constructed with OCTET STRING chunks inside.
    ciphertext = der.string_bytes(data, eci[2])
    return EnvelopedData(data, recipients, others, cipher, cipher_oid, iv, ciphertext)


def build_enveloped_data(content: bytes, *, recipient_cert_der: bytes, recipient_key: rsa.RSAPublicKey,
                         cipher: ContentCipher, cek: bytes, iv: bytes, key_transport: str = "pkcs1v15",
                         recipient_id_der: bytes | None = None) -> bytes:
    """ContentInfo(EnvelopedData) to one RSA recipient named by issuer and serial, or by ``recipient_id_der``
    (an IssuerAndSerialNumber, or a [0] SubjectKeyIdentifier: versions 2, RFC 5652 §6.1, §6.2.1)."""
    encrypted_key = recipient_key.encrypt(cek, algorithms.rsa_padding(key_transport))
    rid = recipient_id_der or issuer_and_serial_der(recipient_cert_der)
    version = _VERSION_2 if rid[0] == 0x80 else _VERSION_0
    ktri = der.seq(version, rid,
                   algorithms.key_transport_alg_der(key_transport), der.octet_string(encrypted_key))
    eci = der.seq(oids.DATA_DER, algorithms.content_cipher_alg_der(cipher, iv),
                  der.tlv(0x80, algorithms.encrypt_content(cipher, cek, iv, content)))
    return content_info(oids.ENVELOPED_DATA_DER, der.seq(version, der.tlv(der.SET, ktri), eci))


def subject_key_identifier_rid(cert_der: bytes) -> bytes:
    """A RecipientIdentifier naming a certificate by its SubjectKeyIdentifier ([0] IMPLICIT, RFC 5652 §6.2.1)."""
    ski = subject_key_identifier(cert_der)
    if ski is None:
        raise ValueError("the certificate has no SubjectKeyIdentifier")
    return der.tlv(0x80, ski)
