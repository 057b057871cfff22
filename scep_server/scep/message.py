"""SCEP pkiMessage codec, server side: parse and verify requests, build CertRep and CA replies (RFC 8894 §3)."""
from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Sequence
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from trustkit import der
from trustkit.problems import ServiceUnavailable

from . import algorithms, cms, oids
from .cms import Signer, build_degenerate, parse_degenerate
from .types import (REQUEST_TYPES, ContentCipher, Digest, FailInfo, MalformedMessage, MessageType, PKIStatus,
                    SCEPFailure)

__all__ = [
    "PKIMessage", "parse_pki_message", "decrypt_envelope", "parse_issuer_and_subject", "parse_issuer_and_serial",
    "RequestContent", "open_request", "addressed_to",
    "build_cert_rep", "build_degenerate", "parse_degenerate", "build_next_ca_cert", "decode_get_message",
]

DecryptCEK = Callable[[bytes, str], bytes]
"""RSA key transport with the RA key: (encryptedKey, "pkcs1v15" | "oaep-sha1" | "oaep-sha256" | ...) -> CEK."""


@dataclass(frozen=True)
class PKIMessage:
    """A verified SCEP request (RFC 8894 §3.2): who signed it, its attributes and its still-encrypted envelope."""

    message_type: MessageType | int
    transaction_id: str
    sender_nonce: bytes
    signer_cert: x509.Certificate
    signer_cert_der: bytes
    digest: Digest
    envelope: bytes                      # DER of the pkcsPKIEnvelope ContentInfo, as received
    signing_time: datetime | None = None
    cipher: ContentCipher | None = None  # the envelope's content cipher
    key_transport: str | None = None     # "pkcs1v15" or "oaep-<hash>"
    # SHA-256 of the signed attributes the signature covers: the request as its signer made it (its senderNonce,
    # transactionID and the envelope's messageDigest); unlike the body's, no re-encoding of the unsigned parts
    # (the certificates, unsigned attributes) changes it
    signed_sha256: bytes = b""
    _transaction_id_der: bytes = field(default=b"", repr=False, compare=False)
    _signer_id_der: bytes = field(default=b"", repr=False, compare=False)
    _signer_key: object = field(default=None, repr=False, compare=False)
    _envelope: cms.EnvelopedData | None = field(default=None, repr=False, compare=False)

    @property
    def reply_cipher(self) -> ContentCipher:
        """The CertRep's content cipher: the request's, single DES answered with AES-128-CBC (RFC 8894 §3.5.2)."""
        return self.cipher.reply if self.cipher is not None else ContentCipher.AES128_CBC

    def decrypt(self, decrypt_cek: DecryptCEK, *, recipient_cert_der: bytes | None = None) -> tuple[bytes, ContentCipher]:
        """The decrypted pkcsPKIEnvelope content and its cipher; see ``decrypt_envelope``."""
        return decrypt_envelope(self, decrypt_cek, recipient_cert_der=recipient_cert_der)


_BAD_ENVELOPE = "cannot decrypt the pkcsPKIEnvelope"  # one text for every decryption fault: no padding oracle


