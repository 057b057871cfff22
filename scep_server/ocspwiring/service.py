"""The OCSP responder of our CAs: status from the inventory, signed by each CA's signer, pre-signed and cached.

Answers (RFC 6960 §2.2, docs/ocsp.md "Answers"): ``good`` for a valid certificate, ``revoked`` with its time
and reason for a revoked one (certificateHold for one on hold), ``unknown`` for a serial this CA never issued
(or ``revoked`` with the extended revoke extension when ``ocsp.unknown_as_revoked``). A request naming
another issuer is answered ``unauthorized``, one that does not parse ``malformedRequest``.

The hot path signs nothing: a request with one CertID and no nonce is answered with a response signed
earlier (kept until half its validity has passed), looked up by a digest of the request's bytes, or else
by its CertID. A request with a nonce, or with several CertIDs, is signed fresh. The digest is recorded
for the request that was signed and for the canonical request of the CertID (no extension, signature or
requestor name): bytes a client chooses freely (an ignored extension) never add cache entries without
costing a signature.

A cached response is dropped when its certificate's status changes (docs/ocsp.md "Freshness"):
- in this process, the revocation service tells us after its commit; the next request waits for the
  audit-log scan that names the serial (a few milliseconds), so the change is answered at once;
- in the other processes, the change feed the CRL publishers listen to (PostgreSQL NOTIFY, SQLite's
  data_version) starts the same scan, and a scan every `POLL_INTERVAL` is the safety net.
A response being signed while a scan drops entries is not cached (the invalidation generation changed).
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime

import structlog

from crl.ocsp import (
    CERTIFICATE_HOLD,
    NEVER_ISSUED_TIME,
    Answer,
    IssuerIdentity,
    MalformedRequest,
    OcspRequest,
    ResponseSigner,
    build_response,
    error_response,
    parse_request,
)

from trustkit.der import seq

from ..ca.status import CertStatus
from .signer import DelegatedSigner, ca_signer
from .store import ChangeScanner, SerialStatus, statuses

log = structlog.get_logger("ocsp")

POLL_INTERVAL = 0.5  # seconds between two scans of the audit log when nothing was announced


@dataclass(frozen=True)
class Reply:
    """An OCSPResponse and what HTTP caching needs; ``this_update`` is None for an unsigned error status."""

    body: bytes
    status: str  # "successful" or the error status
    this_update: datetime | None = None
    next_update: datetime | None = None
    cacheable: bool = False  # one CertID, no nonce: the same answer for everyone until nextUpdate

    @functools.cached_property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class _Entry:
    reply: Reply | None  # a pre-signed response, or None for a status entry
    serial: str
    refresh_at: datetime
    status: SerialStatus | None = None  # status entries: the serial's status (None: never issued by the CA)


def _canonical_request(cert_id_der: bytes) -> bytes:
    """The DER OCSPRequest naming this CertID alone (RFC 6960 §4.1.1): version v1 (the default, absent), no
    requestor name, no extension, no signature."""
    return seq(seq(seq(seq(cert_id_der))))


class ResponseCache:
    """Pre-signed responses by (CA, CertID DER) and by (CA, request digest), and statuses by (CA, serial) (so a
    request with a nonce is signed without a database read), indexed by serial for invalidation; the oldest
    entries go first beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[tuple, _Entry] = {}
        self.by_serial: dict[str, set[tuple]] = {}
        self.generation = 0  # bumped by every invalidation

    def get(self, key: tuple, now: datetime) -> _Entry | None:
        entry = self.entries.get(key)
        if entry is None or now >= entry.refresh_at:
            return None
        return entry

    def put(self, key: tuple, entry: _Entry) -> None:
        if self.capacity <= 0:
            return
        if key in self.entries:
            self._drop(key)
        while len(self.entries) >= self.capacity:
            self._drop(next(iter(self.entries)))
        self.entries[key] = entry
        self.by_serial.setdefault(entry.serial, set()).add(key)

    def _drop(self, key: tuple) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        keys = self.by_serial.get(entry.serial)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.by_serial[entry.serial]

    def invalidate(self, serials) -> int:
        dropped = 0
        for serial in serials:
            for key in list(self.by_serial.get(serial, ())):
                self._drop(key)
                dropped += 1
        self.generation += 1
        return dropped

    def clear(self) -> None:
        self.entries.clear()
        self.by_serial.clear()
        self.generation += 1


