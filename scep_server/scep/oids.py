"""Object identifiers used by SCEP (RFC 8894 §3.2.1, Appendix A), registered with asn1crypto once."""
from __future__ import annotations

from asn1crypto import cms, core

from trustkit import der

# CMS content types (RFC 5652 §4, §5.1, §6.1).
DATA = "1.2.840.113549.1.7.1"
SIGNED_DATA = "1.2.840.113549.1.7.2"
ENVELOPED_DATA = "1.2.840.113549.1.7.3"

# CMS attributes (RFC 5652 §11).
CONTENT_TYPE = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
SIGNING_TIME = "1.2.840.113549.1.9.5"

# SCEP authenticated attributes (RFC 8894 §3.2.1): id-VeriSign 2.16.840.1.113733 .1.9.x
MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
PKI_STATUS = "2.16.840.1.113733.1.9.3"
FAIL_INFO = "2.16.840.1.113733.1.9.4"
SENDER_NONCE = "2.16.840.1.113733.1.9.5"
RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
# id-scep-failInfoText (RFC 8894 §3.2.1.4): id-pkix 24 1, not 24 alone.
FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"

# PKCS#9 challengePassword (RFC 2985 §5.4.1), carried in the CSR (RFC 8894 §2.2).
CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"

# Public-key algorithms (RFC 8017 Appendix C, RFC 4055 §3.1).
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
RSAES_OAEP = "1.2.840.113549.1.1.7"
MGF1 = "1.2.840.113549.1.1.8"
RSASSA_PSS = "1.2.840.113549.1.1.10"

# Encoded forms used when assembling messages.
DATA_DER = der.oid(DATA)
SIGNED_DATA_DER = der.oid(SIGNED_DATA)
ENVELOPED_DATA_DER = der.oid(ENVELOPED_DATA)
CONTENT_TYPE_DER = der.oid(CONTENT_TYPE)
MESSAGE_DIGEST_DER = der.oid(MESSAGE_DIGEST)
SIGNING_TIME_DER = der.oid(SIGNING_TIME)
MESSAGE_TYPE_DER = der.oid(MESSAGE_TYPE)
PKI_STATUS_DER = der.oid(PKI_STATUS)
FAIL_INFO_DER = der.oid(FAIL_INFO)
SENDER_NONCE_DER = der.oid(SENDER_NONCE)
RECIPIENT_NONCE_DER = der.oid(RECIPIENT_NONCE)
TRANSACTION_ID_DER = der.oid(TRANSACTION_ID)
FAIL_INFO_TEXT_DER = der.oid(FAIL_INFO_TEXT)

# asn1crypto names for the SCEP attributes, so cms.CMSAttribute parses them (used for inspection).
ASN1CRYPTO_NAMES = {
    MESSAGE_TYPE: "message_type",
    PKI_STATUS: "pki_status",
    FAIL_INFO: "fail_info",
    SENDER_NONCE: "sender_nonce",
    RECIPIENT_NONCE: "recipient_nonce",
    TRANSACTION_ID: "transaction_id",
    FAIL_INFO_TEXT: "fail_info_text",
}


class SetOfPrintableString(core.SetOf):
    _child_spec = core.PrintableString


class SetOfUTF8String(core.SetOf):
    _child_spec = core.UTF8String


_SPECS = {
    "message_type": SetOfPrintableString,
    "pki_status": SetOfPrintableString,
    "fail_info": SetOfPrintableString,
    "sender_nonce": cms.SetOfOctetString,
    "recipient_nonce": cms.SetOfOctetString,
    "transaction_id": SetOfPrintableString,
    "fail_info_text": SetOfUTF8String,
}


def register() -> None:
    """Teach asn1crypto's CMS attribute parser the SCEP attributes (idempotent)."""
    for dotted, name in ASN1CRYPTO_NAMES.items():
        cms.CMSAttributeType._map.setdefault(dotted, name)
        cms.CMSAttributeType._reverse_map = None  # rebuilt lazily by asn1crypto from _map
        cms.CMSAttribute._oid_specs.setdefault(name, _SPECS[name])


register()
