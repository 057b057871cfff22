"""Checks before publishing: the RFC 5280 §5 profile points that matter, signature, entries vs source."""
from __future__ import annotations

from datetime import datetime
from typing import Sequence

from trustkit.der import utc_seconds

from .build import Entry, Issuer, Scope
from .parse import CrlFormatError, ParsedCrl, parse_crl
from .signing import UnsupportedAlgorithm, verify_signature

MAX_REPORTED = 5


class SelfCheckError(Exception):
    """The CRL about to be published is wrong; `problems` says how."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def check_crl(der: bytes, *, issuer: Issuer, number: int, this_update: datetime, next_update: datetime,
              entries: Sequence[Entry], previous_number: "int | None" = None,
              scope: "Scope | None" = None) -> ParsedCrl:
    """Parse `der` and verify it is the CRL we meant to sign; raise SelfCheckError listing every problem."""
    try:
        crl = parse_crl(der)
    except CrlFormatError as exc:
        raise SelfCheckError([f"does not parse: {exc}"]) from None
    problems: list[str] = []
    if crl.version != 2:
        problems.append("not a v2 CRL (§5.1.2.1)")
    if crl.tbs_signature_algorithm != crl.signature_algorithm:
        problems.append("signature field differs from signatureAlgorithm (§5.1.1.2)")
    if crl.issuer != issuer.name:
        problems.append("issuer is not byte-identical to the CA subject (§5.1.2.3)")
    if crl.authority_key_id != issuer.key_id:
        problems.append("Authority Key Identifier missing or not the CA's key identifier (§5.2.1)")
    if crl.crl_number != number:
        problems.append(f"CRL Number is {crl.crl_number}, expected {number} (§5.2.3)")
    if previous_number is not None and number <= previous_number:
        problems.append(f"CRL Number {number} does not exceed the last published {previous_number} (§5.2.3)")
    if crl.this_update != utc_seconds(this_update):
        problems.append("thisUpdate differs from the one requested")
    if crl.next_update is None:
        problems.append("nextUpdate missing (§5.1.2.5)")
    elif crl.next_update != utc_seconds(next_update) or crl.next_update <= crl.this_update:
        problems.append("nextUpdate is not the requested time after thisUpdate (§5.1.2.5)")
    if crl.delta_base is not None:
        problems.append("a complete CRL carries a Delta CRL Indicator (§5.2.4)")
    if crl.unknown_critical:
        problems.append(f"unknown critical extensions {', '.join(crl.unknown_critical)}")
    if scope is None and crl.scope is not None:
        problems.append("Issuing Distribution Point present on a full CRL")
    if scope is not None:
        ext = crl.extension("2.5.29.28")
        if crl.scope is None or ext is None or not ext.critical or crl.scope.uris != tuple(scope.uris):
            problems.append("critical Issuing Distribution Point missing or not the partition's URI (§5.2.5)")
    if entries and not crl.has_entries:
        problems.append("revokedCertificates missing")
    if not entries and crl.has_entries:
        problems.append("revokedCertificates present but should be absent (§5.1.2.6)")
    if issuer.public_key is None:
        problems.append("no issuer public key to verify the signature with")
    else:
        try:
            if not verify_signature(issuer.public_key, crl.signature_algorithm, crl.tbs, crl.signature):
                problems.append("signature does not verify with the CA public key")
        except UnsupportedAlgorithm as exc:
            problems.append(f"signature cannot be verified: {exc}")
    problems += _entry_problems(crl, entries)
    if problems:
        raise SelfCheckError(problems)
    return crl


def _entry_problems(crl: ParsedCrl, entries: Sequence[Entry]) -> list[str]:
    """Every source entry is listed once with its reasonCode, and nothing else is listed (§5.1.2.6, §5.3.1)."""
    try:
        codes = crl.index(offsets=False).codes
    except CrlFormatError as exc:
        return [f"revokedCertificates unreadable: {exc}"]
    problems: list[str] = []
    if len(codes) != len(entries):
        problems.append(f"{len(codes)} entries listed, the source has {len(entries)} (duplicates in the source?)")
    get = codes.get
    for serial, _at, reason, _inv in entries:
        code = get(serial)
        if code is None:
            problems.append(f"serial {serial:x} is missing")
        elif code & 0xF != (0 if not reason else int(reason) + 1):
            problems.append(f"serial {serial:x} has the wrong reasonCode")
        else:
            continue
        if len(problems) >= MAX_REPORTED:
            break
    return problems