class OcspService:
    """Answers OCSP requests for the CAs of a runtime (its CA keys must be open)."""

    def __init__(self, runtime) -> None:
        from ..ca.keys import load_or_create_passphrase

        self.runtime = runtime
        self.settings = runtime.settings.ocsp
        self.clock = runtime.clock
        self.issuers = {name: IssuerIdentity.from_certificate(ca.cert_der) for name, ca in runtime.cas.items()}
        self.delegated: dict[str, DelegatedSigner] = {}
        self.signers: dict[str, ResponseSigner] = {}
        # with the CA keys in a PKCS#11 token no key file is written: the CA key signs the responses itself
        self._passphrase: bytes | None = None
        if self.settings.signer == "delegated" and runtime.settings.ca.key_backend == "file":
            s = runtime.settings
            passphrase = self._passphrase = load_or_create_passphrase(s.ca.passphrase_env, s.passphrase_path(),
                                                                      keys_in=s.ca_dir().parent)
            self.delegated = {name: DelegatedSigner(ca, runtime.settings.ca_dir(name), passphrase, self.settings)
                              for name, ca in runtime.cas.items()}
        else:
            self.signers = {name: ca_signer(ca) for name, ca in runtime.cas.items()}
        self.cache = ResponseCache(self.settings.cache_entries)
        self.scanner = ChangeScanner(runtime.engine)
        self._scan_wake = asyncio.Event()
        self._requested = 0  # scans asked for
        self._local_requested = 0  # the last scan asked for by a change made in this process
        self._done = 0  # scans asked for before the last scan started, all served
        self._finished = asyncio.Event()  # set (and replaced) when a scan ends
        self.started = False
        if runtime.revocation is not None:
            runtime.revocation.subscribe(self.on_local_change)

    # ---- signers

    async def add_ca(self, name: str) -> None:
        """A CA loaded after the start (scep_server.ca.lifecycle.pick_up_cas): answer for it too."""
        if name in self.issuers:
            return
        ca = self.runtime.cas[name]
        if self._passphrase is not None:
            self.delegated[name] = DelegatedSigner(ca, self.runtime.settings.ca_dir(name), self._passphrase,
                                                   self.settings)
            await self.refresh_signers()
        else:
            self.signers[name] = ca_signer(ca)
        self.issuers[name] = IssuerIdentity.from_certificate(ca.cert_der)

    async def start(self) -> None:
        """Load (or issue) the delegated signers and note the audit log's position."""
        await self.refresh_signers()
        await self.scanner.start()
        self.started = True

    async def refresh_signers(self) -> list[str]:
        """Load renewed signer files, or renew a signer that is due (in a thread: key generation blocks)."""
        renewed = []
        for name, delegated in list(self.delegated.items()):
            if await asyncio.to_thread(delegated.refresh, self.clock()):
                renewed.append(name)
            assert delegated.signer is not None
            if self.signers.get(name) is not delegated.signer:
                self.signers[name] = delegated.signer
                self.cache.clear()  # responses signed by the previous certificate are re-signed
        return renewed

    # ---- invalidation

    def on_local_change(self, ca: str) -> None:
        """A status change committed in this process: the next request waits for the scan that drops it."""
        self._local_requested = self._request_scan()

    def on_remote_change(self, payload: str) -> None:
        """Another process announced a change (the CRL change feed's payloads)."""
        if not payload.startswith("crl:"):  # "resync" too: the scan finds every change by its id
            self._request_scan()

    def _request_scan(self) -> int:
        self._requested += 1
        self._scan_wake.set()
        return self._requested

    async def scan_once(self) -> int:
        """Drop the cached responses of the certificates that changed; the number dropped."""
        serials = await self.scanner.changed()
        if not serials:
            return 0
        dropped = self.cache.invalidate(serials)
        if dropped:
            log.debug("ocsp.cache.invalidated", serials=len(serials), responses=dropped)
        return dropped

    async def run_scanner(self) -> None:
        """Scan when asked (or every POLL_INTERVAL) until cancelled."""
        while True:
            try:
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._scan_wake.wait()
            except TimeoutError:
                pass
            self._scan_wake.clear()
            target = self._requested
            try:
                await self.scan_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database hiccup: the cache is dropped, scans go on
                log.error("ocsp.scan.failed", error=f"{type(exc).__name__}: {exc}")
                self.cache.clear()
            self._done = target
            finished, self._finished = self._finished, asyncio.Event()
            finished.set()

    async def _wait_local(self) -> None:
        """Wait until the scans asked for by changes made here have run (bounded: never a stuck request)."""
        if self._done >= self._local_requested:
            return
        target = self._local_requested
        try:
            async with asyncio.timeout(2.0):
                while self._done < target:
                    await self._finished.wait()
        except TimeoutError:  # the scanner is stuck: answer from the database, without the cache
            self.cache.clear()

    # ---- answering

    async def respond(self, ca: str, der: bytes) -> Reply:
        """The response to one request for ``ca`` (an unknown CA is unauthorized)."""
        signer = self.signers.get(ca)
        if signer is None:
            return Reply(error_response("unauthorized"), "unauthorized")
        await self._wait_local()
        now = self.clock()
        alias = ("r", ca, hashlib.sha256(der).digest())
        hit = self.cache.get(alias, now)
        if hit is not None and hit.reply is not None:
            return hit.reply
        try:
            request = parse_request(der, max_bytes=self.settings.max_request_bytes,
                                    max_cert_ids=self.settings.max_cert_ids)
        except MalformedRequest as exc:
            log.info("ocsp.request.malformed", ca=ca, error=str(exc), size=len(der))
            return Reply(error_response("malformed_request"), "malformed_request")
        issuer = self.issuers[ca]
        if not all(issuer.names(cid) for cid in request.cert_ids):
            log.info("ocsp.request.unauthorized", ca=ca, cert_ids=len(request.cert_ids))
            return Reply(error_response("unauthorized"), "unauthorized")
        if request.cacheable:
            hit = self.cache.get(("c", ca, request.cert_ids[0].der), now)
            if hit is not None and hit.reply is not None:
                if der == _canonical_request(request.cert_ids[0].der):  # one alias per CertID at most
                    self.cache.put(alias, hit)
                return hit.reply
        generation = self.cache.generation
        reply = await self._sign(ca, signer, request, now, generation)
        if request.cacheable and generation == self.cache.generation and self.started:
            validity = self.settings.response_validity
            entry = _Entry(reply, format(request.cert_ids[0].serial, "x"), reply.this_update + validity / 2)
            self.cache.put(("c", ca, request.cert_ids[0].der), entry)
            self.cache.put(alias, entry)
        return reply

    async def _statuses(self, ca: str, serials: set[str], now: datetime, generation: int
                        ) -> dict[str, SerialStatus | None]:
        """The status of each serial, from the cache or else the database (then cached, unless an
        invalidation happened since ``generation`` was read)."""
        known: dict[str, SerialStatus | None] = {}
        missing = []
        for serial in serials:
            entry = self.cache.get(("s", ca, serial), now)
            if entry is None:
                missing.append(serial)
            else:
                known[serial] = entry.status
        if missing:
            found = await statuses(self.runtime.engine, ca, sorted(missing))
            keep = generation == self.cache.generation and self.started
            for serial in missing:
                known[serial] = found.get(serial)
                if keep:
                    self.cache.put(("s", ca, serial), _Entry(None, serial, now + self.settings.response_validity,
                                                             known[serial]))
        return known

    async def _sign(self, ca: str, signer: ResponseSigner, request: OcspRequest, now: datetime,
                    generation: int) -> Reply:
        serials = {cid.serial: format(cid.serial, "x") for cid in request.cert_ids if cid.serial > 0}
        found = await self._statuses(ca, set(serials.values()), now, generation) if serials else {}
        answers = []
        for cid in request.cert_ids:
            st = found.get(serials.get(cid.serial, ""))
            if st is None:
                if self.settings.unknown_as_revoked:
                    answers.append(Answer(cid, "revoked", NEVER_ISSUED_TIME, CERTIFICATE_HOLD))
                else:
                    answers.append(Answer(cid, "unknown"))
            elif st.status is CertStatus.VALID:
                answers.append(Answer(cid, "good"))
            elif st.status is CertStatus.HOLD:
                answers.append(Answer(cid, "revoked", st.revoked_at or now, CERTIFICATE_HOLD))
            else:
                answers.append(Answer(cid, "revoked", st.revoked_at or now, st.reason or None))
        this_update = now.replace(microsecond=0)
        next_update = this_update + self.settings.response_validity
        build = functools.partial(build_response, answers, signer, produced_at=now, this_update=this_update,
                                  next_update=next_update, nonce=request.nonce)
        # a key in a PKCS#11 token signs in a thread: the token's answer (up to its timeout, while it hangs or
        # its sessions serve SCEP) never holds the event loop; a key in memory signs here, quicker than a hop
        body = await asyncio.to_thread(build) if signer.blocking else build()
        return Reply(body, "successful", this_update, next_update, cacheable=request.cacheable)

    def readiness(self) -> str:
        """For /readyz: every CA has a signer whose certificate is valid now."""
        now = self.clock()
        problems = []
        for name in self.issuers:
            delegated = self.delegated.get(name)
            if name not in self.signers:
                problems.append(f"{name}: no OCSP signer")
            elif delegated is not None and delegated.cert is not None and delegated.cert.not_valid_after_utc <= now:
                problems.append(f"{name}: the OCSP signing certificate expired")
        return "ok" if not problems else "error: " + "; ".join(problems)