def parse_pki_message(data: bytes) -> PKIMessage:
    """Parse a request pkiMessage, find its signer certificate by sid and verify it (RFC 8894 §3.2, RFC 5652 §5.6).

    Raises MalformedMessage when there is no signer to answer to, SCEPFailure (with the message) after that.
    """
    try:
        sd = cms.parse_signed_data(data)
        if not sd.signer_infos:
            raise MalformedMessage("the SignedData has no SignerInfo")
        si = sd.signer_info(0)
    except der.DERError as exc:
        raise MalformedMessage(f"not a CMS SignedData pkiMessage: {exc}") from None

    found = cms.find_signer(sd, si)
    if found is None:
        raise MalformedMessage("no certificate in the SignedData matches the SignerInfo")
    signer_der, ident = found
    try:
        signer_cert = x509.load_der_x509_certificate(signer_der)
        _ = signer_cert.issuer, signer_cert.subject  # decoded when read: a Name that does not decode fails here
    except (ValueError, TypeError, x509.InvalidVersion) as exc:  # TypeError: a name attribute of a type it cannot
        # have (a BIT STRING commonName), which cryptography refuses with a TypeError
        raise MalformedMessage(f"the signer certificate does not parse: {exc}") from None

    # From here on every problem is a CertRep FAILURE to this signer; collect what addresses it first.
    f: dict = {"message_type": 0, "transaction_id": "", "sender_nonce": b"", "signer_cert": signer_cert,
               "signer_cert_der": signer_der, "digest": Digest.SHA256, "envelope": sd.econtent or b"",
               "_signer_id_der": der.seq(ident.issuer, ident.serial_der)}

    def fail(info: FailInfo, text: str) -> SCEPFailure:
        return SCEPFailure(info, text, PKIMessage(**f))

    try:
        attrs = sd.attributes(si)
        el = attrs.get(oids.TRANSACTION_ID)
        if el is not None:
            f["transaction_id"] = der.decode_string(data, el)
            f["_transaction_id_der"] = der.raw(data, el)
        el = attrs.get(oids.SENDER_NONCE)
        if el is not None and el[0] & ~der.CONSTRUCTED == der.OCTET_STRING:
            f["sender_nonce"] = der.string_bytes(data, el)
        el = attrs.get(oids.MESSAGE_TYPE)
        if el is not None:
            text = der.decode_string(data, el)
            if text.isascii() and text.isdigit() and len(text) < 6:
                n = int(text)
                f["message_type"] = MessageType(n) if n in MessageType._value2member_map_ else n
        el = attrs.get(oids.SIGNING_TIME)
        if el is not None:
            f["signing_time"] = der.decode_time(el[0], der.contents(data, el))
    except der.DERError as exc:
        raise fail(FailInfo.BAD_MESSAGE_CHECK, f"malformed signed attributes: {exc}") from None

    try:
        _verify(data, sd, si, signer_cert, attrs, f, fail)
    except der.DERError as exc:
        raise fail(FailInfo.BAD_MESSAGE_CHECK, f"malformed pkiMessage: {exc}") from None
    return PKIMessage(**f)


def _verify(data: bytes, sd: cms.SignedData, si: cms.SignerInfo, signer_cert: x509.Certificate,
            attrs: dict[str, der.Element], f: dict, fail: Callable[[FailInfo, str], SCEPFailure]) -> None:
    """Check algorithms, signature, content binding and SCEP attributes, filling ``f`` (RFC 5652 §5.6, RFC 8894 §3.2)."""
    digest_oid = der.children(data, si.digest_alg)
    digest = (algorithms.DIGEST_BY_OID.get(der.decode_oid(der.contents(data, digest_oid[0])))
              if digest_oid and digest_oid[0][0] == der.OID else None)
    if digest is None:
        raise fail(FailInfo.BAD_ALG, "unsupported digest algorithm")
    f["digest"] = digest
    try:
        public_key = signer_cert.public_key()
    except UnsupportedAlgorithm:
        raise fail(FailInfo.BAD_ALG, "the signer key algorithm is not supported") from None
    except ValueError:
        raise fail(FailInfo.BAD_MESSAGE_CHECK, "the signer public key does not parse") from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise fail(FailInfo.BAD_ALG, "the signer key is not RSA (RFC 8894 §2.9)")
    if not rsa_key_bounded(public_key):
        raise fail(FailInfo.BAD_ALG, f"the signer key is beyond {MAX_RSA_BITS} bits or its exponent beyond "
                                     f"{MAX_RSA_EXPONENT_BITS} bits")
    f["_signer_key"] = public_key
    if si.signed_attrs is None:
        raise fail(FailInfo.BAD_REQUEST, "the SignerInfo has no signed attributes (RFC 8894 §3.2.1)")
    try:
        pad, hash_alg = algorithms.signature_scheme(data, si.signature_alg, digest, key_size=public_key.key_size)
    except algorithms.UnsupportedAlgorithm as exc:
        raise fail(FailInfo.BAD_ALG, str(exc)) from None
    except der.DERError as exc:
        raise fail(FailInfo.BAD_MESSAGE_CHECK, f"malformed signature algorithm: {exc}") from None
    signed_attrs = sd.signed_attrs_der(si)
    try:
        public_key.verify(si.signature, signed_attrs, pad, hash_alg)
    except (InvalidSignature, ValueError, OverflowError):  # OverflowError: a parameter beyond OpenSSL's integers
        raise fail(FailInfo.BAD_MESSAGE_CHECK, "the signature does not verify") from None

    # The signed attributes are authentic now: check them against the content (RFC 5652 §5.6).
    f["signed_sha256"] = hashlib.sha256(signed_attrs).digest()
    el = attrs.get(oids.CONTENT_TYPE)
    if el is None or el[0] != der.OID or der.decode_oid(der.contents(data, el)) != sd.econtent_type:
        raise fail(FailInfo.BAD_MESSAGE_CHECK, "the contentType attribute does not match the content")
    if sd.econtent is None:
        raise fail(FailInfo.BAD_REQUEST, "the pkiMessage has no pkcsPKIEnvelope")
    el = attrs.get(oids.MESSAGE_DIGEST)
    if (el is None or el[0] != der.OCTET_STRING
            or der.contents(data, el) != algorithms.digest_bytes(digest, sd.econtent)):
        raise fail(FailInfo.BAD_MESSAGE_CHECK, "the messageDigest attribute does not match the content")
    if sd.econtent_type != oids.DATA:
        raise fail(FailInfo.BAD_REQUEST, f"the signed content type is {sd.econtent_type}, not data")
    if not f["message_type"]:
        raise fail(FailInfo.BAD_REQUEST, "the messageType attribute is missing or not a number")
    if f["message_type"] not in REQUEST_TYPES:
        raise fail(FailInfo.BAD_REQUEST, f"messageType {f['message_type']} is not a request")
    if not f["transaction_id"]:
        raise fail(FailInfo.BAD_REQUEST, "the transactionID attribute is missing")
    if not f["sender_nonce"]:
        raise fail(FailInfo.BAD_REQUEST, "the senderNonce attribute is missing")

    try:
        env = cms.parse_enveloped_data(sd.econtent)
    except der.DERError as exc:
        raise fail(FailInfo.BAD_REQUEST, f"the pkcsPKIEnvelope is not an EnvelopedData: {exc}") from None
    f["_envelope"] = env
    if env.cipher is None:
        raise fail(FailInfo.BAD_ALG, f"unsupported content encryption algorithm {env.cipher_oid}")
    f["cipher"] = env.cipher
    if not env.recipients:
        raise fail(FailInfo.BAD_ALG, "the pkcsPKIEnvelope has no key transport recipient")
    f["key_transport"] = next((r.scheme for r in env.recipients if r.scheme), None)
    if f["key_transport"] is None:
        raise fail(FailInfo.BAD_ALG, env.recipients[0].unsupported or "unsupported key transport")
    # the reply is enveloped to the signer key with the request's key transport and cipher: refused now when
    # that cannot be done, before anything is issued or spent
    scheme, cek_size = f["key_transport"], env.cipher.reply.key_size
    if algorithms.key_transport_capacity(scheme, public_key.key_size) < cek_size:
        raise fail(FailInfo.BAD_ALG, f"the signer's {public_key.key_size}-bit key cannot receive a {cek_size}-byte "
                                     f"content key with {scheme}: the reply could not be encrypted to it")


