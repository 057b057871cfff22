"""Management attestation: a single-use server nonce, signed by the device with its client certificate's key.

Signed bytes (UTF-8, no trailing newline)::

    device-trust-attestation-v1\n<nonce>\n<device id>

where ``<nonce>`` is the nonce string exactly as `POST /api/v1/attestation/challenge` returned it.
Algorithms: ``rsa-pkcs1v15-sha256|384|512``, ``rsa-pss-sha256|384|512`` (MGF1 with the same hash,
any salt length) and ``ecdsa-sha256|384|512`` (DER-encoded signature).

Order of the checks (the first failing one gives the reason): request shape, certificate readable,
signature, nonce (unknown / expired / reused), device known, issuer trusted, certificate known,
certificate eligible (issued by a profile marked ``device_trust``, or by a registered external CA as a
device's client certificate: see `_not_eligible`),
binding (retired, or bound to another device), device state, validity period, certificate status
(our inventory, or the external CA's CRL), then, for a certificate not bound yet, the evidence that it
belongs to this device, and the binding compare-and-set.

Binding an unbound certificate to a device (the first successful attestation) needs evidence when the
device already has a current certificate: the new certificate renews it (the renewal lineage recorded
at issuance, `certificates.renewal_of`, followed back a few generations), or it carries this device's
id named at enrolment by a trusted source (`certificates.enrolled_device_id`: a one-time challenge's
expectations, Intune, or an administrator's pre-registration). After `device remove-cert` the device
has no current certificate and the next eligible one binds. A certificate enrolled for another device,
or renewing a certificate bound to another device, never binds here. A refusal leaves the bound
certificate untouched and records a security event.

A binding is looked up by the certificate's issuer and serial (`_lookup_key`) and by the SHA-256 of its DER,
and the certificate presented is the bound one only when its DER or its TBSCertificate is the one bound
(`_same_certificate`): an ECDSA signature is malleable, so a second encoding of a certificate (same
TBSCertificate, a valid signature of its CA) is that certificate, bound where it is bound; but an issuer is
known by a registration name only (a customer CA removed and registered again under its name may be another CA),
so a certificate of the same name and serial with another TBSCertificate is another certificate, judged as such
and never bound in its place. A binding made before its TBSCertificate's digest was recorded (binding_0008) is
the certificate of its fingerprint only. One of ours is bound under the fingerprint of the DER we issued, and
another encoding of it must carry the TBSCertificate our inventory holds.

Nonces are stateless (`nonces.py`: an HMAC over device id, expiry and 128 random bits, under a key
every process reads from the database), so issuing one writes nothing and an unknown, other-device or
expired nonce is refused without the database. A verification then costs one signature check and a
share of one write transaction: concurrent verifications are group-committed (`trustkit/batching.py`),
and a batch spends its nonces with one INSERT (the primary key lets one use of a nonce commit, across
processes), reads device, binding and inventory rows of every request in one indexed query inside the
same transaction (so a status change committed before it is always seen), and writes only for a
first bind, a first use or a security event. A first bind on PostgreSQL (read committed) also holds the
device's row until the commit: a device change (deactivate, delete) committed after the lookup makes the
request be judged again, and one made after the bind waits for it and finds the certificate to hold or revoke.
Nobody is answered before that transaction committed; if it fails, its requests are run again one by one.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import hashlib
import time
from collections import OrderedDict, namedtuple
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Callable

import sqlalchemy as sa
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crl.check import UNREADABLE, CheckResult, CheckStatus, cdp_uris

from .. import metrics
from ..ca import inventory
from ..ca.inventory import Reason
from ..ca.revocation import PERMANENT_REASON, change_status
from ..ca.status import CHANGEABLE, CertStatus, EventKind
from trustkit.batching import GroupCommit
from trustkit.clock import Clock, aware, utcnow
from trustkit.db import on_sqlite_thread, writer
from ..store.events import record_event
from ..profiles import ProfileSettings
from ..store.tables import certificates, profiles
from .devices import DeviceStatus, retire
from .external import ExternalCas
from .nonces import NonceKey, NonceState, decode as decode_nonce, nonce_hash, purge_spent
from .tables import attestation_spent_nonces, device_certs, devices

log = structlog.get_logger("attestation")

SIGNED_PREFIX = b"device-trust-attestation-v1\n"
# CRL checker reasons of a customer CA outside its certificate's validity period: the issuer is not trusted
_CA_OUTSIDE = ("ca_expired", "ca_not_yet_valid")


def signed_bytes(nonce: str, device_id: str) -> bytes:
    """The exact bytes a device signs."""
    return SIGNED_PREFIX + nonce.encode() + b"\n" + device_id.encode()


class Verdict(str, Enum):
    """Stable reason codes of `POST /api/v1/attestation/verify`."""

    MANAGED = "managed"
    BAD_REQUEST = "bad_request"
    CERTIFICATE_MALFORMED = "certificate_malformed"
    ALGORITHM_UNSUPPORTED = "algorithm_unsupported"
    SIGNATURE_INVALID = "signature_invalid"
    NONCE_UNKNOWN = "nonce_unknown"
    NONCE_EXPIRED = "nonce_expired"
    NONCE_REUSED = "nonce_reused"
    DEVICE_UNKNOWN = "device_unknown"
    ISSUER_NOT_TRUSTED = "issuer_not_trusted"
    CERTIFICATE_UNKNOWN = "certificate_unknown"
    CERTIFICATE_NO_CDP = "certificate_no_cdp"
    CERTIFICATE_RETIRED = "certificate_retired"
    BOUND_TO_OTHER_DEVICE = "bound_to_other_device"
    CERTIFICATE_NOT_ELIGIBLE = "certificate_not_eligible"
    DEVICE_BOUND_TO_OTHER_CERTIFICATE = "device_bound_to_other_certificate"
    CERTIFICATE_OF_OTHER_DEVICE = "certificate_of_other_device"
    DEVICE_SUSPENDED = "device_suspended"
    DEVICE_DEACTIVATED = "device_deactivated"
    DEVICE_DELETED = "device_deleted"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_ON_HOLD = "certificate_on_hold"
    CRL_UNAVAILABLE = "crl_unavailable"
    CONFLICT = "conflict"


ALGORITHMS: dict[str, tuple[str, hashes.HashAlgorithm]] = {}
for _h in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
    ALGORITHMS[f"rsa-pkcs1v15-{_h.name}"] = ("pkcs1", _h)
    ALGORITHMS[f"rsa-pss-{_h.name}"] = ("pss", _h)
    ALGORITHMS[f"ecdsa-{_h.name}"] = ("ecdsa", _h)


@dataclass
class Result:
    managed: bool
    reason: Verdict
    detail: str = ""
    device_id: str | None = None
    device_status: str | None = None
    certificate: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"managed": self.managed, "reason": self.reason.value, "detail": self.detail,
               "device_id": self.device_id, "device_status": self.device_status, "certificate": self.certificate}
        out.update(self.extra)
        return out


def fail(reason: Verdict, detail: str, **kw) -> Result:
    return Result(False, reason, detail, **kw)


def _stored_fp(info: "_Cert", row) -> str:
    """The fingerprint a certificate is bound under: for ours, the inventory's (the DER this server issued),
    whatever encoding of it was presented; for an external CA's, the DER presented first."""
    return row.cert_fp if info.kind == "ours" and row.cert_fp else info.fp


