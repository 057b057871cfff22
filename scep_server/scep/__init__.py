"""SCEP wire codec (RFC 8894): pure functions from bytes to frozen values and back, no I/O."""
from . import oids  # noqa: F401  (registers the SCEP attribute OIDs with asn1crypto)
from .algorithms import rsa_padding
from .message import (PKIMessage, build_cert_rep, build_degenerate, build_next_ca_cert, decode_get_message,
                      decrypt_envelope, parse_degenerate, parse_issuer_and_serial, parse_issuer_and_subject,
                      parse_pki_message)
from .message import RequestContent, open_request
from .types import (REQUEST_TYPES, ContentCipher, Digest, FailInfo, MalformedMessage, MessageType, PKIStatus,
                    SCEPFailure)

__all__ = [
    "PKIMessage", "parse_pki_message", "decrypt_envelope", "parse_issuer_and_subject", "parse_issuer_and_serial",
    "build_cert_rep", "build_degenerate", "parse_degenerate", "build_next_ca_cert", "decode_get_message",
    "rsa_padding", "MessageType", "PKIStatus", "FailInfo", "ContentCipher", "Digest", "MalformedMessage",
    "SCEPFailure", "REQUEST_TYPES", "RequestContent", "open_request",
]
