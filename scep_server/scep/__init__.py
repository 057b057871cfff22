"""SCEP wire codec (RFC 8894): pure functions from bytes to frozen values and back, no I/O.

The names below are loaded from their modules when first used, so that importing one small module of the
codec (e.g. `scep.types` for the failure codes) does not load the whole codec and asn1crypto's CMS.
"""
from __future__ import annotations

import importlib

_HOME = {
    "rsa_padding": "algorithms",
    **dict.fromkeys(("PKIMessage", "build_cert_rep", "build_degenerate", "build_next_ca_cert", "decode_get_message",
                     "decrypt_envelope", "parse_degenerate", "parse_issuer_and_serial", "parse_issuer_and_subject",
                     "parse_pki_message", "RequestContent", "open_request"), "message"),
    **dict.fromkeys(("REQUEST_TYPES", "ContentCipher", "Digest", "FailInfo", "MalformedMessage", "MessageType",
                     "PKIStatus", "SCEPFailure"), "types"),
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
