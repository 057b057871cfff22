"""Revocation checking of certificates from a customer's own CA ("bring your own CA", RFC 5280 §6.3)."""
# CRLs are fetched from the CRL Distribution Points in the background (never on the request path),
# validated (issuer, AKI, signature by a key allowed to sign CRLs, scope, unknown critical extensions,
# freshness, no rollback of CRL Number or thisUpdate), indexed once, and kept as the last good copy; with a
# CheckerState, what the rollback and scope rules need of it is recorded too, so that a restart and every other
# process refuse an older CRL as this one does (CrlChecker.forget is the administrator's way out).
# `check()` answers from that local index: good, revoked, on hold, or unknown with the policy's verdict.
from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Callable, Iterable, Protocol, Sequence
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc
import structlog
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as UnsupportedAlgorithmError
from cryptography.hazmat.primitives import serialization

from trustkit.clock import utcnow

from .config import CheckerSettings, Policy
from .parse import CrlFormatError, ParsedCrl, UnsupportedCrl, der_from_bytes, parse_crl
from .signing import UnsupportedAlgorithm, verify_signature

log = structlog.get_logger("crl.check")

HOLD_CODE = 6 + 1  # index code of certificateHold (RFC 5280 §5.3.1)
REMOVE_FROM_CRL_CODE = 8 + 1
# the longest CRL URL fetched (characters): twice the 8000 octets RFC 9110 §4.1 asks every HTTP party to handle,
# beyond what servers take; a certificate's CDP URI longer than that names no CRL the checker fetches
MAX_URL_LENGTH = 16384
ACCEPT = "application/pkix-crl, application/x-pem-file;q=0.9, */*;q=0.1"


class CheckStatus(str, Enum):
    GOOD = "good"
    REVOKED = "revoked"
    ON_HOLD = "on_hold"  # certificateHold: revoked for now (RFC 5280 §5.3.1), may be released
    UNKNOWN = "unknown"  # no usable CRL: the policy decides


class FailureKind(str, Enum):
    """Why a CRL download was not taken; each kind is its own log event `crl.check.<kind>`."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    UNSUPPORTED = "unsupported"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_SIGNER = "wrong_signer"
    BAD_SIGNATURE = "bad_signature"
    SCOPE_MISMATCH = "scope_mismatch"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    ROLLBACK = "rollback"
    FORBIDDEN_DESTINATION = "forbidden_destination"  # loopback, link-local, private, multicast... (not allowed)
    TOO_MANY_URLS = "too_many_urls"
    STATE_UNAVAILABLE = "state_unavailable"  # the recorded last good CRL could not be read or written


# the refusals an administrator may have to clear when the CA itself went back (restored from a backup) or
# narrowed a URL's scope on purpose: their log event carries the checker's `forget_hint` as `remedy`
NEEDS_FORGET = (FailureKind.ROLLBACK, FailureKind.SCOPE_MISMATCH)


@dataclass(frozen=True)
class AcceptedCrl:
    """What the replay rules need of the last good CRL of one URL: the newest CRL Number and thisUpdate
    taken, its digest (the same CRL is no replay) and the kinds of certificate it covers."""

    number: "int | None"
    this_update: datetime
    sha256: str
    only_user: bool = False
    only_ca: bool = False


class CheckerState(Protocol):
    """Where the checker records the last good CRL of each (CA, issuer key, URL), so that a restart or another
    process refuses an older CRL as this one does. `issuer` is the SHA-256 (hex) of the CA's public key."""

    async def last_accepted(self, ca: str, issuer: str, url: str) -> "AcceptedCrl | None":
        """The CRL recorded for the URL, or None."""

    async def record(self, ca: str, issuer: str, url: str, crl: AcceptedCrl, *, replacing: "str | None") -> bool:
        """Record `crl` if the record is still the one read (its sha256 `replacing`, None: no record); False
        when another process changed it meanwhile (nothing written)."""


def _is_copy(data: bytes, sha256: str) -> bool:
    """Whether downloaded `data` is the CRL whose digest is `sha256` (False when unsure: it is then validated)."""
    try:
        return hashlib.sha256(der_from_bytes(data)).hexdigest() == sha256
    except Exception:  # noqa: BLE001 - bytes that do not even unwrap: the validation says what they are
        return False


class CertificateRefused(ValueError):
    """A CA certificate the checker will not work with; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The answer for one certificate: status, the verdict after policy, and the evidence."""

    status: CheckStatus
    allowed: bool
    reason: str  # not_listed | listed | removed_from_crl | listed_on_stale_crl | stale_crl | no_crl | no_cdp | ...
    ca: "str | None" = None
    crl_url: "str | None" = None
    crl_number: "int | None" = None
    this_update: "datetime | None" = None
    next_update: "datetime | None" = None
    revocation_reason: "int | None" = None
    detail: str = ""


@dataclass(frozen=True)
class RefreshOutcome:
    """What one fetch of one CDP URL did."""

    ca: str
    url: str
    ok: bool
    changed: bool
    failure: "FailureKind | None" = None
    detail: str = ""
    crl_number: "int | None" = None


@dataclass(frozen=True)
class SourceStatus:
    """Health of one (CA, CDP URL): the last good CRL and the last failure."""

    ca: str
    url: str
    fresh: bool
    crl_number: "int | None"
    this_update: "datetime | None"
    next_update: "datetime | None"
    entries: int
    last_success_at: "datetime | None"
    last_failure: "FailureKind | None"
    last_failure_detail: "str | None"
    last_failure_at: "datetime | None"