def decrypt_envelope(envelope: bytes | PKIMessage, decrypt_cek: DecryptCEK, *,
                     recipient_cert_der: bytes | None = None,
                     allow_single_des: bool = True) -> tuple[bytes, ContentCipher]:
    """Decrypt a pkcsPKIEnvelope (RFC 8894 §3.2.2, RFC 5652 §6): KeyTransRecipientInfo, AES/3DES/DES-CBC.

    With ``recipient_cert_der`` (the RA certificate) only a RecipientInfo naming it is used. A PKIMessage
    may be passed instead of bytes: its parsed envelope is reused and failures carry it. Every fault of the
    key transport, the content decryption or the padding is one badMessageCheck with one text.
    """
    message = envelope if isinstance(envelope, PKIMessage) else None
    env, chosen = _addressed(envelope, message, recipient_cert_der, allow_single_des)
    plain, ok = _decrypt(env, chosen, decrypt_cek)
    if not ok:
        raise SCEPFailure(FailInfo.BAD_MESSAGE_CHECK, _BAD_ENVELOPE, message)
    return plain, env.cipher


@dataclass(frozen=True)
class RequestContent:
    """The decrypted and parsed pkcsPKIEnvelope of a request (RFC 8894 §3.3), by message type."""

    der: bytes = field(repr=False)                         # the inner content, as decrypted (its challengePassword)
    cipher: ContentCipher
    csr: x509.CertificateSigningRequest | None = None      # PKCSReq, RenewalReq: signature verified
    public_key: object = None                              # PKCSReq, RenewalReq: the CSR's public key
    proof_checked: bool = False                            # PKCSReq, RenewalReq: the CSR's signature verified
    issuer: x509.Name | None = None                        # CertPoll, GetCert, GetCRL
    subject: x509.Name | None = None                       # CertPoll
    serial: int | None = None                              # GetCert, GetCRL


