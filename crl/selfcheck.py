"""Checks before publishing: the RFC 5280 §5 profile points that matter, signature, entries vs source."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping, Sequence

from trustkit.der import utc_seconds

from .build import Entry, Issuer, Scope
from .parse import CrlFormatError, ParsedCrl, parse_crl
from .signing import UnsupportedAlgorithm, verify_signature

MAX_REPORTED = 5


@dataclass(frozen=True)
class Patched:
    """What a CRL re-signed from its predecessor (crl.build.patch_crl) must list: `count` entries in all, and each
    changed serial with its entry (listed with that reason) or None (not listed)."""

    count: int
    changed: Mapping[int, "Entry | None"]


def expected_code(reason: "int | None") -> int:
    """The index code (crl.parse.index_entries) of an entry written with `reason`: none for 0 or None."""
    return 0 if not reason else int(reason) + 1


class SelfCheckError(Exception):
    """The CRL about to be published is wrong; `problems` says how."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def check_crl(der: bytes, *, issuer: Issuer, number: int, this_update: datetime, next_update: datetime,
              entries: "Sequence[Entry] | Patched", previous_number: "int | None" = None,
              scope: "Scope | None" = None) -> ParsedCrl:
    """Parse `der` and verify it is the CRL we meant to sign; raise SelfCheckError listing every problem.

    `entries`: what the CRL must list, every entry (a full build) or `Patched` (a re-sign from the previous CRL)."""
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
    count = entries.count if isinstance(entries, Patched) else len(entries)
    if count and not crl.has_entries:
        problems.append("revokedCertificates missing")
    if not count and crl.has_entries:
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


def _entry_problems(crl: ParsedCrl, entries: "Sequence[Entry] | Patched") -> list[str]:
    """Every source entry is listed once with its reasonCode, and nothing else is listed (§5.1.2.6, §5.3.1); for a
    patched CRL: the count, every changed serial as it must be, and the whole list readable."""
    try:
        codes = crl.index(offsets=False).codes
    except CrlFormatError as exc:
        return [f"revokedCertificates unreadable: {exc}"]
    problems: list[str] = []
    count = entries.count if isinstance(entries, Patched) else len(entries)
    if len(codes) != count:
        problems.append(f"{len(codes)} entries listed, the source has {count} (duplicates in the source?)")
    get = codes.get
    if isinstance(entries, Patched):
        for serial, entry in entries.changed.items():
            if entry is None and serial in codes:
                problems.append(f"serial {serial:x} is listed but should not be")
                if len(problems) >= MAX_REPORTED:
                    break
        entries = [e for e in entries.changed.values() if e is not None]
    for serial, _at, reason, _inv in entries:
        code = get(serial)
        if code is None:
            problems.append(f"serial {serial:x} is missing")
        elif code & 0xF != expected_code(reason):
            problems.append(f"serial {serial:x} has the wrong reasonCode")
        else:
            continue
        if len(problems) >= MAX_REPORTED:
            break
    return problems