class _Failure(Exception):
    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class _Snapshot:
    """One validated CRL, indexed, with the results that do not depend on the serial prepared in advance."""

    __slots__ = ("crl", "codes", "sha256", "fresh_until", "number", "this_update", "next_update", "uris",
                 "only_user", "only_ca", "good", "removed", "url", "_listed", "by_code")

    def accepted(self) -> AcceptedCrl:
        return AcceptedCrl(self.number, self.this_update, self.sha256, self.only_user, self.only_ca)

    def __init__(self, ca: str, url: str, crl: ParsedCrl, codes: dict[int, int], sha256: str,
                 fresh_until: datetime) -> None:
        self.crl = crl
        self.codes = codes
        self.sha256 = sha256
        self.url = url
        self.fresh_until = fresh_until.timestamp()
        self.number = crl.crl_number
        self.this_update = crl.this_update
        self.next_update = crl.next_update
        scope = crl.scope
        # a CRL whose IDP names a distribution point covers only certificates whose CDP names it (§5.2.5): the URIs
        # of its fullName, and none when it names the point otherwise (a relative name, a directory name); an IDP
        # without a distribution point covers every certificate of the issuer (within onlyContains...)
        self.uris = frozenset(scope.uris) if scope is not None and scope.has_distribution_point else None
        self.only_user = bool(scope and scope.only_user_certs)
        self.only_ca = bool(scope and scope.only_ca_certs)
        self.good = CheckResult(CheckStatus.GOOD, True, "not_listed", ca, url, self.number, self.this_update,
                                self.next_update)
        self.removed = CheckResult(CheckStatus.GOOD, True, "removed_from_crl", ca, url, self.number,
                                   self.this_update, self.next_update)
        # a listed serial's answer depends only on its reason code: one prepared result per code and staleness
        self._listed = [self._make_listed(ca, code, stale) for stale in (False, True) for code in range(16)]
        # the answer for a listed serial on this (fresh) CRL, by index code; removeFromCRL means not revoked
        self.by_code = [self.removed if code == REMOVE_FROM_CRL_CODE else self._listed[code] for code in range(16)]

    def covers(self, cert_uris: "frozenset[str] | None", is_ca: bool) -> bool:
        """Whether this CRL's scope (§5.2.5) includes a certificate with these CDP URIs (§6.3.3 (b)): a partition's
        CRL is never an answer for a certificate of another partition, nor for a serial asked without its CDP."""
        if self.uris is not None and (cert_uris is None or not (self.uris & cert_uris)):
            return False
        return not ((self.only_user and is_ca) or (self.only_ca and not is_ca))

    def listed(self, ca: str, code: int, stale: bool) -> CheckResult:
        return self._listed[(16 if stale else 0) + (code & 0xF)]

    def _make_listed(self, ca: str, code: int, stale: bool) -> CheckResult:
        reason = code - 1 if code else None
        status = CheckStatus.ON_HOLD if code == HOLD_CODE else CheckStatus.REVOKED
        return CheckResult(status, False, "listed_on_stale_crl" if stale else "listed", ca, self.url, self.number,
                           self.this_update, self.next_update, reason)


class _Source:
    """One CDP URL of one CA: the last good snapshot, HTTP validators, schedule and last failure."""

    def __init__(self, ca: "_Ca", url: str) -> None:
        self.ca = ca
        self.url = url
        self.snapshot: "_Snapshot | None" = None
        self.etag: "str | None" = None
        self.last_modified: "str | None" = None
        self.due = 0.0  # monotonic time of the next fetch
        self.inflight: "asyncio.Future[RefreshOutcome] | None" = None  # the running fetch, awaited by others
        self.last_success_at: "datetime | None" = None
        self.last_failure: "FailureKind | None" = None
        self.last_failure_detail: "str | None" = None
        self.last_failure_at: "datetime | None" = None
        # forgotten by the administrator (CrlChecker.forget): the next valid CRL is taken whatever its age
        self.forgotten = False


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class _Ca:
    def __init__(self, name: str, cert: x509.Certificate, policy: Policy,
                 clock_skew: timedelta = timedelta(0)) -> None:
        self.name = name
        self.cert = cert
        self.subject = cert.subject.public_bytes()
        self.subject_name = cert.subject
        self.public_key = cert.public_key()
        self.issuer_key = hashlib.sha256(_spki(cert)).hexdigest()  # the key of its records in CheckerState
        try:
            self.key_id: "bytes | None" = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            self.key_id = None
        self.policy = policy
        self.sources: dict[str, _Source] = {}
        self.over_cap_logged = False
        self.full: "_Snapshot | None" = None  # the newest installed CRL without an Issuing Distribution Point
        self.unknown = CheckResult(CheckStatus.UNKNOWN, policy is Policy.FAIL_OPEN, "no_crl", name,
                                   detail="no CRL of this CA has been obtained yet")
        # outside its certificate's validity period the CA vouches for nothing, its CRLs neither (§6.1.3 (a)(2));
        # a CA certificate issued moments ago counts from clock_skew earlier (our clock may be a little behind)
        self.valid_from = cert.not_valid_before_utc.timestamp() - clock_skew.total_seconds()
        self.valid_until = cert.not_valid_after_utc.timestamp()
        self.expired = CheckResult(CheckStatus.UNKNOWN, False, "ca_expired", name,
                                   detail=f"the CA certificate of {name} expired at "
                                          f"{cert.not_valid_after_utc.isoformat()}")
        self.not_yet_valid = CheckResult(CheckStatus.UNKNOWN, False, "ca_not_yet_valid", name,
                                         detail=f"the CA certificate of {name} is valid only from "
                                                f"{cert.not_valid_before_utc.isoformat()}")

    def outside_validity(self, now: float) -> "CheckResult | None":
        """The refusal when `now` (a timestamp) is outside the CA certificate's validity period, else None."""
        if now > self.valid_until:
            return self.expired
        if now < self.valid_from:
            return self.not_yet_valid
        return None


class DestinationRefused(OSError):
    """An outbound connection to an address that is not public and not in the allowed networks."""