def open_request(message: PKIMessage, decrypt_cek: DecryptCEK | None, *, recipient_cert_der: bytes | None = None,
                 recipients: Sequence[tuple[bytes, DecryptCEK]] = (), allow_single_des: bool = True,
                 issuer: x509.Name | None = None) -> RequestContent:
    """Decrypt a request's pkcsPKIEnvelope and parse its content for the message type (RFC 8894 §3.3).

    Failures that need no decryption (not an EnvelopedData, not addressed to the RA, unsupported or refused
    cipher, including single DES when ``allow_single_des`` is false) keep their own failInfo. From the key
    transport to the parsed content (RSA decryption, content decryption, padding, inner DER, the CSR's key
    and proof of possession, and with ``issuer`` the issuer a CertPoll, GetCert or GetCRL names) every fault
    is the same badMessageCheck with the same text, after the same steps: a modified envelope learns nothing
    about the plaintext (no padding or format oracle).

    ``recipients``: instead of one RA certificate and its key, every RA certificate that may be addressed (a
    renewed RA and its predecessor during their overlap), each with its key transport; the RecipientInfo's
    issuerAndSerialNumber or subjectKeyIdentifier picks the key, no key is tried on another's envelope.
    """
    candidates = list(recipients) or [(recipient_cert_der, decrypt_cek)]
    env, chosen, decrypt = _addressed_to(message, message, candidates, allow_single_des)
    plain, ok = _decrypt(env, chosen, decrypt)
    content, ok = _parse_content(message.message_type, plain, env.cipher, ok)
    if content is not None and issuer is not None and content.issuer is not None and content.issuer != issuer:
        ok = False
    if not ok:
        raise SCEPFailure(FailInfo.BAD_MESSAGE_CHECK, _BAD_ENVELOPE, message)
    return content


def addressed_to(message: PKIMessage, cert_ders: Sequence[bytes]) -> bool:
    """Whether a RecipientInfo of the request's pkcsPKIEnvelope names one of ``cert_ders`` (by issuerAndSerialNumber
    or subjectKeyIdentifier), as open_request picks the key it decrypts with. Nothing is decrypted."""
    env = message._envelope
    if env is None:
        return False
    idents = [(cert_der, cms.cert_identity(cert_der)) for cert_der in cert_ders]  # read once, not per recipient
    for r in env.recipients:
        for cert_der, ident in idents:
            try:
                if cms.rid_matches(env.data, r.rid, cert_der, ident):
                    return True
            except der.DERError:
                break
    return False


def _addressed(envelope: bytes | PKIMessage, message: PKIMessage | None, recipient_cert_der: bytes | None,
               allow_single_des: bool) -> tuple[cms.EnvelopedData, cms.Recipient]:
    """The envelope and the RecipientInfo to decrypt; failures here are visible from the envelope alone."""
    env, chosen, _ = _addressed_to(envelope, message, [(recipient_cert_der, None)], allow_single_des)
    return env, chosen


def _addressed_to(envelope: bytes | PKIMessage, message: PKIMessage | None,
                  candidates: Sequence[tuple[bytes | None, DecryptCEK | None]], allow_single_des: bool
                  ) -> tuple[cms.EnvelopedData, cms.Recipient, DecryptCEK | None]:
    """The envelope, the RecipientInfo to decrypt and the key transport of the RA certificate it names (the
    first RecipientInfo naming one of ``candidates``; a candidate without certificate takes any)."""
    try:
        env = message._envelope if message is not None else None
        if env is None:
            env = cms.parse_enveloped_data(message.envelope if message is not None else envelope)
    except der.DERError as exc:
        raise SCEPFailure(FailInfo.BAD_REQUEST, f"the pkcsPKIEnvelope is not an EnvelopedData: {exc}", message) from None
    if env.cipher is None:
        raise SCEPFailure(FailInfo.BAD_ALG, f"unsupported content encryption algorithm {env.cipher_oid}", message)
    if env.cipher is ContentCipher.DES_CBC and not allow_single_des:
        raise SCEPFailure(FailInfo.BAD_ALG, "single DES is not accepted by this profile; use AES or DES3", message)
    if not env.recipients:
        raise SCEPFailure(FailInfo.BAD_ALG, "the pkcsPKIEnvelope has no key transport recipient", message)
    chosen = decrypt = None
    for r in env.recipients:
        for cert_der, candidate in candidates:
            try:
                if cert_der is None or cms.rid_matches(env.data, r.rid, cert_der):
                    chosen, decrypt = r, candidate
                    break
            except der.DERError:
                break
        if chosen is not None:
            break
    if chosen is None:
        raise SCEPFailure(FailInfo.BAD_MESSAGE_CHECK, "the pkcsPKIEnvelope is not addressed to this RA certificate",
                          message)
    if chosen.scheme is None:
        raise SCEPFailure(FailInfo.BAD_ALG, chosen.unsupported or "unsupported key transport", message)
    return env, chosen, decrypt


