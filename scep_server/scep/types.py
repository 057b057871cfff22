"""SCEP wire enums and the codec's two typed errors (RFC 8894 §3.2.1)."""
from __future__ import annotations

from enum import Enum, IntEnum
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes

if TYPE_CHECKING:
    from .message import PKIMessage


class MessageType(IntEnum):
    """messageType attribute values (RFC 8894 §3.2.1.2)."""

    CERT_REP = 3
    RENEWAL_REQ = 17
    PKCS_REQ = 19
    CERT_POLL = 20
    GET_CERT = 21
    GET_CRL = 22


REQUEST_TYPES = frozenset({MessageType.RENEWAL_REQ, MessageType.PKCS_REQ, MessageType.CERT_POLL,
                           MessageType.GET_CERT, MessageType.GET_CRL})


class PKIStatus(IntEnum):
    """pkiStatus attribute values (RFC 8894 §3.2.1.3)."""

    SUCCESS = 0
    FAILURE = 2
    PENDING = 3


class FailInfo(IntEnum):
    """failInfo attribute values (RFC 8894 §3.2.1.4)."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4


class ContentCipher(Enum):
    """Content-encryption algorithms by OID (RFC 8894 §3.5.2, RFC 3565 §4.1, RFC 3370 §5.1, §5.2)."""

    AES128_CBC = "2.16.840.1.101.3.4.1.2"
    AES192_CBC = "2.16.840.1.101.3.4.1.22"
    AES256_CBC = "2.16.840.1.101.3.4.1.42"
    DES3_CBC = "1.2.840.113549.3.7"
    DES_CBC = "1.3.14.3.2.7"  # decrypted for legacy clients only, never emitted (RFC 8894 §3.5.2)

    @property
    def oid(self) -> str:
        return self.value

    @property
    def key_size(self) -> int:
        """Key length in bytes."""
        return _KEY_SIZES[self]

    @property
    def block_size(self) -> int:
        """Block (and IV) length in bytes."""
        return 8 if self in (ContentCipher.DES3_CBC, ContentCipher.DES_CBC) else 16

    @property
    def reply(self) -> "ContentCipher":
        """The cipher a reply to this one uses: the same, except single DES is answered with AES-128-CBC."""
        return ContentCipher.AES128_CBC if self is ContentCipher.DES_CBC else self


_KEY_SIZES = {ContentCipher.AES128_CBC: 16, ContentCipher.AES192_CBC: 24, ContentCipher.AES256_CBC: 32,
              ContentCipher.DES3_CBC: 24, ContentCipher.DES_CBC: 8}


class Digest(Enum):
    """Message digests by OID (RFC 8894 §3.5.2; RFC 3370 §2, RFC 5754 §2)."""

    MD5 = "1.2.840.113549.2.5"  # recognised on input only
    SHA1 = "1.3.14.3.2.26"
    SHA256 = "2.16.840.1.101.3.4.2.1"
    SHA512 = "2.16.840.1.101.3.4.2.3"

    @property
    def oid(self) -> str:
        return self.value

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """The matching cryptography hash, e.g. for an RSA signer."""
        return _HASHES[self]()

    @property
    def reply(self) -> "Digest":
        """The digest a reply to this one uses: the same, except MD5 is answered with SHA-256."""
        return Digest.SHA256 if self is Digest.MD5 else self


_HASHES = {Digest.MD5: hashes.MD5, Digest.SHA1: hashes.SHA1, Digest.SHA256: hashes.SHA256, Digest.SHA512: hashes.SHA512}


class MalformedMessage(Exception):
    """Not a signed SCEP message with a signer to answer to: HTTP 400 with ``str(exc)`` as the reason."""


class SCEPFailure(Exception):
    """A SCEP failure answered with a signed CertRep FAILURE (RFC 8894 §3.3.2.2)."""

    def __init__(self, fail_info: FailInfo, text: str, message: "PKIMessage | None" = None):
        super().__init__(f"{fail_info.name}: {text}")
        self.fail_info = fail_info
        self.text = text
        self.message = message

    def with_message(self, message: "PKIMessage") -> "SCEPFailure":
        """This failure, addressed to ``message`` if it had no message yet."""
        if self.message is None:
            self.message = message
        return self