Networks = "tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]"


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix: a DNS64 name of an IPv4-only host


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to: IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002:AABB:CCDD::/48, which
    a 6to4 relay or route delivers to the IPv4 host) or NAT64 (64:ff9b::a.b.c.d, which the NAT64 gateway
    connects to)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def destination_refused(address: str, allowed: Networks = ()) -> bool:
    """Whether a fetch may not connect to this IP address: anything but a public unicast address, unless
    one of the `allowed` networks holds it. An IPv6 address that leads to an IPv4 host (IPv4-mapped, 6to4,
    NAT64) is judged as that IPv4 address: 2002:7f00:1:: is loopback, 64:ff9b::a00:1 is 10.0.0.1, and a NAT64
    name of a public IPv4 host (an IPv6-only network's DNS64) is fetched."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        ip = _carried_ipv4(ip) or ip
    if any(ip in net for net in allowed):
        return False
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def guarded_socket_factory(allowed: Networks = ()):
    """An aiohttp socket factory that refuses, before connecting, every address `destination_refused`
    names: it sees the address actually connected to, after name resolution and after every redirect."""

    def factory(addr_info) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        if destination_refused(str(sockaddr[0]), allowed):
            raise DestinationRefused(errno.EACCES, f"refused destination {sockaddr[0]} (not a public address)")
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


def _refused_literal(url: str, allowed: Networks) -> "str | None":
    """The host of `url` if it is an IP address that may not be fetched (a name is judged at connect time)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return url
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: judged on each address it resolves to, at connect time
    return host if destination_refused(host, allowed) else None


