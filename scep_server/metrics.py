"""Prometheus metrics of the server (`/metrics`, scep_server.web.metrics).

One process or many: `serve` with several workers calls :func:`prepare_multiprocess` before it forks, so the
workers write their counters and histograms to memory-mapped files in a directory made for this start
(prometheus-client's multiprocess mode) and any worker answering a scrape reports the sum of all of them. A
single process (one worker, the tests' in-process servers) keeps them in memory.

Recording is switched on per process by :func:`activate` (the application does it when ``[metrics] enabled``);
until then every ``record`` function below returns at once, so a command-line process or a server with
metrics off pays one attribute test per event. Counter increments and histogram observations made on the event
loop wait up to FLUSH_SECONDS and are applied together (in a multi-worker server each write is a locked update
of a memory-mapped file: one per series and period instead of one per request); a scrape applies its own
worker's first. Label values come from closed sets only: profiles that exist
(a request naming an unknown profile never reaches a recorder), the SCEP enums, the OTP and attestation
reason codes, the configured CAs, the names of the group-commit stores: nothing a client writes becomes a label.

What is computed at each scrape rather than recorded (it is the state of the worker answering): the CRL
gauges of every CA (the CRL served now), the CA and RA certificates' notAfter, readiness per check, and the
process_* metrics, which multiprocess mode cannot sum: they describe the worker that answered the scrape
(its pid is in ``scep_server_scrape_worker``).

This module imports prometheus-client only when activated or scraped (the command line never needs it).
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from trustkit.deferred import DeferredFlush

if TYPE_CHECKING:
    from crl.publish import PublishedCrl

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

ENROLMENT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DELEGATED_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CRL_PUBLISH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REVOCATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# SCEP messageType names a request may carry; anything else is counted as "other"
_MESSAGE_TYPES = {17: "RenewalReq", 19: "PKCSReq", 20: "CertPoll", 21: "GetCert", 22: "GetCRL"}


@dataclass
class _Metrics:
    """The recorded metrics of this process (created by :func:`activate`)."""

    own: Any  # CollectorRegistry of this process (single-process mode)
    enrolments: Any
    enrolment_seconds: Any
    challenges_issued: Any
    challenge_redemptions: Any
    challenge_lockouts: Any
    delegated: Any
    delegated_seconds: Any
    crl_publish_seconds: Any
    revocation_seconds: Any
    otp: Any
    attestation: Any
    batch_size: Any
    commit_seconds: Any
    worker_requests: Any
    key_sign_failures: Any
    brake_holds: Any
    getcrl_busy: Any
    send_timeouts: Any
    # CA -> the (serial, revoked_at) listed in the last CRL signed here and newer than the CRL before it
    crl_recent: dict[str, frozenset] = field(default_factory=dict)
    # (id of the metric, *label values) -> the labelled child: `labels()` costs more than the increment itself.
    # Bounded like the label sets (closed sets only).
    children: dict[tuple, Any] = field(default_factory=dict)

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*labels)
        return found


_active: _Metrics | None = None
_multiproc_dir: str | None = None

# Counter and gauge increments made on the event loop are added up per labelled child and applied together at most
# FLUSH_SECONDS later. In a multi-worker server each applied increment is a locked write to a memory-mapped file:
# one write per child and period replaces one per request. Histogram observations on the loop wait the same way
# (applied one by one, in a row, off the request's path; at most FLUSH_OBSERVATIONS wait). A scrape applies its own
# worker's first, so another worker's may show up to FLUSH_SECONDS late; a worker applies what waits before it
# exits. Outside a running loop (a thread, the command line) an increment or observation is applied at once.
FLUSH_SECONDS = 0.25
FLUSH_OBSERVATIONS = 4096
_pending: dict[Any, float] = {}
_pending_observations: list[tuple[Any, float]] = []  # histogram observations, the same way


def flush() -> None:
    """Apply the increments and observations waiting (before a scrape, and at a worker's exit)."""
    if _pending:
        items = list(_pending.items())
        _pending.clear()
        for child, amount in items:
            _apply(child.inc, amount)
    if _pending_observations:
        observations = _pending_observations[:]
        _pending_observations.clear()
        for child, value in observations:
            _apply(child.observe, value)


@functools.lru_cache(maxsize=None)
def _log_failure_once(what: str) -> None:
    logging.getLogger(__name__).exception("metrics.record_failed: %s", what)


def _apply(record: Callable[[float], Any], value: float) -> None:
    """A child's ``inc`` or ``observe``, now."""
    try:
        record(value)
    except Exception:  # noqa: BLE001 - metrics are not worth an answer (a metrics file that cannot grow, say)
        _log_failure_once(getattr(record, "__name__", "record"))


_deferred = DeferredFlush(flush, FLUSH_SECONDS)


def _on_loop() -> bool:
    """On the event loop (what waits is flushed there within FLUSH_SECONDS), or not (apply at once)."""
    return _deferred.on_loop(bool(_pending or _pending_observations))


def _inc(child: Any, amount: float = 1.0) -> None:
    if _on_loop():
        _pending[child] = _pending.get(child, 0.0) + amount
    else:
        _apply(child.inc, amount)


def _observe(child: Any, value: float) -> None:
    if _on_loop():
        _pending_observations.append((child, value))
        if len(_pending_observations) >= FLUSH_OBSERVATIONS:
            flush()
    else:
        _apply(child.observe, value)


atexit.register(flush)  # increments still waiting when the process stops


# ---------------------------------------------------------------- multiprocess set-up (the serving parent)

def prepare_multiprocess(parent: str | os.PathLike | None = None) -> Path:
    """Create an empty directory for this start's metric files and point prometheus-client at it (before the
    workers fork: they inherit the environment variable). Returns the directory; remove it with
    :func:`cleanup_multiprocess` when the server stops."""
    global _multiproc_dir
    directory = Path(tempfile.mkdtemp(prefix="scep-server-metrics-", dir=parent))
    os.environ[MULTIPROC_ENV] = str(directory)
    _multiproc_dir = str(directory)
    return directory


def worker_exited(pid: int) -> None:
    """A worker ended: drop its live gauges (its counters and histograms stay in the sums)."""
    if _multiproc_dir is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, _multiproc_dir)