def _decrypt(env: cms.EnvelopedData, chosen: cms.Recipient, decrypt_cek: DecryptCEK) -> tuple[bytes, bool]:
    """(plaintext, whether key transport, decryption and padding all succeeded), the same steps either way.

    A key transport that fails (OAEP, or PKCS#1 v1.5 without OpenSSL's implicit rejection) or yields a key of
    the wrong size is replaced by a random key, as RFC 8017 §7.2.2 implicit rejection and RFC 3218 §2.3.2
    advise, and the content is decrypted with it all the same. Without valid padding the whole plaintext is
    returned for the same parsing work.
    """
    cipher = env.cipher
    assert cipher is not None
    substitute = secrets.token_bytes(cipher.key_size)
    try:
        cek = decrypt_cek(chosen.encrypted_key, chosen.scheme or "")
        ok = isinstance(cek, bytes) and len(cek) == cipher.key_size
    except ServiceUnavailable:  # the key's holder (a PKCS#11 token) is away: a 503, whatever the ciphertext
        raise
    except Exception:  # noqa: BLE001 - every key transport fault must read the same
        cek, ok = b"", False
    key = cek if ok else substitute
    bs = cipher.block_size
    if len(env.iv) != bs or not env.ciphertext or len(env.ciphertext) % bs:
        return env.ciphertext, False
    plain = algorithms.decrypt_raw(cipher, key, env.iv, env.ciphertext)
    try:
        return algorithms.unpad(cipher, plain), ok
    except ValueError:
        return plain, False


_RSA_SHA1_OIDS = {"1.2.840.113549.1.1.5", "1.3.14.3.2.29"}  # sha1WithRSAEncryption, and its OIW alias
_ECDSA_SHA1_OID = "1.2.840.10045.4.1"
# Verification costs grow with the public exponent and the modulus: a request's key beyond these is refused
# before any arithmetic (real keys use 65537, or 3, and at most 8192 bits).
MAX_RSA_EXPONENT_BITS = 256
MAX_RSA_BITS = 16384