# what reading a hostile certificate's names and extensions raises besides ValueError: a duplicated extension,
# a general name of a kind the library does not read (x400Address, ediPartyName), a name attribute of a wrong type
UNREADABLE = (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def _load_cert(certificate: "x509.Certificate | bytes") -> x509.Certificate:
    if isinstance(certificate, x509.Certificate):
        return certificate
    if certificate.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(certificate)
    return x509.load_der_x509_certificate(certificate)


def cdp_uris(cert: x509.Certificate) -> "list[str] | None":
    """HTTP(S) fullName URIs of the CRL Distribution Points (§4.2.1.13), of at most MAX_URL_LENGTH characters;
    None without the extension."""
    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    uris: list[str] = []
    for dp in cdp:
        if dp.crl_issuer:  # indirect: another entity issues the CRL; not supported
            continue
        for gn in dp.full_name or ():
            if not isinstance(gn, x509.UniformResourceIdentifier) or len(gn.value) > MAX_URL_LENGTH:
                continue
            try:
                scheme = urlsplit(gn.value).scheme.lower()
            except ValueError:  # e.g. "http://[bad": names no place to fetch from
                continue
            if scheme in ("http", "https"):
                uris.append(gn.value)
    return uris


def _newer(a: "_Snapshot", b: "_Snapshot") -> bool:
    """Whether CRL `a` was issued after `b`: by thisUpdate, then CRL number."""
    return (a.this_update, a.number or 0) > (b.this_update, b.number or 0)


def _caused_by_refusal(exc: BaseException) -> bool:
    seen = 0
    cur: "BaseException | None" = exc
    while cur is not None and seen < 8:
        if isinstance(cur, DestinationRefused) or "refused destination" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


class CrlChecker:
    """CRL status of certificates issued by registered customer CAs, from background-fetched CRLs."""

    def __init__(self, *, settings: "CheckerSettings | None" = None, session: "aiohttp.ClientSession | None" = None,
                 clock: "Callable[[], datetime] | None" = None,
                 on_update: "Callable[[str, str, bytes], None] | None" = None, logger=None,
                 resolver: "aiohttp.abc.AbstractResolver | None" = None, state: "CheckerState | None" = None,
                 forget_hint: "Callable[[str], str] | None" = None) -> None:
        """`state`: where the last good CRL of each URL is recorded (read at each download that brings a CRL
        other than the one held, written when one is taken): an older CRL is then refused after a restart and
        by every process as by the one that took the newer. `forget_hint(ca)`: what an administrator runs to
        clear the record of a CA (:meth:`forget`), told in the rollback and scope_mismatch events."""
        self.settings = settings or CheckerSettings()
        self._state = state
        self._forget_hint = forget_hint
        self._resolver = resolver
        self._session = session
        self._own_session = session is None
        self._clock = clock or utcnow
        self._now_ts: Callable[[], float] = time.time if clock is None else (lambda: clock().timestamp())
        self._on_update = on_update
        self._log = logger or log
        self._cas: dict[str, _Ca] = {}
        self._by_subject: dict[bytes, list[_Ca]] = {}
        self._wake = asyncio.Event()
        self._task: "asyncio.Task | None" = None
        self._running: "set[asyncio.Task]" = set()  # fetches started by the schedule
        self._sem = asyncio.Semaphore(self.settings.max_concurrent_fetches)
        self._allowed = self.settings.allowed_networks()

    # ---- registration

    def add_ca(self, certificate: "x509.Certificate | bytes", *, name: "str | None" = None,
               crl_urls: Sequence[str] = (), policy: "Policy | None" = None, require_cdp: bool = True) -> str:
        """Register a customer CA and the CDP URLs of its CRL; refuses non-CAs, no cRLSign, no CDP (§4.2.1.13)."""
        # Okta requires a CDP in an uploaded CA certificate too; pass require_cdp=False for a self-signed root.
        cert = _load_cert(certificate)
        try:  # a name, extension or key the library cannot read (a hostile certificate): refused, not raised
            ca_name = name or cert.subject.rfc4514_string()
            ca = _Ca(ca_name, cert, policy or self.settings.policy, self.settings.clock_skew)
            is_ca, cdp = _is_ca(cert), cdp_uris(cert)
            try:
                crl_sign = cert.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
            except x509.ExtensionNotFound:
                crl_sign = True
        except (*UNREADABLE, UnsupportedAlgorithmError) as exc:
            raise CertificateRefused("unreadable", f"{name or 'the CA certificate'}: unreadable certificate "
                                                   f"({exc})") from None
        if not is_ca:
            raise CertificateRefused("not_a_ca", f"{ca_name}: basicConstraints cA is not set (RFC 5280 §4.2.1.9)")
        if not crl_sign:
            raise CertificateRefused("no_crl_sign", f"{ca_name}: keyUsage lacks cRLSign, so it cannot sign its "
                                                    f"CRL (RFC 5280 §4.2.1.3, §6.3.3 (f))")
        if require_cdp and cdp is None:
            raise CertificateRefused("no_cdp", f"{ca_name}: the CA certificate has no CRL Distribution Points "
                                               f"extension; CAs without one are refused")
        for url in crl_urls:
            self._check_url(url)
        old = self._cas.pop(ca_name, None)
        if old is not None:
            self._by_subject[old.subject].remove(old)
        if old is not None and _spki(old.cert) == _spki(cert):  # the same CA (a policy change): its CRLs stand
            ca.sources = {u: s for u, s in old.sources.items()}
            ca.full = old.full
            for s in ca.sources.values():
                s.ca = ca
        self._cas[ca_name] = ca
        self._by_subject.setdefault(ca.subject, []).append(ca)
        for url in crl_urls:
            self._watch(ca, url)
        return ca_name

    def remove_ca(self, name: str) -> None:
        ca = self._cas.pop(name, None)
        if ca is not None:
            self._by_subject[ca.subject].remove(ca)

    def forget(self, name: str) -> bool:
        """Take the next valid CRL of every URL of CA `name` whatever its CRL Number, thisUpdate or scope (the
        administrator's way out when the CA went back, e.g. restored from a backup, or narrowed a URL's scope):
        the CRLs held keep answering until then, and every URL is fetched again now. The records of the CA in
        the checker's state are the caller's to delete (every process forgets them at once). False: no such CA."""
        ca = self._cas.get(name)
        if ca is None:
            return False
        for src in ca.sources.values():
            src.forgotten = True
            src.etag = src.last_modified = None  # a 304 would keep the copy held
            src.due = 0.0
        self._wake.set()
        return True

    @staticmethod
    def _check_length(url: str) -> None:
        if len(url) > MAX_URL_LENGTH:
            raise ValueError(f"CRL URL {url[:64]!r}... is {len(url)} characters long; URLs of more than "
                             f"{MAX_URL_LENGTH} characters are not fetched")

    @classmethod
    def _check_url(cls, url: str) -> None:
        cls._check_length(url)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ValueError(f"CRL URL {url!r}: only http and https are fetched")

    def _watch(self, ca: _Ca, url: str) -> "_Source | None":
        """The source of `url`, watched from now on; None past `max_urls_per_ca` URLs of this CA, or for a URL
        longer than MAX_URL_LENGTH (which cdp_uris leaves out, and refresh and install refuse saying why)."""
        src = ca.sources.get(url)
        if src is None:
            if len(url) > MAX_URL_LENGTH:
                return None
            if len(ca.sources) >= self.settings.max_urls_per_ca:
                if not ca.over_cap_logged:
                    ca.over_cap_logged = True
                    self._log.warning("crl.check.too_many_urls", ca=ca.name, url=url,
                                      cap=self.settings.max_urls_per_ca)
                return None
            src = ca.sources[url] = _Source(ca, url)
            self._log.info("crl.check.watch", ca=ca.name, url=url)
            self._wake.set()
        return src

    # ---- answers (local, synchronous)

    def check(self, certificate: "x509.Certificate | bytes", *, verify_issued: bool = True) -> CheckResult:
        """Status of a certificate from the local index of its issuer's CRL (RFC 5280 §6.3.3)."""
        try:
            cert = _load_cert(certificate)
        except (ValueError, x509.InvalidVersion) as exc:
            return CheckResult(CheckStatus.UNKNOWN, False, "bad_certificate", detail=f"unreadable certificate: {exc}")
        try:  # a duplicated or unreadable extension: the certificate is unreadable, not our failure
            ca = self._issuer_of(cert)
            if ca is not None:
                uris = cdp_uris(cert)
        except UNREADABLE as exc:
            return CheckResult(CheckStatus.UNKNOWN, False, "bad_certificate", detail=f"unreadable certificate: {exc}")
        if ca is None:
            return CheckResult(CheckStatus.UNKNOWN, False, "unknown_issuer",
                               detail="the certificate's issuer is not a registered CA")
        if verify_issued:
            try:
                cert.verify_directly_issued_by(ca.cert)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithmError):
                return CheckResult(CheckStatus.UNKNOWN, False, "not_issued_by_ca", ca.name,
                                   detail=f"the certificate is not signed by {ca.name}")
        outside = ca.outside_validity(self._now_ts())
        if outside is not None:
            return outside
        if uris is None:
            return CheckResult(CheckStatus.UNKNOWN, False, "no_cdp", ca.name,
                               detail="the certificate has no CRL Distribution Points extension; "
                                      "certificates without one are refused")
        if not uris:
            return CheckResult(CheckStatus.UNKNOWN, False, "no_http_cdp", ca.name,
                               detail=f"the certificate's CRL Distribution Points name no http(s) URI (of at most "
                                      f"{MAX_URL_LENGTH} characters)")
        sources = [src for src in (self._watch(ca, url) for url in uris) if src is not None]
        return self._answer(ca, cert.serial_number, sources, frozenset(uris), _is_ca(cert))

    def check_serial(self, ca: str, serial: int, *, urls: "Sequence[str] | None" = None,
                     is_ca: bool = False) -> CheckResult:
        """Status of `serial` of CA `ca`: from the CRLs at `urls` (the certificate's CDP), else any full CRL;
        `ca_expired` / `ca_not_yet_valid` (refused) outside the CA certificate's validity period."""
        c = self._cas.get(ca)
        if c is None:
            return CheckResult(CheckStatus.UNKNOWN, False, "unknown_issuer", detail=f"no registered CA {ca!r}")
        now = self._now_ts()
        outside = c.outside_validity(now)
        if outside is not None:
            return outside
        if urls is None:
            snap = c.full
            if snap is not None and now < snap.fresh_until:  # the common case, kept short
                code = snap.codes.get(serial)
                return snap.good if code is None else snap.by_code[code & 0xF]
            return self._answer(c, serial, c.sources.values(), None, is_ca)
        sources = [src for src in (self._watch(c, u) for u in urls) if src is not None]
        return self._answer(c, serial, sources, frozenset(urls), is_ca)

    def _answer(self, ca: _Ca, serial: int, sources: Iterable[_Source], uris: "frozenset[str] | None",
                is_ca: bool) -> CheckResult:
        now = self._now_ts()
        stale = fresh = None
        for src in sources:
            snap = src.snapshot
            if snap is None or not snap.covers(uris, is_ca):
                continue
            # the newest of the CRLs that cover it (fresh first, else stale): a mirror serving an older one (validly
            # signed) does not answer over a newer one held from another URL. Newest by thisUpdate, then number:
            # CRLs without a number, and numbers of different scopes (a partition's, the full CRL's), compare so
            if now < snap.fresh_until:
                if fresh is None or _newer(snap, fresh):
                    fresh = snap
            elif stale is None or _newer(snap, stale):
                stale = snap
        if fresh is not None and stale is not None and _newer(stale, fresh):
            # a newer CRL, past its nextUpdate, that lists it: an older one still fresh (a lagging mirror's) does not
            # vouch it back to good; it is refused under either policy, as when it is the last good CRL
            code = stale.codes.get(serial)
            if code is not None and code & 0xF != REMOVE_FROM_CRL_CODE:
                return stale.listed(ca.name, code, True)
        if fresh is not None:
            code = fresh.codes.get(serial)
            if code is None:
                return fresh.good
            if code & 0xF == REMOVE_FROM_CRL_CODE:
                return fresh.removed
            return fresh.listed(ca.name, code, False)
        if stale is None:
            return ca.unknown
        code = stale.codes.get(serial)
        if code is not None and code & 0xF != REMOVE_FROM_CRL_CODE:
            return stale.listed(ca.name, code, True)  # the last good CRL lists it: refused under either policy
        return CheckResult(CheckStatus.UNKNOWN, ca.policy is Policy.FAIL_OPEN, "stale_crl", ca.name, stale.url,
                           stale.number, stale.this_update, stale.next_update,
                           detail="the last good CRL is past its nextUpdate and no fresh one could be obtained")

    def _issuer_of(self, cert: x509.Certificate) -> "_Ca | None":
        issuer = cert.issuer.public_bytes()
        candidates = self._by_subject.get(issuer)
        if not candidates:  # the same name encoded differently (§7.1 comparison), e.g. PrintableString vs UTF8String
            candidates = [ca for ca in self._cas.values() if self._same_name(issuer, ca.subject_name)]
            if not candidates:
                return None
        if len(candidates) == 1:
            return candidates[0]
        try:  # several registered CAs share the name (key rollover): pick by AKI (§4.2.1.1)
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except x509.ExtensionNotFound:
            aki = None
        for ca in candidates:
            if aki is not None and ca.key_id == aki:
                return ca
        for ca in reversed(candidates):  # no AKI (or none matches): the one whose key signed it
            try:
                cert.verify_directly_issued_by(ca.cert)
                return ca
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithmError):
                continue
        return candidates[-1]

    def status(self) -> list[SourceStatus]:
        """Per (CA, URL): freshness of the last good CRL and the last failure (for readiness and admin pages)."""
        now = self._now_ts()
        out = []
        for ca in self._cas.values():
            for src in ca.sources.values():
                snap = src.snapshot
                out.append(SourceStatus(
                    ca=ca.name, url=src.url, fresh=snap is not None and now < snap.fresh_until,
                    crl_number=snap.number if snap else None, this_update=snap.this_update if snap else None,
                    next_update=snap.next_update if snap else None, entries=len(snap.codes) if snap else 0,
                    last_success_at=src.last_success_at, last_failure=src.last_failure,
                    last_failure_detail=src.last_failure_detail, last_failure_at=src.last_failure_at))
        return out

    # ---- fetching and validating

    async def refresh(self, ca: "str | None" = None, url: "str | None" = None) -> list[RefreshOutcome]:
        """Fetch now every watched URL (of one CA, or one URL of it) and return what happened."""
        # never raises: every problem with a URL or its CRL is an outcome (and a `crl.check.<kind>` event)
        sources = [s for c in self._cas.values() if ca is None or c.name == ca
                   for s in c.sources.values() if url is None or s.url == url]
        if ca is not None and url is not None and not sources and ca in self._cas:
            try:
                self._check_url(url)
            except ValueError as exc:
                return [RefreshOutcome(ca, url, False, False, FailureKind.UNSUPPORTED, str(exc))]
            src = self._watch(self._cas[ca], url)
            if src is None:
                return [RefreshOutcome(ca, url, False, False, FailureKind.TOO_MANY_URLS,
                                       f"more than {self.settings.max_urls_per_ca} CRL URLs for this CA")]
            sources = [src]
        return list(await asyncio.gather(*(self._fetch(s) for s in sources)))

    async def install(self, ca: str, url: str, data: bytes) -> RefreshOutcome:
        """Validate and take a CRL obtained another way (a saved last-good copy, an upload) for `url`."""
        try:
            self._check_length(url)
        except ValueError as exc:
            return RefreshOutcome(ca, url, False, False, FailureKind.UNSUPPORTED, str(exc))
        src = self._watch(self._cas[ca], url)
        if src is None:
            return RefreshOutcome(ca, url, False, False, FailureKind.TOO_MANY_URLS,
                                  f"more than {self.settings.max_urls_per_ca} CRL URLs for this CA")
        try:
            changed = await self._accept(src, data)
        except _Failure as f:
            return self._record_failure(src, f)
        except Exception as exc:  # noqa: BLE001 - whatever the bytes do, the answer is a failure outcome
            return self._record_failure(src, _Failure(FailureKind.MALFORMED, f"{type(exc).__name__}: {exc}"))
        self._record_success(src)
        return RefreshOutcome(ca, url, True, changed, crl_number=src.snapshot.number if src.snapshot else None)

    async def _fetch(self, src: _Source) -> RefreshOutcome:
        """Fetch `src`; a caller that finds a fetch running waits for its outcome (an attestation that asked for
        a CDP's first fetch is judged on it, not on the absence of a CRL)."""
        if src.inflight is not None:
            return await asyncio.shield(src.inflight)
        fut = src.inflight = asyncio.get_running_loop().create_future()
        outcome = RefreshOutcome(src.ca.name, src.url, False, False, detail="the fetch was cancelled")
        try:
            outcome = await self._fetch_once(src)
            return outcome
        finally:
            src.inflight = None
            fut.set_result(outcome)

    async def _fetch_once(self, src: _Source) -> RefreshOutcome:
        try:
            async with self._sem:
                fetched = await self._download(src)
            changed = False
            if fetched is not None:
                data, validators = fetched
                changed = await self._accept(src, data)
                # the validators of a copy now held: those of a refused one would make its next fetch a 304
                src.etag, src.last_modified = validators
            if fetched is None and src.snapshot is not None:
                self._log.info("crl.check.not_modified", ca=src.ca.name, url=src.url, number=src.snapshot.number)
            self._record_success(src)
        except Exception as exc:  # noqa: BLE001 - a fetch ends in an outcome, never in a task exception
            f = exc if isinstance(exc, _Failure) else _Failure(FailureKind.MALFORMED, f"{type(exc).__name__}: {exc}")
            src.due = time.monotonic() + self.settings.retry_interval.total_seconds()
            return self._record_failure(src, f)
        finally:
            self._wake.set()  # the schedule loop recomputes its wait with this source's new due time
        src.due = time.monotonic() + self._refresh_after(src.snapshot)
        return RefreshOutcome(src.ca.name, src.url, True, changed,
                              crl_number=src.snapshot.number if src.snapshot else None)

    def _refresh_after(self, snap: "_Snapshot | None") -> float:
        """Seconds to the next fetch: refresh_interval, or sooner so the copy is renewed half-way to nextUpdate;
        retry_interval once it is past nextUpdate (the CDP still serves it: as after a failure, not every second)."""
        interval = self.settings.refresh_interval.total_seconds()
        if snap is not None and snap.next_update is not None:
            half = (snap.next_update - snap.this_update).total_seconds() / 2
            left = snap.fresh_until - self._now_ts()
            if left <= 0:
                return min(interval, self.settings.retry_interval.total_seconds())
            interval = min(interval, max(half if left > half else left / 2, 1.0))
        return interval

    def _record_success(self, src: _Source) -> None:
        src.last_success_at = self._clock()
        src.last_failure = src.last_failure_detail = src.last_failure_at = None

    def _record_failure(self, src: _Source, f: _Failure) -> RefreshOutcome:
        src.last_failure = f.kind
        src.last_failure_detail = f.detail
        src.last_failure_at = self._clock()
        snap = src.snapshot
        remedy = (self._forget_hint(src.ca.name) if f.kind in NEEDS_FORGET and self._forget_hint is not None
                  else None)
        self._log.warning(f"crl.check.{f.kind.value}", ca=src.ca.name, url=src.url, detail=f.detail,
                          keeping=snap.number if snap else None, remedy=remedy)
        return RefreshOutcome(src.ca.name, src.url, False, False, f.kind, f.detail)

    async def _session_for_fetch(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # every connection goes through the guard: the addresses a name resolves to (each time, so DNS
            # rebinding gains nothing), IP literals and every redirect target; no proxy from the environment
            connector = aiohttp.TCPConnector(socket_factory=guarded_socket_factory(self._allowed),
                                             resolver=self._resolver)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
            self._own_session = True
        return self._session

    async def _download(self, src: _Source) -> "tuple[bytes, tuple[str | None, str | None]] | None":
        """GET the CRL (conditional when we hold one) and its ETag and Last-Modified; None for 304 Not Modified."""
        refused = _refused_literal(src.url, self._allowed)
        if refused is not None:
            raise _Failure(FailureKind.FORBIDDEN_DESTINATION, f"{refused} is not a public address "
                                                              f"(crl.checker.allow_networks)")
        session = await self._session_for_fetch()
        headers = {"Accept": ACCEPT}
        if src.snapshot is not None:
            if src.etag:
                headers["If-None-Match"] = src.etag
            if src.last_modified:
                headers["If-Modified-Since"] = src.last_modified
        cap = self.settings.max_bytes
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout.total_seconds())
        try:
            async with session.get(src.url, headers=headers, timeout=timeout,
                                   max_redirects=self.settings.max_redirects,
                                   allow_redirects=self.settings.max_redirects > 0) as resp:
                if resp.status == 304 and src.snapshot is not None:
                    return None
                if resp.status != 200:
                    raise _Failure(FailureKind.HTTP_ERROR, f"HTTP {resp.status} from {src.url}")
                if resp.content_length is not None and resp.content_length > cap:
                    raise _Failure(FailureKind.TOO_LARGE, f"{resp.content_length} bytes announced, cap {cap}")
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    buf += chunk
                    if len(buf) > cap:
                        raise _Failure(FailureKind.TOO_LARGE, f"more than {cap} bytes")
                return bytes(buf), (resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
        except _Failure:
            raise
        except asyncio.TimeoutError:
            raise _Failure(FailureKind.TIMEOUT, f"no complete answer within {self.settings.timeout}") from None
        except (aiohttp.ClientError, OSError) as exc:
            if _caused_by_refusal(exc):
                raise _Failure(FailureKind.FORBIDDEN_DESTINATION, f"{exc} (crl.checker.allow_networks)") from None
            raise _Failure(FailureKind.UNREACHABLE, f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - e.g. an invalid URL or header: the fetch failed, nothing else
            raise _Failure(FailureKind.UNREACHABLE, f"{type(exc).__name__}: {exc}") from None

    async def _accept(self, src: _Source, data: bytes, tries: int = 3) -> bool:
        """Validate off the event loop, then record and install if it is newer; False when it is the copy we hold."""
        prev = src.snapshot
        forgotten = src.forgotten
        if prev is not None and not forgotten and await asyncio.to_thread(_is_copy, data, prev.sha256):
            if src.snapshot is not prev:  # another fetch installed meanwhile: validate against it
                return await self._accept(src, data, tries)
            return False  # the copy held: no record to read or write (its own stands), none per refresh
        recorded = await self._recorded(src)
        snap = await asyncio.to_thread(self._validate, src.ca, src.url, data, prev,
                                       None if forgotten else prev, recorded)
        if src.snapshot is not prev:  # another fetch installed meanwhile: validate against it again
            return await self._accept(src, data, tries)
        if snap is None:  # the copy held: recorded unless a record stands (none after a forget, or before)
            if prev is not None and recorded is None:
                await self._record(src, prev, None)
            if src.forgotten is forgotten:
                src.forgotten = False
            return False
        if recorded is None or recorded.sha256 != snap.sha256:
            if not await self._record(src, snap, recorded):  # another process recorded one meanwhile
                if tries <= 1:
                    raise _Failure(FailureKind.STATE_UNAVAILABLE, "the recorded last good CRL kept changing")
                return await self._accept(src, data, tries - 1)
            if src.snapshot is not prev:
                return await self._accept(src, data, tries)
        if src.forgotten is forgotten:
            src.forgotten = False
        src.snapshot = snap
        src.ca.full = max((s.snapshot for s in src.ca.sources.values()
                           if s.snapshot is not None and s.snapshot.crl.scope is None),
                          key=lambda sn: (sn.this_update, sn.number or 0), default=None)  # as _newer
        self._log.info("crl.check.updated", ca=src.ca.name, url=src.url, number=snap.number, entries=len(snap.codes),
                       this_update=snap.this_update.isoformat(),
                       next_update=snap.next_update.isoformat() if snap.next_update else None)
        if self._on_update is not None:
            self._on_update(src.ca.name, src.url, snap.crl.der)
        return True

    async def _recorded(self, src: _Source) -> "AcceptedCrl | None":
        if self._state is None:
            return None
        try:
            return await self._state.last_accepted(src.ca.name, src.ca.issuer_key, src.url)
        except Exception as exc:  # noqa: BLE001 - unknown floor: take nothing (the copy held stands), retry later
            raise _Failure(FailureKind.STATE_UNAVAILABLE, f"reading the last good CRL recorded: "
                                                          f"{type(exc).__name__}: {exc}") from None

    async def _record(self, src: _Source, snap: _Snapshot, recorded: "AcceptedCrl | None") -> bool:
        if self._state is None:
            return True
        try:
            return await self._state.record(src.ca.name, src.ca.issuer_key, src.url, snap.accepted(),
                                            replacing=None if recorded is None else recorded.sha256)
        except Exception as exc:  # noqa: BLE001 - a CRL taken without its record would be replayable after a restart
            raise _Failure(FailureKind.STATE_UNAVAILABLE, f"recording the last good CRL: "
                                                          f"{type(exc).__name__}: {exc}") from None

    @staticmethod
    def _narrower(crl: ParsedCrl, last: "_Snapshot | AcceptedCrl", whose: str) -> None:
        """Refuse a CRL covering fewer kinds of certificate than the last good one from its URL (`whose`)."""
        scope = crl.scope
        if scope is not None and ((scope.only_ca_certs and not last.only_ca)
                                  or (scope.only_user_certs and not last.only_user)):
            # another CRL of the CA (its ARL) in place of this URL's: the certificates the last good one covers
            # would have no CRL here, and a serial it lists would no longer be refused under fail-open
            raise _Failure(FailureKind.SCOPE_MISMATCH, "the CRL covers fewer kinds of certificate (onlyContains"
                                                       f"UserCerts, onlyContainsCACerts) than the last good one "
                                                       f"from this URL{whose} (§5.2.5)")

    @staticmethod
    def _older(crl: ParsedCrl, last: "_Snapshot | AcceptedCrl", whose: str) -> None:
        """Refuse a CRL older than the last good one from its URL (`whose`), or another under its CRL Number."""
        if crl.crl_number is not None and last.number is not None and crl.crl_number <= last.number:
            what = "goes backwards" if crl.crl_number < last.number else "is reused for different content"
            raise _Failure(FailureKind.ROLLBACK, f"CRL Number {crl.crl_number} {what} "
                                                 f"(last good {last.number}{whose})")
        if crl.this_update < last.this_update:
            raise _Failure(FailureKind.ROLLBACK, f"thisUpdate {crl.this_update.isoformat()} is older than "
                                                 f"the last good CRL's {last.this_update.isoformat()}{whose}")

    def _validate(self, ca: _Ca, url: str, data: bytes, prev: "_Snapshot | None", floor: "_Snapshot | None" = None,
                  recorded: "AcceptedCrl | None" = None) -> "_Snapshot | None":
        """RFC 5280 §6.3.3 checks of a downloaded CRL, then the index (worker thread). None: it is `prev`, the
        copy held. No rollback or narrower scope than `floor` (the copy held, unless forgotten) and `recorded`
        (the last good CRL recorded for the URL, by any process: the same CRL is no replay)."""
        try:
            crl = parse_crl(der_from_bytes(data))
        except CrlFormatError as exc:
            raise _Failure(FailureKind.MALFORMED, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - hostile bytes: any parser fault is a malformed CRL
            raise _Failure(FailureKind.MALFORMED, f"{type(exc).__name__}: {exc}") from None
        digest = hashlib.sha256(crl.der).hexdigest()
        if prev is not None and digest == prev.sha256:
            return None
        if crl.delta_base is not None:
            raise _Failure(FailureKind.UNSUPPORTED, "a delta CRL (§5.2.4); only complete CRLs are used")
        if crl.unknown_critical:
            raise _Failure(FailureKind.UNSUPPORTED, f"unknown critical extension(s) {', '.join(crl.unknown_critical)}")
        if crl.issuer != ca.subject and not self._same_name(crl.issuer, ca.subject_name):
            raise _Failure(FailureKind.WRONG_ISSUER, "the CRL issuer is not the CA's subject (§6.3.3 (b))")
        if crl.authority_key_id is not None and ca.key_id is not None and crl.authority_key_id != ca.key_id:
            raise _Failure(FailureKind.WRONG_SIGNER, "the CRL's Authority Key Identifier is not the CA's key "
                                                     "identifier (§5.2.1)")
        if crl.tbs_signature_algorithm != crl.signature_algorithm:
            raise _Failure(FailureKind.MALFORMED, "signature field differs from signatureAlgorithm (§5.1.1.2)")
        try:
            ok = verify_signature(ca.public_key, crl.signature_algorithm, crl.tbs, crl.signature)
        except UnsupportedAlgorithm as exc:
            raise _Failure(FailureKind.UNSUPPORTED, str(exc)) from None
        if not ok:
            raise _Failure(FailureKind.BAD_SIGNATURE, "the signature does not verify with the CA's key (§6.3.3 (g))")
        scope = crl.scope
        if scope is not None:
            if scope.indirect or scope.only_attribute_certs or scope.only_some_reasons:
                raise _Failure(FailureKind.UNSUPPORTED, "indirect, attribute-certificate or reason-partitioned CRL")
            if scope.has_distribution_point and url not in scope.uris:
                named = ", ".join(scope.uris) or "a distribution point without a URI"
                raise _Failure(FailureKind.SCOPE_MISMATCH, f"the Issuing Distribution Point names {named}, "
                                                           f"not {url} (§5.2.5)")
        lasts = [(last, whose) for last, whose in ((floor, ""), (recorded, ", recorded"))
                 if last is not None and not (whose and last.sha256 == digest)]  # the CRL recorded is no replay
        for last, whose in lasts:
            self._narrower(crl, last, whose)
        now = self._clock()
        if crl.this_update > now + self.settings.clock_skew:
            raise _Failure(FailureKind.NOT_YET_VALID, f"thisUpdate {crl.this_update.isoformat()} is in the future")
        if crl.next_update is not None and crl.next_update <= now:
            raise _Failure(FailureKind.EXPIRED, f"nextUpdate {crl.next_update.isoformat()} has passed")
        for last, whose in lasts:
            self._older(crl, last, whose)
        try:
            codes = crl.index(offsets=False).codes
        except UnsupportedCrl as exc:
            raise _Failure(FailureKind.UNSUPPORTED, str(exc)) from None
        except CrlFormatError as exc:
            raise _Failure(FailureKind.MALFORMED, str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            raise _Failure(FailureKind.MALFORMED, f"{type(exc).__name__}: {exc}") from None
        fresh_until = crl.next_update or (crl.this_update + self.settings.missing_next_update_validity)
        return _Snapshot(ca.name, url, crl, codes, digest, fresh_until)

    @staticmethod
    def _same_name(issuer_der: bytes, subject: x509.Name) -> bool:
        """Name comparison beyond byte equality (RFC 5280 §7.1), as cryptography compares attributes."""
        try:
            a = asn1_x509.Name.load(issuer_der)
            b = asn1_x509.Name.load(subject.public_bytes())
            return a == b
        except Exception:  # noqa: BLE001 - an unreadable name is simply not equal
            return False

    # ---- background schedule

    async def start(self) -> None:
        """Fetch every watched URL now and keep them fresh in the background (unsupervised: an application
        runs :meth:`run` as a job of its own instead, restarted if it raises)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="crl-checker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for fetch in list(self._running):
            fetch.cancel()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "CrlChecker":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def run_round(self) -> float:
        """One round of the schedule: start a fetch of every watched URL that is due (each ends in an outcome,
        never in an exception); returns the seconds until the next one is due."""
        now = time.monotonic()
        soonest = now + 3600.0
        for ca in list(self._cas.values()):
            for src in list(ca.sources.values()):
                if src.inflight is not None:
                    continue
                if src.due <= now:
                    src.due = now + self.settings.timeout.total_seconds() + 1  # until the fetch sets it
                    task = asyncio.create_task(self._fetch(src))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                else:
                    soonest = min(soonest, src.due)
        return max(soonest - time.monotonic(), 0.05)

    async def run(self) -> None:
        """The schedule: a round, then a wait until the next URL is due or the watched set changes, forever.
        What a round raises ends the run (the caller logs it and runs it again); cancelling it cancels the
        fetches it started."""
        try:
            while True:
                wait = self.run_round()
                self._wake.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            for task in list(self._running):
                task.cancel()
            raise