def cleanup_multiprocess(directory: Path) -> None:
    global _multiproc_dir
    shutil.rmtree(directory, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == str(directory):
        del os.environ[MULTIPROC_ENV]
    _multiproc_dir = None


def _multiprocess_path() -> str | None:
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


# ---------------------------------------------------------------- activation

def activate() -> None:
    """Start recording in this process (idempotent). In a worker of a multi-worker server, values go to the
    shared directory; elsewhere they stay in memory."""
    global _active
    if _active is not None:
        return
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

    # the value class is chosen from the environment: decide it now, not when prometheus_client was imported
    values.ValueClass = values.get_value_class()
    own = CollectorRegistry(auto_describe=False)

    def counter(name, doc, labels):
        return Counter(name, doc, labels, registry=own)

    def histogram(name, doc, labels, buckets):
        return Histogram(name, doc, labels, buckets=buckets, registry=own)

    m = _Metrics(
        own=own,
        enrolments=counter("scep_enrolments", "SCEP PKIOperations answered, by profile, messageType, pkiStatus "
                           "and failInfo", ["profile", "message_type", "outcome", "fail_info"]),
        enrolment_seconds=histogram("scep_enrolment_duration_seconds", "Time to answer a SCEP PKIOperation",
                                    ["profile"], ENROLMENT_BUCKETS),
        challenges_issued=counter("scep_challenges_issued", "One-time challenges issued", ["profile"]),
        challenge_redemptions=counter("scep_challenge_redemptions", "One-time challenges presented in enrolments",
                                      ["profile", "outcome"]),
        challenge_lockouts=counter("scep_challenge_login_lockouts", "Lockouts of the challenge endpoint's Basic "
                                   "login, by profile and scope (address: one client address; username: failures "
                                   "from all addresses)", ["profile", "scope"]),
        delegated=counter("scep_delegated_validations", "Requests validated by Intune or a webhook",
                          ["provider", "outcome"]),
        delegated_seconds=histogram("scep_delegated_validation_duration_seconds",
                                    "Time Intune or the webhook took to validate a request", ["provider", "outcome"],
                                    DELEGATED_BUCKETS),
        crl_publish_seconds=histogram("crl_publish_duration_seconds", "Time to build, sign, check and record a CRL",
                                      ["ca"], CRL_PUBLISH_BUCKETS),
        revocation_seconds=histogram("crl_revocation_to_publication_seconds",
                                     "From a certificate's status change to the signing of the first CRL listing it",
                                     ["ca"], REVOCATION_BUCKETS),
        otp=counter("otp_verifications", "YubiKey OTP verifications, by API client and status",
                    ["client", "status"]),
        attestation=counter("attestation_verdicts", "Management attestation answers, by reason", ["reason"]),
        batch_size=histogram("group_commit_batch_size", "Items written per group-commit transaction", ["store"],
                             BATCH_SIZE_BUCKETS),
        commit_seconds=histogram("group_commit_duration_seconds", "Time of one group-commit transaction "
                                 "(work and durable commit)", ["store"], COMMIT_BUCKETS),
        worker_requests=Gauge("scep_server_worker_requests", "HTTP requests answered by this worker since it "
                              "started (one series per live worker, by pid, in a multi-worker server)",
                              registry=own, multiprocess_mode="liveall"),
        key_sign_failures=counter("ca_key_sign_failures", "Signatures a CA or RA private key failed to make "
                                  "(the token away or erring, a key that cannot sign)", ["backend"]),
        brake_holds=counter("mdm_brake_holds", "MDM syncs and webhook events the brake held: they would take "
                            "down more devices than [mdm] brake_share and brake_devices allow", ["what"]),
        getcrl_busy=counter("scep_getcrl_busy", "SCEP GetCRLs answered 503 because the worker's GetCRL lane was full "
                            "(server.scep_getcrl_queue)", ["ca"]),
        send_timeouts=counter("http_send_timeouts", "Large answers whose connection was reset because the client "
                              "read them slower than server.send_min_rate or stopped reading (server.send_timeout_"
                              "seconds, scep_server.web.sendtime)", ["route"]),
    )
    _active = m
    from trustkit import batching

    batching.set_observer(group_commit)


def active() -> bool:
    return _active is not None


# ---------------------------------------------------------------- recorders (cheap no-ops until activated)

def _never_raises(recorder):
    """A recorder's failure (a metrics file that cannot grow, say) is logged once and never fails the request."""
    failed = False

    @functools.wraps(recorder)
    def record(*args, **kwargs) -> None:
        nonlocal failed
        try:
            recorder(*args, **kwargs)
        except Exception:  # noqa: BLE001 - metrics are not worth an answer
            if not failed:
                failed = True
                logging.getLogger(__name__).exception("metrics.record_failed: %s", recorder.__name__)
    return record


@_never_raises
def scep_transaction(profile: str, message_type: int, outcome: str, fail_info: str | None, seconds: float) -> None:
    m = _active
    if m is None:
        return
    _inc(m.child(m.enrolments, profile, _MESSAGE_TYPES.get(message_type, "other"), outcome, fail_info or "none"))
    _observe(m.child(m.enrolment_seconds, profile), seconds)


@_never_raises
def challenge_issued(profile: str) -> None:
    m = _active
    if m is not None:
        _inc(m.child(m.challenges_issued, profile))


@_never_raises
def challenge_redeemed(profile: str, outcome: str) -> None:
    """``outcome``: redeemed | refused."""
    m = _active
    if m is not None:
        _inc(m.child(m.challenge_redemptions, profile, outcome))


@_never_raises
def challenge_login_lockout(profile: str, scope: str) -> None:
    """``scope``: address | username."""
    m = _active
    if m is not None:
        _inc(m.child(m.challenge_lockouts, profile, scope))


@_never_raises
def delegated_validation(provider: str, outcome: str, seconds: float) -> None:
    """``provider``: intune | webhook; ``outcome``: allowed | denied | unavailable."""
    m = _active
    if m is not None:
        _inc(m.child(m.delegated, provider, outcome))
        _observe(m.child(m.delegated_seconds, provider, outcome), seconds)


@_never_raises
def otp_verified(client: str, status: str) -> None:
    """``client``: "signin" (the sign-in API) or a protocol 2.0 client id that exists ("unknown" otherwise)."""
    m = _active
    if m is not None:
        _inc(m.child(m.otp, client, status))


@_never_raises
def attestation_verdict(reason: str) -> None:
    m = _active
    if m is not None:
        _inc(m.child(m.attestation, reason))


@_never_raises
def group_commit(store: str, items: int, seconds: float) -> None:
    """trustkit.batching's observer: one committed batch."""
    m = _active
    if m is not None:
        _observe(m.child(m.batch_size, store), items)
        _observe(m.child(m.commit_seconds, store), seconds)


@_never_raises
def key_sign_failed(backend: str) -> None:
    """``backend``: file | pkcs11 (scep_server.ca.keys.sign_failed)."""
    m = _active
    if m is not None:
        _inc(m.child(m.key_sign_failures, backend))


@_never_raises
def mdm_brake_held(what: str) -> None:
    """``what``: sync | event (scep_server.mdm.service)."""
    m = _active
    if m is not None:
        _inc(m.child(m.brake_holds, what))


@_never_raises
def getcrl_busy(ca: str) -> None:
    """A GetCRL refused because the lane was full (scep_server.enrolment.getcrl); ``ca``: a CA loaded here."""
    m = _active
    if m is not None:
        _inc(m.child(m.getcrl_busy, ca))


@_never_raises
def send_timeout(route: str) -> None:
    """A large answer cut by the send deadline (scep_server.web.sendtime); ``route``: a route's template."""
    m = _active
    if m is not None:
        _inc(m.child(m.send_timeouts, route))


@_never_raises
def request_served() -> None:
    m = _active
    if m is not None:
        _inc(m.worker_requests)


@_never_raises
def crl_signed(published: "PublishedCrl", entries: Sequence[tuple], previous: "PublishedCrl | None",
               seconds: float, signed_at: datetime) -> None:
    """crl.publish's hook: a CRL signed and recorded by this process.

    The revocation-to-publication latency is observed once per listed entry that changed status after the
    CRL served before this one was dated (so the earlier CRL could not list it), and that the previous CRL
    signed here did not already count."""
    m = _active
    if m is None:
        return
    ca = published.ca
    m.child(m.crl_publish_seconds, ca).observe(seconds)
    if previous is None:
        return
    since = previous.this_update
    recent = frozenset((e[0], e[1]) for e in entries if e[1] is not None and e[1] >= since)
    counted = m.crl_recent.get(ca, frozenset())
    histogram = m.child(m.revocation_seconds, ca)
    for _, changed_at in recent - counted:
        histogram.observe(max(0.0, (signed_at - changed_at).total_seconds()))
    m.crl_recent[ca] = recent


# ---------------------------------------------------------------- the scrape

@dataclass(frozen=True)
class Snapshot:
    """What a scrape reports of the answering worker's state."""

    crls: Sequence["PublishedCrl"] = ()
    # (ca name, role "ca" | "ra", notAfter)
    certificates: Sequence[tuple[str, str, datetime]] = ()
    # readiness check name -> "ok" or anything else (failed)
    readiness: dict[str, str] = field(default_factory=dict)
    # (PKCS#11 token label, whether it answered the last probe): keys in a token only
    tokens: Sequence[tuple[str, bool]] = ()


class _SnapshotCollector:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        s = self.snapshot
        families = {
            "crl_number": ("CRL Number of the CRL served", lambda c: c.number),
            "crl_this_update_timestamp_seconds": ("thisUpdate of the CRL served", lambda c: c.this_update.timestamp()),
            "crl_next_update_timestamp_seconds": ("nextUpdate of the CRL served", lambda c: c.next_update.timestamp()),
            "crl_entries": ("Revoked and held certificates listed in the CRL served", lambda c: c.entries),
        }
        for name, (doc, value) in families.items():
            family = GaugeMetricFamily(name, doc, labels=["ca"])
            for crl in s.crls:
                family.add_metric([crl.ca], float(value(crl)))
            yield family
        family = GaugeMetricFamily("ca_certificate_not_after_timestamp_seconds",
                                   "notAfter of the CA, RA and next CA certificates", labels=["ca", "role"])
        for ca, role, not_after in s.certificates:
            family.add_metric([ca, role], not_after.timestamp())
        yield family
        family = GaugeMetricFamily("scep_server_ready", "Readiness checks of /readyz (1 ok, 0 failed), computed "
                                   "at this scrape", labels=["check"])
        for check, detail in sorted(s.readiness.items()):
            family.add_metric([check], 1.0 if detail == "ok" else 0.0)
        yield family
        family = GaugeMetricFamily("ca_pkcs11_token_available", "Whether the PKCS#11 token holding the CA and RA "
                                   "keys answers (1) or not (0), probed at most every few seconds", labels=["token"])
        for token, available in s.tokens:
            family.add_metric([token], 1.0 if available else 0.0)
        yield family
        family = GaugeMetricFamily("scep_server_scrape_worker", "The worker that answered this scrape (its "
                                   "process_* metrics are the ones reported)", labels=["pid"])
        family.add_metric([str(os.getpid())], 1.0)
        yield family


class _Own:
    """The metrics recorded in memory by this process (single-process mode), as one collector of the scrape."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Any]:
        return self.registry.collect()


def render(snapshot: Snapshot, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition the scraper asked for (``accept``: Prometheus text 0.0.4 by default, OpenMetrics or text
    1.0.0 when asked): recorded metrics (summed over the workers) and the snapshot."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.exposition import choose_encoder

    activate()
    assert _active is not None
    flush()  # the increments this worker holds are in the answer (the other workers' within FLUSH_SECONDS)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_SnapshotCollector(snapshot))
    ProcessCollector(registry=scrape)
    path = _multiprocess_path()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(scrape, path=path)
    else:
        scrape.register(_Own(_active.own))
    try:
        encoder, content_type = choose_encoder(accept or "")
    except (TypeError, ValueError):  # an Accept prometheus_client cannot read (`version=abc`): the text format
        encoder, content_type = choose_encoder("")
    return encoder(scrape), content_type