class _Cert:
    """A parsed client certificate and what can be known about it once (cached per process)."""

    __slots__ = ("der", "fp", "tbs", "cert", "key", "serial", "not_before", "not_after", "kind", "ca", "cdp",
                 "summary", "cost", "generation")

    def __init__(self, der: bytes, fp: str, cert: x509.Certificate):
        self.der = der
        self.fp = fp
        self.tbs = hashlib.sha256(cert.tbs_certificate_bytes).hexdigest()  # the same in every encoding of it
        self.cert = cert
        self.key = cert.public_key()
        self.serial = inventory.serial_hex(cert.serial_number)
        self.not_before = cert.not_valid_before_utc
        self.not_after = cert.not_valid_after_utc
        self.kind: str | None = None  # "ours" | "external" once the issuer is established
        self.ca: str | None = None
        self.generation = -1  # of the external CAs an external issuer was established among
        self.cdp: list[str] = []
        self.summary = {"serial": self.serial, "fingerprint_sha256": fp, "subject": cert.subject.rfc4514_string(),
                        "issuer": cert.issuer.rfc4514_string(), "not_after": self.not_after.isoformat()}
        # bytes held for it in the cache: the DER (here and inside the parsed object), its texts, a margin
        self.cost = 2 * len(der) + sum(len(v) for v in self.summary.values()) + 1024


def decode_certificate(text: str) -> bytes:
    """PEM text or base64 DER -> DER bytes (ValueError when neither)."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        body = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
        return base64.b64decode(body, validate=False)
    return b64decode(text)


def b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional."""
    t = text.strip().replace("-", "+").replace("_", "/")
    t += "=" * (-len(t) % 4)
    try:
        return base64.b64decode(t, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


_current = device_certs.alias("cur")  # the device's current certificate
_LOOKUP_COLUMNS = (devices.c.status.label("device_status"), device_certs.c.device_id.label("bound_device"),
                   device_certs.c.state.label("binding_state"), device_certs.c.retired_reason,
                   certificates.c.status.label("cert_status"), certificates.c.revocation_reason,
                   certificates.c.first_used_at, certificates.c.ca.label("cert_ca"),
                   certificates.c.profile.label("cert_profile"), certificates.c.renewal_of,
                   certificates.c.enrolled_device_id, certificates.c.issued_at.label("cert_issued_at"),
                   certificates.c.unused_since, _current.c.fingerprint_sha256.label("current_fp"),
                   _current.c.serial.label("current_serial"), _current.c.external.label("current_external"),
                   device_certs.c.fingerprint_sha256.label("bound_fp"),
                   certificates.c.fingerprint_sha256.label("cert_fp"),
                   device_certs.c.tbs_sha256.label("bound_tbs"))
# the binding's columns, all NULL when the binding a lookup found is of another certificate (`_resolve`)
_BINDING_COLUMNS = ("bound_device", "binding_state", "retired_reason", "bound_fp", "bound_tbs")


def _lookup_key(device_id: str, info: "_Cert") -> tuple[str, str | None, str, str | None, str, str]:
    """What a verification's rows are looked up by: the device id, the certificate's issuer (our CA's or the
    registered external CA's name) and serial, the serial again for our inventory when the CA is ours, and the
    fingerprint of the DER presented (a binding recorded under an earlier registration name of its CA); last,
    the SHA-256 of its TBSCertificate, which tells whether the binding found is of this certificate
    (`_same_certificate`).

    A certificate is identified by its issuer and serial (RFC 5280 §4.1.2.2, as its CRL identifies it), never by
    the digest of its DER: an ECDSA signature is malleable (s and n - s both verify), so anyone holding a
    certificate signed with ECDSA can make a second encoding of it, with the same TBSCertificate and a valid
    signature of the CA, but another SHA-256 fingerprint."""
    return device_id, info.ca, info.serial, info.serial if info.kind == "ours" else None, info.fp, info.tbs


def _same_certificate(key: tuple, row) -> bool:
    """Whether the binding of a lookup's row is the certificate presented (`key`: its `_lookup_key`): the same
    DER, or the same TBSCertificate (another encoding of its signature), or, for one of ours, the certificate the
    inventory holds under its serial (whose TBSCertificate `_judge` compares with the one presented). A CA's name
    and serial alone never make two certificates one: a customer CA is known by a registration name, which a
    removal frees for another CA. A row without a binding has nothing to compare."""
    if row.bound_fp is None:
        return True
    _, _, _, ours, fp, tbs = key
    return (row.bound_fp == fp or (row.bound_tbs is not None and row.bound_tbs == tbs)
            or (ours is not None and row.cert_fp is not None and row.bound_fp == row.cert_fp))


def _rank(key: tuple, row) -> int:
    """Which of the rows a lookup found for `key` is used (the lowest): the binding of the DER presented, then
    one of the same certificate, then another certificate's (a binding of the same fingerprint under an earlier
    name of its CA, and one of the same (ca, serial), can both be found)."""
    if row.bound_fp is not None and row.bound_fp == key[4]:
        return 0
    return 1 if _same_certificate(key, row) else 2


def _keep(found: dict, key: tuple, row) -> None:
    """Keep `row` for `key` in `found` when it ranks before the one kept (`_rank`): the same row whatever the
    order the rows came in."""
    row = _Row(*row)
    kept = found.get(key)
    if kept is None or _rank(key, row) < _rank(key, kept):
        found[key] = row


def _resolve(key: tuple, row):
    """The row a verification is judged by: a binding of another certificate is no binding of this one."""
    if row is None or _same_certificate(key, row):
        return row
    return row._replace(**{name: None for name in _BINDING_COLUMNS})


@functools.lru_cache(maxsize=256)
def _lookup_query(n: int):
    """Device, binding and inventory row of `n` (device id ``d{i}``, CA ``c{i}``, serial ``s{i}``, serial in
    our inventory ``o{i}``: NULL for an external CA's certificate, fingerprint ``f{i}``) keys (`_lookup_key`):
    one indexed select per key, joined with UNION ALL into one statement (built once per size; a key without a
    row is an unknown device). The binding is found by (ca, serial) (uq_device_certs_ca_serial) or by the
    fingerprint of the DER presented (the primary key), the inventory row by serial."""
    selects = []
    for i in range(n):
        ca, serial = sa.bindparam(f"c{i}", type_=sa.String), sa.bindparam(f"s{i}", type_=sa.String)
        ours, fp = sa.bindparam(f"o{i}", type_=sa.String), sa.bindparam(f"f{i}", type_=sa.String)
        selects.append(
            sa.select(sa.literal(i, sa.Integer).label("i"), *_LOOKUP_COLUMNS)
            .select_from(devices.outerjoin(device_certs, sa.or_(
                sa.and_(device_certs.c.ca == ca, device_certs.c.serial == serial),
                device_certs.c.fingerprint_sha256 == fp))
                         .outerjoin(certificates, certificates.c.serial == ours)
                         .outerjoin(_current, sa.and_(_current.c.device_id == devices.c.id,
                                                      _current.c.current.is_(True))))
            .where(devices.c.id == sa.bindparam(f"d{i}", type_=sa.String)))
    return selects[0] if n == 1 else sa.union_all(*selects)


def _lookup_params(i: int, key: tuple) -> dict:
    """The parameters of the `i`-th select of `_lookup_query` for a `_lookup_key`."""
    device_id, ca, serial, ours, fp, _ = key
    return {f"d{i}": device_id, f"c{i}": ca, f"s{i}": serial, f"o{i}": ours, f"f{i}": fp}


_Row = namedtuple("_Row", ["i"] + [c.name for c in _LOOKUP_COLUMNS])


@functools.lru_cache(maxsize=64)
def _sqlite_sql(n: int) -> tuple[str, dict]:
    """`_lookup_query(n)` as SQLite text with named parameters, and its constant parameters."""
    from sqlalchemy.dialects import sqlite
    compiled = _lookup_query(n).compile(dialect=sqlite.dialect(paramstyle="named"))
    return str(compiled), dict(compiled.params)


@functools.lru_cache(maxsize=1)
def _sqlite_spend_sql() -> str:
    from sqlalchemy.dialects import sqlite
    return str(_spend_statement(sqlite.insert).compile(dialect=sqlite.dialect(paramstyle="named")))


MAX_RSA_BITS = 16384  # the largest RSA key whose signature is verified (as for SCEP request keys)
MAX_RSA_EXPONENT = 2 ** 32  # and its public exponent below this (65537 in practice)
_LINEAGE_DEPTH = 64  # renewal generations followed back when looking for a device's current certificate
_RETRYABLE = ("40P01", "40001")  # PostgreSQL deadlock_detected, serialization_failure
_LOOKUP_CHUNK = 200  # SQLite allows at most 500 terms in a compound select


def _spend_statement(insert):
    """INSERT of spent nonces, executed with a list of rows (the driver's batched "insertmanyvalues" path,
    compiled once); RETURNING gives the hashes this statement inserted, i.e. the uses it won."""
    return (insert(attestation_spent_nonces).on_conflict_do_nothing(index_elements=["nonce_sha256"])
            .returning(attestation_spent_nonces.c.nonce_sha256))


@dataclass(eq=False)
class _Job:
    """One verification waiting for the group commit."""

    info: "_Cert"
    device_id: str
    nonce_sha256: str
    expires: datetime
    crl: CheckResult | None = None
    spend_only: bool = False  # the answer is known already; only the nonce is spent


class _CurrentChanged(IntegrityError):
    """The device's current certificate changed between the judgement and the bind: judge again."""

    def __init__(self, device_id: str):
        super().__init__("bind", None, RuntimeError(f"the current certificate of {device_id!r} changed"))


class _DeviceChanged(IntegrityError):
    """The device's status changed between the judgement and the bind (PostgreSQL): judge again."""

    def __init__(self, device_id: str):
        super().__init__("bind", None, RuntimeError(f"the status of device {device_id!r} changed"))


class ProfileTrust:
    """Which profiles' certificates may attest (`ProfileSettings.device_trust`), read from the database and
    kept for `ttl` seconds; a profile not known yet is read again at once (concurrent askers share one read)."""

    def __init__(self, engine: AsyncEngine, *, ttl: float = 5.0):
        self.engine = engine
        self.ttl = ttl
        self._trusted: dict[str, bool] = {}
        self._loaded = float("-inf")  # when the read that gave `_trusted` started
        self._lock = asyncio.Lock()

    async def trusted(self, profile: str | None) -> bool:
        if profile is None:
            return False
        asked = time.monotonic()
        if asked - self._loaded >= self.ttl or profile not in self._trusted:
            async with self._lock:
                if self._loaded < asked:  # no read started since this question was asked
                    await self.reload()
        return self._trusted.get(profile, False)

    async def reload(self) -> None:
        started = time.monotonic()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(profiles.c.name, profiles.c.settings))).all()
        trusted = {}
        for name, text in rows:
            try:
                trusted[name] = ProfileSettings.model_validate_json(text or "{}").device_trust
            except ValueError:  # unreadable settings: the profile's enrolments refuse it too
                trusted[name] = False
        self._trusted, self._loaded = trusted, started