def rsa_key_bounded(public_key) -> bool:
    """False for an RSA key whose verification would cost more than any real key's."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        return True
    return (public_key.key_size <= MAX_RSA_BITS
            and public_key.public_numbers().e.bit_length() <= MAX_RSA_EXPONENT_BITS)


def csr_signature_valid(csr: x509.CertificateSigningRequest) -> bool | None:
    """Proof of possession: does the CSR's signature verify under the key it carries? SHA-1 is verified too
    (whether a SHA-1 CSR is acceptable is the profile's decision, see ca.policy). None when it is not verified
    here: a key beyond the bounds (verifying would cost more than any real key), MD5 or an algorithm
    cryptography does not verify; the profile's policy refuses those with its own words."""
    public_key = csr.public_key()
    if not rsa_key_bounded(public_key):
        return None
    oid = csr.signature_algorithm_oid.dotted_string
    if oid in _RSA_SHA1_OIDS or oid == _ECDSA_SHA1_OID:  # cryptography's CSR check no longer verifies SHA-1
        try:
            if isinstance(public_key, rsa.RSAPublicKey) and oid in _RSA_SHA1_OIDS:
                public_key.verify(csr.signature, csr.tbs_certrequest_bytes, padding.PKCS1v15(), hashes.SHA1())
            elif isinstance(public_key, ec.EllipticCurvePublicKey) and oid == _ECDSA_SHA1_OID:
                public_key.verify(csr.signature, csr.tbs_certrequest_bytes, ec.ECDSA(hashes.SHA1()))
            else:
                return False
        except InvalidSignature:
            return False
        return True
    try:
        if isinstance(csr.signature_hash_algorithm, hashes.MD5):
            return None
        return csr.is_signature_valid
    except UnsupportedAlgorithm:
        return None


# A self-signed RSA-2048 CSR (CN=placeholder) whose signature is checked when the content did not parse, so
# that a request whose content does not parse costs the same proof-of-possession check as one that does.
_PLACEHOLDER_CSR = x509.load_der_x509_csr(base64.b64decode(
    "MIICWzCCAUMCAQAwFjEUMBIGA1UEAwwLcGxhY2Vob2xkZXIwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCx9KrufTl7"
    "mxIYTlfXRzsUw6draXvNKO5MH4t9sNgzQ0ufybPxpg1JtivzcI2Du1c5whJ4cqtdyb+K/A7mFA4cfZVVQyldceTMPDruRjmWEnAg"
    "2xrWmGbuSKNWpF4aIhxgkPf3Og75LWBzaZTfA4Fee2fGFmRo0nnnM/OI2JenTFQ8XiH7asFOchiylBgC1f0orEVwYTR0x31gh3DG"
    "wXpBNK73oOrRLGyrvZjHJ0ER1TZpx4T4VbWlZeHctTKI7fj27aLDWz7u6Tds759AQKdLgTmfouT+coUXoYkLsb3Ip40APYw5nUlX"
    "7GCkBKKxnQF/eGiA5GRlsUl/AQFqGOx9AgMBAAGgADANBgkqhkiG9w0BAQsFAAOCAQEAWPknwr48/MYBVEqATLsOT223EPTnhp0I"
    "0FHD/A7MF87XuquaOdeMbN5F8BWDEBXpUQGseOw3tZbS1i+knb5I2To4/UFuBGWsG8oasEtoaozun3A4pUKPCUfQ4HfdhFGg7B2p"
    "ARUuMBHVIh8E3a2jAzQocskbt5MQgLFYUojryxkIUWYAY1QeE4DGy2BGDqpJM9P8s6NSTfQ54AuEiLTmkolCFPW/vjwr/PaEfo5Z"
    "gdlGYthJUVU+4hd9BGbKFbxDuGKlWvgS4Nt0ySORsj80LRbeVvMqxHCuD+tsFmgmoP52E/kucC2Q0nA5hVFpMPqYCwWBl3NFR3VB"
    "MC/PrnHU/Q=="
))


def _parse_content(message_type: MessageType | int, plain: bytes, cipher: ContentCipher,
                   ok: bool) -> tuple[RequestContent | None, bool]:
    """Parse the content for the message type whether or not decryption succeeded; (content, all ok)."""
    content: RequestContent | None = None
    if message_type in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
        csr = public_key = None
        try:
            csr = x509.load_der_x509_csr(plain)
            public_key = csr.public_key()
            _ = csr.subject  # decoded when read: a name attribute of a type it cannot have is a TypeError
            list(csr.attributes)  # read now: cryptography refuses a multi-valued or empty attribute (ValueError),
            list(csr.extensions)  # a repeated extension or a SAN of a type it does not read (not ValueErrors)
        except Exception:  # noqa: BLE001 - ValueError, UnsupportedAlgorithm: one answer
            csr = None
        try:
            signed = csr_signature_valid(csr or _PLACEHOLDER_CSR)
        except Exception:  # noqa: BLE001 - anything a hostile CSR raises is no proof of possession
            signed = False
        # a signature that does not verify is one answer with every other fault; one that cannot be verified here
        # (None: MD5, a key beyond the bounds) goes on to the profile's policy, which refuses it in its own words
        if csr is not None and signed is not False:
            content = RequestContent(der=plain, cipher=cipher, csr=csr, public_key=public_key,
                                     proof_checked=signed is True)
    elif message_type is MessageType.CERT_POLL:
        try:
            issuer, subject = parse_issuer_and_subject(plain)
            content = RequestContent(der=plain, cipher=cipher, issuer=issuer, subject=subject)
        except Exception:  # noqa: BLE001 - SCEPFailure and anything a hostile Name raises: one answer
            pass
    elif message_type in (MessageType.GET_CERT, MessageType.GET_CRL):
        try:
            issuer, serial = parse_issuer_and_serial(plain)
            content = RequestContent(der=plain, cipher=cipher, issuer=issuer, serial=serial)
        except Exception:  # noqa: BLE001 - SCEPFailure and anything a hostile Name raises: one answer
            pass
    return content, ok and content is not None


# ---------------------------------------------------------------- envelope contents (RFC 8894 §3.3)

_CHALLENGE_OID_DER = der.oid(oids.CHALLENGE_PASSWORD)
# the filler of each string type: one character of its encoding that every one of them allows
_FILLER = {der.BMP_STRING: b"\x00\x30", der.UNIVERSAL_STRING: b"\x00\x00\x00\x30"}


def without_challenge_password(csr_der: bytes) -> bytes:
    """The CSR with its challengePassword (PKCS#9) overwritten, for keeping once the challenge has done its work:
    the same length and structure, the key, subject and extensions as they were (its signature no longer
    verifies). The CSR as it is when it has none, or when it does not parse (nothing is kept from it then but
    what it holds)."""
    try:
        info = der.children(csr_der, der.read_one(csr_der), limit=3)[0]
        attributes = [el for el in der.children(csr_der, info, limit=8) if el[0] == der.ctx(0)]
        spans = []
        for attribute in der.children(csr_der, attributes[0], limit=64) if attributes else ():
            kind, values = der.children(csr_der, attribute, limit=2)
            if der.raw(csr_der, kind) == _CHALLENGE_OID_DER:
                spans += [(v[0], v[2], v[3]) for v in der.children(csr_der, values, limit=16)]
    except (der.DERError, ValueError):
        return csr_der
    out = bytearray(csr_der)
    for ident, start, end in spans:
        filler = _FILLER.get(ident, b"0")
        out[start:end] = (filler * ((end - start) // len(filler) + 1))[:end - start]
    return bytes(out)


MAX_NAME_ATTRIBUTES = 64
"""The attributes a Name in a CertPoll, GetCert or GetCRL may hold: a CA's name has a handful, a subject at most
ca.policy.MAX_SUBJECT_ATTRIBUTES (32); a 64 KiB request would otherwise make thousands of them be built."""


def _name(data: bytes, el: der.Element) -> x509.Name:
    """An X.501 Name as a cryptography Name (RFC 5280 §4.1.2.4), of at most MAX_NAME_ATTRIBUTES attributes."""
    rdns = []
    count = 0
    for rdn in der.children(data, der.expect(el, der.SEQUENCE, "Name"), MAX_NAME_ATTRIBUTES):
        atvs = []
        for atv in der.children(data, der.expect(rdn, der.SET, "RelativeDistinguishedName"), MAX_NAME_ATTRIBUTES):
            count += 1
            if count > MAX_NAME_ATTRIBUTES:
                raise der.DERError(f"more than {MAX_NAME_ATTRIBUTES} attributes in a Name")
            kids = der.children(data, der.expect(atv, der.SEQUENCE, "AttributeTypeAndValue"))
            if len(kids) != 2 or kids[0][0] != der.OID:
                raise der.DERError("malformed AttributeTypeAndValue")
            oid = x509.ObjectIdentifier(der.decode_oid(der.contents(data, kids[0])))
            atvs.append(x509.NameAttribute(oid, der.decode_string(data, kids[1])))
        if not atvs:
            raise der.DERError("empty RelativeDistinguishedName")
        rdns.append(x509.RelativeDistinguishedName(atvs))
    return x509.Name(rdns)


def parse_issuer_and_subject(data: bytes) -> tuple[x509.Name, x509.Name]:
    """IssuerAndSubject of a CertPoll (RFC 8894 §3.3.3)."""
    try:
        kids = der.children(data, der.read_one(data, der.SEQUENCE))
        if len(kids) != 2:
            raise der.DERError("IssuerAndSubject has two fields")
        return _name(data, kids[0]), _name(data, kids[1])
    except (der.DERError, ValueError) as exc:
        raise SCEPFailure(FailInfo.BAD_REQUEST, f"malformed IssuerAndSubject: {exc}") from None


def parse_issuer_and_serial(data: bytes) -> tuple[x509.Name, int]:
    """IssuerAndSerialNumber of a GetCert or GetCRL (RFC 8894 §3.3.4, RFC 5652 §10.2.4)."""
    try:
        kids = der.children(data, der.read_one(data, der.SEQUENCE))
        if len(kids) != 2 or kids[1][0] != der.INTEGER:
            raise der.DERError("IssuerAndSerialNumber is a Name and an INTEGER")
        return _name(data, kids[0]), der.decode_integer(der.contents(data, kids[1]))
    except (der.DERError, ValueError) as exc:
        raise SCEPFailure(FailInfo.BAD_REQUEST, f"malformed IssuerAndSerialNumber: {exc}") from None


# ---------------------------------------------------------------- replies

_PRINTABLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")
_MESSAGE_TYPE_CERT_REP = cms.attribute(oids.MESSAGE_TYPE_DER, der.printable("3"))
_STATUS_ATTR = {s: cms.attribute(oids.PKI_STATUS_DER, der.printable(str(int(s)))) for s in PKIStatus}
_FAIL_INFO_ATTR = {i: cms.attribute(oids.FAIL_INFO_DER, der.printable(str(int(i)))) for i in FailInfo}


def _transaction_id_der(request: PKIMessage) -> bytes:
    """The request's transactionID echoed in the encoding it arrived in (RFC 8894 §3.2.1.1)."""
    if request._transaction_id_der:
        return request._transaction_id_der
    tid = request.transaction_id
    return der.printable(tid) if set(tid) <= _PRINTABLE else der.utf8(tid)


def build_cert_rep(*, request: PKIMessage, status: PKIStatus, ra_cert_der: bytes, sign: Signer,
                   sender_nonce: bytes, signing_time: datetime,
                   fail_info: FailInfo | None = None, fail_text: str | None = None,
                   content: bytes | None = None, cek: bytes | None = None, iv: bytes | None = None) -> bytes:
    """CertRep (RFC 8894 §3.3.2) signed by the RA with the request's digest, SUCCESS enveloped to the request signer.

    ``cek``/``iv`` must be at least the reply cipher's key and block sizes (32 and 16 random bytes always do);
    the leading bytes are used.
    """
    digest = request.digest.reply
    attrs = [_MESSAGE_TYPE_CERT_REP, cms.attribute(oids.SENDER_NONCE_DER, der.octet_string(sender_nonce))]
    if request.transaction_id or request._transaction_id_der:
        attrs.append(cms.attribute(oids.TRANSACTION_ID_DER, _transaction_id_der(request)))
    if request.sender_nonce:
        attrs.append(cms.attribute(oids.RECIPIENT_NONCE_DER, der.octet_string(request.sender_nonce)))
    econtent = b""
    if status == PKIStatus.SUCCESS:
        if content is None or cek is None or iv is None:
            raise ValueError("a SUCCESS CertRep needs content, cek and iv")
        cipher = request.reply_cipher
        if len(cek) < cipher.key_size or len(iv) < cipher.block_size:
            raise ValueError(f"{cipher.name} needs {cipher.key_size} key bytes and {cipher.block_size} IV bytes")
        key = request._signer_key or request.signer_cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the request signer key is not RSA")
        scheme = request.key_transport or "pkcs1v15"
        try:
            econtent = cms.build_enveloped_data(
                content, recipient_cert_der=request.signer_cert_der, recipient_key=key, cipher=cipher,
                cek=cek[:cipher.key_size], iv=iv[:cipher.block_size], key_transport=scheme,
                recipient_id_der=request._signer_id_der or None)
        except ValueError:  # the signer key cannot receive the content key (refused by parse_pki_message already)
            status, fail_info = PKIStatus.FAILURE, FailInfo.BAD_ALG
            fail_text = f"the reply cannot be encrypted to the signer's {key.key_size}-bit key with {scheme}"
    attrs.append(_STATUS_ATTR[PKIStatus(status)])  # (signed attributes are put in DER SET order when signed)
    if status == PKIStatus.FAILURE:
        if fail_info is None:
            raise ValueError("a FAILURE CertRep needs a fail_info")
        attrs.append(_FAIL_INFO_ATTR[FailInfo(fail_info)])
        if fail_text:
            attrs.append(cms.attribute(oids.FAIL_INFO_TEXT_DER, der.utf8(fail_text)))
    return cms.build_signed_data(econtent=econtent, signer_cert_der=ra_cert_der, sign=sign, digest=digest,
                                 extra_attrs=attrs, signing_time=signing_time, certs=(ra_cert_der,))


def build_next_ca_cert(next_ca_certs: Sequence[bytes], *, ra_cert_der: bytes, sign: Signer, digest: Digest,
                       signing_time: datetime) -> bytes:
    """GetNextCACert reply: the degenerate bundle of the next CA, signed by the current RA (RFC 8894 §4.7.1)."""
    return cms.build_signed_data(econtent=build_degenerate(next_ca_certs), signer_cert_der=ra_cert_der, sign=sign,
                                 digest=digest.reply, signing_time=signing_time, certs=(ra_cert_der,))


# ---------------------------------------------------------------- HTTP GET transport (RFC 8894 §4.1)

_URLSAFE = str.maketrans("-_", "+/", " \t\r\n")


def decode_get_message(raw: str) -> bytes:
    """The ``message=`` of a PKIOperation GET, decoded leniently (RFC 8894 §4.1, §4.3).

    Accepts the raw or the already-decoded query value: %XX escapes (macOS escapes only '='), '+' turned
    into ' ' by form decoding (Cisco and others send GET), the URL-safe alphabet, line breaks, missing padding.
    """
    s = raw
    for _ in range(2):  # at most double-escaped
        if "%" not in s:
            break
        try:
            s = unquote(s, errors="strict")
        except UnicodeDecodeError:
            raise MalformedMessage("the PKIOperation message is not base64") from None
    s = s.replace(" ", "+").translate(_URLSAFE).rstrip("=")
    if len(s) % 4 == 1 or not s:
        raise MalformedMessage("the PKIOperation message is not base64")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("the PKIOperation message is not base64") from None