class AttestationService:
    def __init__(self, engine: AsyncEngine, *, cas: dict, external: ExternalCas | None, clock: Clock = utcnow,
                 nonce_ttl: timedelta = timedelta(minutes=2), revoke_on_second_device: bool = False,
                 cache_size: int = 10_000, cache_bytes: int = 32 << 20,
                 notify_changed: Callable[[str], None] | None = None, max_batch: int = 256,
                 unused_days: int | None = None):
        self.engine = engine
        # the day-91 rule (scep_server.ca.revocation.revoke_unused): a first use after it is no use
        self.unused_window = timedelta(days=unused_days) if unused_days else None
        self.cas = cas
        self.external = external
        self.clock = clock
        self.nonce_ttl = nonce_ttl
        self.revoke_on_second_device = revoke_on_second_device
        self._cache: OrderedDict[str, _Cert] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self.cache_used = 0  # bytes held by the cache (`_Cert.cost`)
        self.trust = ProfileTrust(engine)
        self._notify = notify_changed or (lambda ca: None)
        self._our_subjects: dict[bytes, object] = {}
        self._subjects_of: tuple = ()  # the CAs _our_subjects was built from (a rollover adds one at run time)
        self._first_fetch_done: set[str] = set()
        self.nonces = NonceKey(engine)
        self._max_batch = max_batch
        self._group: GroupCommit | None = None
        self._group_loop: asyncio.AbstractEventLoop | None = None
        self.read_only_batches = 0  # batches committed in one hand-off (SQLite, no decision wrote)

    def our_subjects(self) -> dict[bytes, object]:
        """Our CAs by the DER of their subject, rebuilt when the runtime's CAs change (a CA rollover activated
        here or picked up from another process adds one: its certificates attest at once, no restart)."""
        ids = tuple(id(ca) for ca in self.cas.values())
        if ids != self._subjects_of:
            self._our_subjects = {ca.cert.subject.public_bytes(): ca for ca in self.cas.values()}
            self._subjects_of = ids
        return self._our_subjects

    # ---------------------------------------------------------------- challenge

    async def challenge(self, device_id: str) -> dict:
        """A fresh single-use nonce (128 random bits, HMAC-bound to `device_id` and its expiry); no write."""
        expires = self.clock() + self.nonce_ttl
        nonce = await self.nonces.issue(device_id, expires)
        return {"nonce": nonce, "device_id": device_id, "expires_at": expires.isoformat(),
                "expires_in": int(self.nonce_ttl.total_seconds()),
                "signed_bytes": "device-trust-attestation-v1\\n<nonce>\\n<device_id>"}

    async def purge_nonces(self) -> int:
        """Delete spent nonces well past their expiry (the expiry check refuses them from then on; the
        margin of one lifetime covers clocks of other instances running behind)."""
        return await purge_spent(self.engine, self.clock() - self.nonce_ttl)

    def _committer(self) -> GroupCommit[_Job, tuple[Result | None, list[str]]]:
        loop = asyncio.get_running_loop()
        if self._group is None or self._group_loop is not loop:
            self._group = GroupCommit(self._flush, single=self._single, max_batch=self._max_batch,
                                      max_inflight=1 if self.engine.dialect.name == "sqlite" else 2,
                                      name="attestation.group_commit")
            self._group_loop = loop
        return self._group

    async def aclose(self) -> None:
        if self._group is not None:
            await self._group.aclose()

    # ---------------------------------------------------------------- verify

    def _parse(self, der: bytes) -> _Cert:
        """The cached certificate (one whose issuer was established), or a fresh parse of it (not cached)."""
        fp = hashlib.sha256(der).hexdigest()
        hit = self._cache.get(fp)
        if hit is not None and hit.kind == "external" and (self.external is None
                                                           or hit.generation != self.external.generation):
            del self._cache[fp]  # an external CA was added, replaced or removed since: its issuer is looked up again
            self.cache_used -= hit.cost
            hit = None
        if hit is not None:
            self._cache.move_to_end(fp)
            return hit
        try:
            cert = x509.load_der_x509_certificate(der)
        except x509.InvalidVersion as exc:  # not a ValueError
            raise ValueError(f"unknown X.509 version ({exc})") from None
        try:
            return _Cert(der, fp, cert)
        except UnsupportedAlgorithm as exc:  # a key algorithm or named curve the crypto library does not know
            raise ValueError(f"its public key is of a kind this server cannot use ({exc})") from None
        except TypeError as exc:  # a name attribute of a type it cannot have, e.g. a BIT STRING commonName
            raise ValueError(f"unreadable name ({exc})") from None

    def _remember(self, info: _Cert) -> None:
        """Cache a certificate whose issuer is established (ours, signature checked, or a registered external
        CA's), least recently used out first, within `cache_size` entries and `cache_bytes` bytes."""
        if info.fp in self._cache or not self._cache_size or info.cost > self._cache_bytes:
            return
        self._cache[info.fp] = info
        self.cache_used += info.cost
        while len(self._cache) > self._cache_size or self.cache_used > self._cache_bytes:
            _, old = self._cache.popitem(last=False)
            self.cache_used -= old.cost

    @staticmethod
    def _signature_ok(key, algorithm: str | None, data: bytes, signature: bytes) -> Verdict | None:
        if algorithm is None:
            algorithm = "ecdsa-sha256" if isinstance(key, ec.EllipticCurvePublicKey) else "rsa-pkcs1v15-sha256"
        spec = ALGORITHMS.get(algorithm)
        if spec is None:
            return Verdict.ALGORITHM_UNSUPPORTED
        kind, digest = spec
        try:
            if kind == "ecdsa":
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    return Verdict.ALGORITHM_UNSUPPORTED
                key.verify(signature, data, ec.ECDSA(digest))
            else:
                if not isinstance(key, rsa.RSAPublicKey):
                    return Verdict.ALGORITHM_UNSUPPORTED
                if key.key_size > MAX_RSA_BITS or key.public_numbers().e >= MAX_RSA_EXPONENT:
                    # a verification costs a modular exponentiation by e: an exponent as large as the modulus
                    # would make one request cost a hundred (a signature no device makes)
                    return Verdict.ALGORITHM_UNSUPPORTED
                pad = (padding.PKCS1v15() if kind == "pkcs1"
                       else padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.AUTO))
                key.verify(signature, data, pad, digest)
        except (InvalidSignature, ValueError):  # ValueError: a key too small for the digest (PSS, PKCS#1 v1.5)
            return Verdict.SIGNATURE_INVALID
        return None

    async def _issuer(self, info: _Cert) -> Result | CheckResult | None:
        """Establish who issued the certificate (cached). Returns a failure, a first CRL answer, or None."""
        if info.kind is not None:
            return None
        ca = self.our_subjects().get(info.cert.issuer.public_bytes())
        if ca is not None:
            if not ca.issued_by_us(info.cert):
                return fail(Verdict.ISSUER_NOT_TRUSTED, "not issued by our CA (signature does not verify)")
            info.kind, info.ca = "ours", ca.name
            return None
        if self.external is None:
            return fail(Verdict.ISSUER_NOT_TRUSTED, "the certificate's issuer is not a trusted CA")
        first = self.external.check(info.cert)
        if first.reason == "unknown_issuer" and await self.external.maybe_reload():
            first = self.external.check(info.cert)
        if first.reason in ("unknown_issuer", "not_issued_by_ca", "bad_certificate") or first.reason in _CA_OUTSIDE:
            return fail(Verdict.ISSUER_NOT_TRUSTED, first.detail or "the certificate's issuer is not a trusted CA")
        if first.reason in ("no_cdp", "no_http_cdp"):
            return fail(Verdict.CERTIFICATE_NO_CDP, first.detail)
        refused = _not_eligible(info.cert)
        if refused is not None:
            return refused
        info.kind, info.ca, info.cdp = "external", first.ca, cdp_uris(info.cert) or []
        info.generation = self.external.generation
        return first

    async def verify(self, *, device_id: str, nonce: str, certificate: bytes, signature: bytes,
                     algorithm: str | None = None) -> Result:
        result = await self._verify(device_id=device_id, nonce=nonce, certificate=certificate, signature=signature,
                                    algorithm=algorithm)
        metrics.attestation_verdict(result.reason.value)
        return result

    async def _verify(self, *, device_id: str, nonce: str, certificate: bytes, signature: bytes,
                      algorithm: str | None) -> Result:
        try:
            info = self._parse(certificate)
        except ValueError as exc:
            return fail(Verdict.CERTIFICATE_MALFORMED, f"unreadable certificate: {exc}", device_id=device_id)
        bad = self._signature_ok(info.key, algorithm, signed_bytes(nonce, device_id), signature)
        if bad is not None:
            detail = ("the signature does not verify with the certificate's key over the nonce and device id"
                      if bad is Verdict.SIGNATURE_INVALID else
                      f"algorithm {algorithm!r} is not supported for this key; one of: {', '.join(ALGORITHMS)} "
                      f"(RSA keys of at most {MAX_RSA_BITS} bits, public exponent below 2^32)")
            return fail(bad, detail, device_id=device_id, certificate=info.summary)
        state, expires = await self.nonces.check(nonce, device_id, self.clock())
        if state is not None:
            return (fail(Verdict.NONCE_EXPIRED, "this nonce has expired; ask for a new challenge", device_id=device_id,
                         certificate=info.summary) if state == NonceState.EXPIRED else
                    fail(Verdict.NONCE_UNKNOWN, "this nonce was not issued (for this device)", device_id=device_id,
                         certificate=info.summary))
        job = _Job(info, device_id, nonce_hash(decode_nonce(nonce)), expires)
        issuer = await self._issuer(info)
        crl = None
        if not isinstance(issuer, Result):
            self._remember(info)
            if info.kind == "external":
                crl = job.crl = await self._crl_status(info)
                if crl.reason in _CA_OUTSIDE:  # the CA's certificate expired (or is not valid yet) since first sight
                    issuer = fail(Verdict.ISSUER_NOT_TRUSTED, crl.detail)
        if isinstance(issuer, Result):
            # the nonce is still spent: a signed, fresh request was answered
            job.spend_only = True
            spent, _ = await self._committer().submit(job)
            if spent is not None:
                spent.device_id, spent.certificate = device_id, info.summary
                return spent
            issuer.device_id, issuer.certificate = device_id, info.summary
            return issuer
        result, touched = await self._committer().submit(job)
        assert result is not None
        for ca in touched:
            self._notify(ca)
        result.device_id = device_id
        result.certificate = {**info.summary, "ca": info.ca, "external": info.kind == "external"}
        if crl is not None:
            result.extra["crl"] = {"status": crl.status.value, "reason": crl.reason, "url": crl.crl_url,
                                   "crl_number": crl.crl_number,
                                   "this_update": crl.this_update.isoformat() if crl.this_update else None}
        log.info("attestation.verify", device=device_id, serial=info.serial, ca=info.ca, managed=result.managed,
                 reason=result.reason.value)
        return result

    async def _crl_status(self, info: _Cert) -> CheckResult:
        ext = self.external
        assert ext is not None and info.ca is not None
        # a CA certificate never gets here (`_not_eligible`): the CRLs that cover user certificates answer
        res = ext.check_serial(info.ca, info.cert.serial_number, info.cdp)
        if res.status is CheckStatus.UNKNOWN and res.reason == "no_crl":
            pending = [u for u in info.cdp if (info.ca, u) not in self._first_fetch_done]
            if pending:  # first sight of this CDP in this process: fetch it now once, then the job keeps it fresh
                for url in pending:
                    self._first_fetch_done.add((info.ca, url))
                try:
                    async with asyncio.timeout(ext.checker.settings.timeout.total_seconds() + 1):
                        await asyncio.gather(*(ext.checker.refresh(info.ca, u) for u in pending))
                except TimeoutError:
                    pass
                res = ext.check_serial(info.ca, info.cert.serial_number, info.cdp)
        return res

    # ---------------------------------------------------------------- group commit

    async def _flush(self, jobs: list[_Job]) -> list[tuple[Result | None, list[str]]]:
        """One write transaction for a batch of verifications: spend the nonces (one INSERT), read every
        request's rows (one query), decide each in order. A decision that writes makes the later ones of
        the batch read their rows again, so each is judged exactly as if it ran alone after the previous."""
        now = self.clock()
        if self.engine.dialect.name == "sqlite":
            fast = await self._flush_sqlite(jobs, now)
            if fast is not None:
                return fast
        out: list[tuple[Result | None, list[str]] | None] = [None] * len(jobs)
        async with writer(self.engine).begin() as conn:
            won = await self._spend(conn, jobs, now)
            todo = []
            for i, job in enumerate(jobs):
                if i not in won:
                    out[i] = (fail(Verdict.NONCE_REUSED, "this nonce was already used; ask for a new challenge"), [])
                elif job.spend_only:
                    out[i] = (None, [])
                else:
                    todo.append(i)
            rows = await self._lookup(conn, [_lookup_key(jobs[i].device_id, jobs[i].info) for i in todo])
            dirty = False
            for i, row in zip(todo, rows):
                job = jobs[i]
                if dirty:
                    row = (await self._lookup(conn, [_lookup_key(job.device_id, job.info)]))[0]
                wrote: list[bool] = []
                out[i] = await self._judge(conn, job.info, job.device_id, job.crl, now, row, wrote)
                dirty = dirty or bool(wrote)
        return out  # type: ignore[return-value]

    def _reads_only(self, job: _Job, row) -> bool:
        """True when `_judge` cannot write for this request and these rows: an unknown device, a certificate
        of ours missing from the inventory, or one bound to this very device that was used before (and,
        for an external CA, is not revoked on its CRL). Errs on the side of False."""
        if row is None:
            return True
        ours = job.info.kind == "ours"
        if ours and row.cert_status is None:
            return True
        if row.bound_device != job.device_id:
            return False
        if ours:  # another encoding of one of our certificates is compared with the inventory's (a read)
            return row.first_used_at is not None and row.cert_fp == job.info.fp
        return job.crl is None or job.crl.status is not CheckStatus.REVOKED

    async def _flush_sqlite(self, jobs: list[_Job], now: datetime) -> list[tuple[Result | None, list[str]]] | None:
        """The batch in one hand-off to the SQLite connection's thread: BEGIN IMMEDIATE, the nonce
        INSERTs, the lookup, then COMMIT when no decision of the batch writes (the steady state: known
        devices presenting their bound, already used certificate). When one would write, that transaction
        is rolled back (nothing spent) and None returned: the batch then runs the general way."""
        first: dict[str, int] = {}
        for i, job in enumerate(jobs):
            first.setdefault(job.nonce_sha256, i)
        ts = attestation_spent_nonces.c.used_at.type
        to_db = ts.dialect_impl(self.engine.dialect).bind_processor(self.engine.dialect) or (lambda v: v)
        used_at = to_db(now)
        spends = [{"nonce_sha256": h, "device_id": jobs[i].device_id, "expires_at": to_db(jobs[i].expires),
                   "used_at": used_at} for h, i in sorted(first.items())]
        keys = list(dict.fromkeys(_lookup_key(job.device_id, job.info) for job in jobs if not job.spend_only))
        spend_sql = _sqlite_spend_sql()

        def run(db):
            db.execute("BEGIN IMMEDIATE")
            try:
                won = {h for row in spends for (h,) in db.execute(spend_sql, row).fetchall()}
                found: dict[tuple, _Row] = {}
                for start in range(0, len(keys), _LOOKUP_CHUNK):
                    chunk = keys[start:start + _LOOKUP_CHUNK]
                    sql, params = _sqlite_sql(len(chunk))
                    params = dict(params)
                    for k, key in enumerate(chunk):
                        params.update(_lookup_params(k, key))
                    for r in db.execute(sql, params).fetchall():
                        _keep(found, chunk[r[0]], r)
                found = {key: _resolve(key, row) for key, row in found.items()}
                for h, i in first.items():
                    job = jobs[i]
                    if h in won and not job.spend_only and \
                            not self._reads_only(job, found.get(_lookup_key(job.device_id, job.info))):
                        db.execute("ROLLBACK")
                        return None
                db.execute("COMMIT")
                return won, found
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        done = await on_sqlite_thread(self.engine, run)
        if done is None:
            return None
        won, found = done
        self.read_only_batches += 1
        out: list[tuple[Result | None, list[str]]] = []
        for i, job in enumerate(jobs):
            if first[job.nonce_sha256] != i or job.nonce_sha256 not in won:
                out.append((fail(Verdict.NONCE_REUSED, "this nonce was already used; ask for a new challenge"), []))
            elif job.spend_only:
                out.append((None, []))
            else:
                wrote: list[bool] = []
                out.append(await self._judge(None, job.info, job.device_id, job.crl, now,  # type: ignore[arg-type]
                                             found.get(_lookup_key(job.device_id, job.info)), wrote))
                assert not wrote
        return out

    async def _single(self, job: _Job) -> tuple[Result | None, list[str]]:
        """One verification in its own transaction (after a failed batch), retried on a concurrent change. When
        every attempt fails, the nonce is still spent (a transaction of its own): the answer is `conflict`, and
        the same signed request replayed is `nonce_reused`, so a request that keeps failing costs its attempts
        once, not at each replay."""
        for _ in range(3):
            try:
                return (await self._flush([job]))[0]
            except IntegrityError as exc:  # a concurrent bind of this device or certificate: look again
                log.info("attestation.retry", device=job.device_id,
                         error=type(exc.orig).__name__ if exc.orig else "")
            except DBAPIError as exc:  # a deadlock with another instance's batch: the transaction rolled back
                if getattr(exc.orig, "sqlstate", None) not in _RETRYABLE:
                    raise
                log.info("attestation.retry", device=job.device_id, error=type(exc.orig).__name__)
        try:
            spent, _ = (await self._flush([dataclasses.replace(job, spend_only=True)]))[0]
        except DBAPIError as exc:  # IntegrityError included: the nonce's use is what is left undecided
            log.info("attestation.retry", device=job.device_id, error=type(exc.orig).__name__ if exc.orig else "")
            spent = None
        if spent is not None:  # another use of the nonce committed meanwhile
            return spent, []
        return fail(Verdict.CONFLICT, "concurrent changes to this device's binding; ask for a new challenge and "
                                      "try again"), []

    async def _spend(self, conn: AsyncConnection, jobs: list[_Job], now: datetime) -> set[int]:
        """Insert the batch's nonce hashes; the indexes of the jobs whose insert committed their nonce's use.
        Sorted, so that two batches replaying the same nonces lock them in the same order."""
        first: dict[str, int] = {}
        for i, job in enumerate(jobs):
            first.setdefault(job.nonce_sha256, i)
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        rows = [{"nonce_sha256": h, "device_id": jobs[i].device_id, "expires_at": jobs[i].expires, "used_at": now}
                for h, i in sorted(first.items())]
        inserted = (await conn.execute(_spend_statement(insert), rows)).scalars().all()
        return {first[h] for h in inserted}

    async def _lookup(self, conn: AsyncConnection, keys: list[tuple]) -> list:
        """Rows of `_LOOKUP_COLUMNS` for each `_lookup_key`, None for an unknown device."""
        found: dict[tuple, object] = {}
        distinct = list(dict.fromkeys(keys))
        for start in range(0, len(distinct), _LOOKUP_CHUNK):
            chunk = distinct[start:start + _LOOKUP_CHUNK]
            params = {}
            for i, key in enumerate(chunk):
                params.update(_lookup_params(i, key))
            for row in (await conn.execute(_lookup_query(len(chunk)), params)).all():
                _keep(found, chunk[row.i], row)
        return [_resolve(k, found.get(k)) for k in keys]

    async def _judge(self, conn: AsyncConnection, info: _Cert, device_id: str, crl: CheckResult | None,
                     now: datetime, row, wrote: list[bool]) -> tuple[Result, list[str]]:
        """The verdict on one verification whose nonce was just spent, from its rows; writes (recorded in
        `wrote`) only for a first bind, a first use, a retirement or a security event."""
        touched: list[str] = []
        if row is None:
            return fail(Verdict.DEVICE_UNKNOWN, f"no device {device_id!r}"), touched
        status = row.device_status
        ours = info.kind == "ours"
        if ours and row.cert_status is None:
            ca = self.cas.get(info.ca)
            if ca is not None and ca.issued_by_us(info.cert):
                return fail(Verdict.CERTIFICATE_UNKNOWN, "signed by our CA but not in the certificate inventory",
                            device_status=status), touched
            return fail(Verdict.ISSUER_NOT_TRUSTED, "not issued by our CA (signature does not verify)",
                        device_status=status), touched
        if ours and row.cert_fp != info.fp and not await self._as_issued(conn, info):
            return fail(Verdict.CERTIFICATE_UNKNOWN, "signed by our CA, but not the certificate the inventory holds "
                        "under its serial", device_status=status), touched
        if ours and not await self.trust.trusted(row.cert_profile):
            return fail(Verdict.CERTIFICATE_NOT_ELIGIBLE, f"issued by profile {row.cert_profile!r}, whose "
                        f"certificates do not attest (device_trust is off)", device_status=status), touched
        retired = row.binding_state == "retired"
        if retired:
            gone = (fail(Verdict.CERTIFICATE_REVOKED, _revoked_detail(row.revocation_reason),
                         device_status=status) if ours and row.cert_status == CertStatus.REVOKED else
                    fail(Verdict.CERTIFICATE_RETIRED, f"this certificate is never accepted again "
                                                      f"({row.retired_reason})", device_status=status))
        if row.bound_device is not None and row.bound_device != device_id:
            wrote.append(True)
            touched = await self._second_device(conn, info, row.bound_fp, device_id, row.bound_device, now,
                                                revoke=not retired)
            if retired:
                return gone, touched
            return fail(Verdict.BOUND_TO_OTHER_DEVICE, "this certificate is bound to another device; "
                                                       "the attempt was recorded", device_status=status), touched
        if status == DeviceStatus.DELETED.value:
            return fail(Verdict.DEVICE_DELETED, "the device was deleted", device_status=status), touched
        if status == DeviceStatus.DEACTIVATED.value:
            return fail(Verdict.DEVICE_DEACTIVATED, "the device is deactivated (its certificate is on hold)",
                        device_status=status), touched
        if status == DeviceStatus.SUSPENDED.value:
            return fail(Verdict.DEVICE_SUSPENDED, "the device is suspended", device_status=status), touched
        if retired:
            return gone, touched
        if now < info.not_before:
            return fail(Verdict.CERTIFICATE_NOT_YET_VALID, f"valid from {info.not_before.isoformat()}",
                        device_status=status), touched
        if now >= info.not_after:
            return fail(Verdict.CERTIFICATE_EXPIRED, f"expired at {info.not_after.isoformat()}",
                        device_status=status), touched
        if ours:
            if row.cert_status == CertStatus.REVOKED:
                return fail(Verdict.CERTIFICATE_REVOKED, _revoked_detail(row.revocation_reason),
                            device_status=status), touched
            if row.cert_status == CertStatus.HOLD:
                return fail(Verdict.CERTIFICATE_ON_HOLD, "the certificate is on hold (certificateHold)",
                            device_status=status), touched
            if row.first_used_at is None and self.unused_window is not None and \
                    aware(row.unused_since or row.cert_issued_at) + self.unused_window <= now:
                return await self._unused_too_long(conn, info, now, status, wrote)
        else:
            assert crl is not None
            if crl.status is CheckStatus.REVOKED:
                if row.bound_device == device_id:
                    wrote.append(True)
                    await retire(conn, row.bound_fp, "revoked", now)
                return fail(Verdict.CERTIFICATE_REVOKED, _revoked_detail(crl.revocation_reason, "on the CA's CRL"),
                            device_status=status), touched
            if crl.status is CheckStatus.ON_HOLD:
                return fail(Verdict.CERTIFICATE_ON_HOLD, "certificateHold on the CA's CRL",
                            device_status=status), touched
            if crl.status is CheckStatus.UNKNOWN and not crl.allowed:
                return fail(Verdict.CRL_UNAVAILABLE, crl.detail or "no fresh CRL (policy fail-closed)",
                            device_status=status), touched
        if row.bound_device is None:
            wrote.append(True)
            if conn.dialect.name == "postgresql":
                # the device's row is held (FOR SHARE) until the commit: a status change made meanwhile (read
                # committed) makes us judge again, and one made after the bind waits for it and finds the binding
                locked = (await conn.execute(sa.select(devices.c.status).where(devices.c.id == device_id)
                                             .with_for_update(read=True))).scalar()
                if locked != status:
                    raise _DeviceChanged(device_id)
            refused = await self._evidence(conn, info, device_id, row, now)
            if refused is not None:
                refused.device_status = status
                return refused, touched
            lost_to = await self._bind(conn, info, _stored_fp(info, row), device_id, now, row.current_fp)
            if lost_to is not None:
                owner, bound_fp, same = lost_to
                wrote.append(True)
                if not same:
                    return await self._serial_taken(conn, info, device_id, owner, bound_fp, now, status), touched
                touched = await self._second_device(conn, info, bound_fp, device_id, owner, now)
                return fail(Verdict.BOUND_TO_OTHER_DEVICE, "this certificate was just bound to another "
                                                           "device; the attempt was recorded",
                            device_status=status), touched
        if ours and row.first_used_at is None:
            wrote.append(True)
            if not await inventory.mark_used(conn, info.serial, now):  # revoked or held since it was read
                now_status = (await inventory.get(conn, info.serial)).status
                if now_status == CertStatus.HOLD:
                    return fail(Verdict.CERTIFICATE_ON_HOLD, "the certificate was put on hold while it was being "
                                "judged", device_status=status), touched
                return fail(Verdict.CERTIFICATE_REVOKED, "the certificate was revoked while it was being judged",
                            device_status=status), touched
        return Result(True, Verdict.MANAGED, "the device proved possession of its bound certificate",
                      device_status=status), touched

    async def _evidence(self, conn: AsyncConnection, info: _Cert, device_id: str, row, now: datetime) -> Result | None:
        """Whether an unbound certificate may bind to this device (see the module's description); a refusal
        (recorded as a security event) or None."""
        ours = info.kind == "ours"
        enrolled = row.enrolled_device_id if ours else None
        ancestors: list[str] = []
        owner = None  # the device the nearest bound ancestor is bound to
        truncated = False
        if ours and row.renewal_of:
            ancestors, owner, truncated = await self._lineage(conn, row.renewal_of)
        refusal = None
        if enrolled is not None and enrolled != device_id:
            refusal = (Verdict.CERTIFICATE_OF_OTHER_DEVICE, "this certificate was enrolled for another device")
        elif owner is not None and owner != device_id:
            refusal = (Verdict.CERTIFICATE_OF_OTHER_DEVICE, "this certificate renews a certificate of another device")
        elif truncated and owner is None:  # the device it renews for is further back than the walk goes
            refusal = (Verdict.CERTIFICATE_OF_OTHER_DEVICE,
                       f"this certificate renews more than {_LINEAGE_DEPTH} certificates none of which is bound: "
                       "the device it was issued for is not known")
        elif row.current_fp is not None and row.current_fp != _stored_fp(info, row) and enrolled != device_id and not (
                not row.current_external and row.current_serial in ancestors):
            refusal = (Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE,
                       "the device has a current certificate, which this one neither renews nor replaces by "
                       "enrolment for this device; an administrator can remove it (device remove-cert)")
        if refusal is None:
            return None
        reason, detail = refusal
        await record_event(conn, at=now, kind="security.binding.refused", subject=device_id, actor="attestation",
                           data={"reason": reason.value, "fingerprint_sha256": _stored_fp(info, row),
                                 "serial": info.serial,
                                 "ca": info.ca, "current_serial": row.current_serial, "enrolled_device_id": enrolled,
                                 "renews_certificate_of": owner})
        log.warning("security.binding.refused", device=device_id, serial=info.serial, ca=info.ca, reason=reason.value,
                    current_serial=row.current_serial, enrolled_device_id=enrolled, renews_certificate_of=owner)
        return fail(reason, detail + "; the attempt was recorded")

    @staticmethod
    async def _lineage(conn: AsyncConnection, serial: str) -> tuple[list[str], str | None, bool]:
        """The serials a certificate renews, nearest first (at most `_LINEAGE_DEPTH`), the device the nearest bound
        one of them is bound to, and whether the walk stopped at its depth with generations left."""
        ancestors: list[str] = []
        owner = None
        query = (sa.select(certificates.c.renewal_of, device_certs.c.device_id)
                 .select_from(certificates.outerjoin(
                     device_certs, device_certs.c.fingerprint_sha256 == certificates.c.fingerprint_sha256))
                 .where(certificates.c.serial == sa.bindparam("serial")))
        while serial is not None and serial not in ancestors and len(ancestors) < _LINEAGE_DEPTH:
            ancestors.append(serial)
            found = (await conn.execute(query, {"serial": serial})).first()
            if found is None:
                break
            if owner is None:
                owner = found.device_id
            serial = found.renewal_of
        truncated = serial is not None and serial not in ancestors and len(ancestors) >= _LINEAGE_DEPTH
        return ancestors, owner, truncated

    async def _bind(self, conn: AsyncConnection, info: _Cert, fp: str, device_id: str, now: datetime,
                    expected_current: str | None) -> tuple[str, str, bool] | None:
        """Compare-and-set: bind an unbound certificate (recorded under fingerprint `fp`) to this device, replacing
        the current certificate the judgement saw (`expected_current`; _CurrentChanged when the device's current
        certificate is another by now). When a binding of the same DER or the same (ca, serial) is there already:
        None when it is this certificate's (any encoding of it: the same DER or TBSCertificate) bound to this
        device, else its device, the fingerprint it is bound under and whether it is this certificate's (False:
        another certificate holds this CA name and serial, nothing was bound)."""
        values = dict(fingerprint_sha256=fp, tbs_sha256=info.tbs, device_id=device_id, ca=info.ca,
                      external=info.kind == "external", serial=info.serial, not_after=info.not_after, current=False,
                      state="active", bound_at=now)
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        # no conflict target: a row of the same (ca, serial) (uq_device_certs_ca_serial: another encoding of the
        # certificate) is the existing binding as much as one of the same fingerprint, never an IntegrityError
        res = await conn.execute(insert(device_certs).values(**values).on_conflict_do_nothing())
        if res.rowcount != 1:
            d = device_certs.c
            rows = (await conn.execute(sa.select(d.device_id, d.fingerprint_sha256, d.tbs_sha256).where(
                sa.or_(sa.and_(d.ca == info.ca, d.serial == info.serial), d.fingerprint_sha256 == fp)))).all()
            if not rows:  # a row removed meanwhile (not done by this server): judge again
                raise _CurrentChanged(device_id)
            # the binding of this DER first, then one of this TBSCertificate, then another certificate's
            found = min(rows, key=lambda r: (r.fingerprint_sha256 != fp,
                                             r.tbs_sha256 is None or r.tbs_sha256 != info.tbs))
            same = found.fingerprint_sha256 == fp or found.tbs_sha256 == info.tbs
            if same and found.device_id == device_id:
                return None
            return found.device_id, found.fingerprint_sha256, same
        old = (await conn.execute(sa.select(device_certs.c.fingerprint_sha256, device_certs.c.serial).where(
            device_certs.c.device_id == device_id, device_certs.c.current.is_(True)))).all()
        if [old_fp for old_fp, _ in old] != ([expected_current] if expected_current else []):
            raise _CurrentChanged(device_id)
        for old_fp, old_serial in old:
            await retire(conn, old_fp, "superseded", now)
            await record_event(conn, at=now, kind=EventKind.UNBIND, subject=device_id, actor="attestation",
                               data={"fingerprint_sha256": old_fp, "serial": old_serial, "reason": "superseded"})
        await conn.execute(device_certs.update().where(device_certs.c.fingerprint_sha256 == fp)
                           .values(current=True))
        await record_event(conn, at=now, kind=EventKind.BIND, subject=device_id, actor="attestation",
                           data={"fingerprint_sha256": fp, "serial": info.serial, "ca": info.ca})
        log.info(EventKind.BIND.value, device=device_id, serial=info.serial, ca=info.ca)
        return None

    async def _second_device(self, conn: AsyncConnection, info: _Cert, bound_fp: str, device_id: str, owner: str,
                             now: datetime, *, revoke: bool = True) -> list[str]:
        """A certificate (bound under fingerprint `bound_fp`) presented by a device it is not bound to: a security
        event; optionally retire and revoke it. The event names the certificate by the fingerprint it is bound
        under, and the presented one when it is another encoding of it."""
        data = {"bound_to": owner, "presented_by": device_id, "serial": info.serial, "ca": info.ca}
        if info.fp != bound_fp:
            data["presented_fingerprint_sha256"] = info.fp
        await record_event(conn, at=now, kind="security.cert.second_device", subject=bound_fp, actor="attestation",
                           data=data)
        log.warning("security.cert.second_device", serial=info.serial, ca=info.ca, bound_to=owner,
                    presented_by=device_id)
        if not (self.revoke_on_second_device and revoke):
            return []
        await retire(conn, bound_fp, "key_compromise", now)
        if info.kind != "ours":
            return []
        change = await change_status(conn, info.serial, CertStatus.REVOKED, at=now, actor="attestation",
                                     reason=Reason.KEY_COMPROMISE, invalidity_date=now, expect=CHANGEABLE,
                                     data={"invalidity_date": now.isoformat(),
                                           "detail": f"presented by device {device_id}, bound to {owner}"})
        return [change.ca] if change else []

    async def _serial_taken(self, conn: AsyncConnection, info: _Cert, device_id: str, owner: str, bound_fp: str,
                            now: datetime, status: str | None) -> Result:
        """A certificate that cannot bind: another certificate of the same CA name and serial is bound (to
        `owner`, under `bound_fp`). Its CA issued two certificates with one serial, or a customer CA was removed
        and another registered under its name. A security event; the binding there is left as it is."""
        await record_event(conn, at=now, kind="security.binding.refused", subject=device_id, actor="attestation",
                           data={"reason": Verdict.CERTIFICATE_UNKNOWN.value, "fingerprint_sha256": info.fp,
                                 "serial": info.serial, "ca": info.ca, "bound_fingerprint_sha256": bound_fp,
                                 "bound_to": owner})
        log.warning("security.binding.refused", device=device_id, serial=info.serial, ca=info.ca,
                    reason=Verdict.CERTIFICATE_UNKNOWN.value, bound_to=owner)
        return fail(Verdict.CERTIFICATE_UNKNOWN, f"another certificate of CA {info.ca!r} with serial {info.serial} is "
                    "bound: the CA issued two certificates with one serial, or another CA was registered under its "
                    "name (register it under a name of its own); the attempt was recorded", device_status=status)

    @staticmethod
    async def _as_issued(conn: AsyncConnection, info: _Cert) -> bool:
        """Whether another encoding of a certificate our CA signed (another DER than the inventory's) has the
        TBSCertificate the inventory holds under its serial: the same certificate, its signature re-encoded
        (ECDSA: s -> n - s). Our CA never signs two certificates with one serial; a difference means a
        certificate this server did not issue."""
        der = (await conn.execute(sa.select(certificates.c.der).where(certificates.c.serial == info.serial))).scalar()
        if der is None:
            return False
        try:
            return x509.load_der_x509_certificate(der).tbs_certificate_bytes == info.cert.tbs_certificate_bytes
        except ValueError:
            return False

    async def _unused_too_long(self, conn: AsyncConnection, info: _Cert, now: datetime, status: str | None,
                               wrote: list[bool]) -> tuple[Result, list[str]]:
        """A first use after the day-91 rule's window: the rule applies now, whether or not its job ran yet
        (revoked as the job revokes, once; a certificate the job revoked meanwhile is left as it is)."""
        days = self.unused_window.days if self.unused_window else 0
        wrote.append(True)
        change = await change_status(conn, info.serial, CertStatus.REVOKED, at=now, actor="system:day-91",
                                     reason=PERMANENT_REASON, expect=CHANGEABLE, never_used=True,
                                     data={"detail": f"never used within {days} days of issue"})
        return fail(Verdict.CERTIFICATE_REVOKED, f"never used within {days} days of issue: revoked "
                    f"(cessationOfOperation)", device_status=status), [change.ca] if change else []


# extensions a customer CA's device certificate may mark critical: those RFC 5280 §4.2 has a relying party process
_KNOWN_CRITICAL = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.CRL_DISTRIBUTION_POINTS,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER, ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.NAME_CONSTRAINTS, ExtensionOID.POLICY_CONSTRAINTS, ExtensionOID.INHIBIT_ANY_POLICY,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS})
_CLIENT_EKUS = (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)


def _not_eligible(cert: x509.Certificate) -> Result | None:
    """Whether a customer CA's certificate may attest, from its extensions alone: a refusal or None. It must not
    carry a critical extension outside `_KNOWN_CRITICAL` (RFC 5280 §4.2), nor be a CA certificate; an extended
    key usage must allow clientAuth (or anyExtendedKeyUsage), a key usage digitalSignature (the attestation is
    a signature). Our own certificates are judged by their profile's `device_trust` instead: a template may
    legitimately issue them without clientAuth or digitalSignature."""
    try:
        exts = {ext.oid: ext for ext in cert.extensions}
    except UNREADABLE as exc:
        return fail(Verdict.CERTIFICATE_MALFORMED, f"unreadable certificate: {exc}")
    unknown = next((oid for oid, ext in exts.items() if ext.critical and oid not in _KNOWN_CRITICAL), None)
    basic, eku, usage = (exts.get(oid) for oid in (ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.EXTENDED_KEY_USAGE,
                                                   ExtensionOID.KEY_USAGE))
    if unknown is not None:
        why = f"unknown critical extension {unknown.dotted_string} (RFC 5280 §4.2)"
    elif basic is not None and basic.value.ca:
        why = "a CA certificate (basicConstraints cA) is not a device certificate"
    elif eku is not None and not any(oid in eku.value for oid in _CLIENT_EKUS):
        why = "its extended key usage does not allow client authentication (clientAuth)"
    elif usage is not None and not usage.value.digital_signature:
        why = "its key usage does not allow digitalSignature"
    else:
        return None
    return fail(Verdict.CERTIFICATE_NOT_ELIGIBLE, why)


def _revoked_detail(code: int | None, where: str = "") -> str:
    try:
        name = Reason(code).name if code is not None else "unspecified"
    except ValueError:
        name = str(code)
    return f"the certificate is revoked ({name}){' ' + where if where else ''}"
