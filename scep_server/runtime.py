"""The composition root: first-start initialisation, and the typed services a server (or a CLI command) uses.

`open_runtime` builds the services in dependency order and hands each its dependencies through its
constructor: the CRL service, the challenge verifiers and the device-identity lookup exist before the SCEP
service that uses them. A process opens only what it uses (:class:`Uses`): the server every capability that
is switched on, a CLI command the few services it calls. Optional capabilities (`[otp]`, `[binding]`,
`[challenge]` with ``enabled = false``) are never built when off.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Union

from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit.clock import Clock, utcnow
from trustkit.db import create_engine

from .ca.loaded import LoadedCas
from .ca.names import ca_names
from .config import Settings, enabled
from .tokens import TokenStore

if TYPE_CHECKING:
    from otp.service import OtpService

    from .binding.service import BindingServices
    from .ca.authority import CertificateAuthority
    from .ca.queries import CertificateQueries
    from .ca.revocation import RevocationService
    from .challenge.service import ChallengeService
    from .console.sessions import ConsoleSessions
    from .crlwiring.service import CrlService
    from .ocspwiring.service import OcspService
    from .enrolment import ScepService
    from .mdm.service import MdmService
    from .profiles import ProfileStore

# a readiness check returns its detail ("ok" or "error: ..."), or an awaitable of it
Check = Callable[[], Union[str, Awaitable[str]]]


class Readiness(dict[str, Check]):
    """The checks /readyz computes at each request, by name (services and the job supervisor add theirs)."""

    def add(self, name: str, check: Check) -> None:
        self[name] = check


class CapabilityOff(Exception):
    """A command needs a capability the configuration switches off."""


class CaKeysUnavailable(Exception):
    """The CA's private keys cannot be read (a wrong passphrase, an unreadable file)."""


class StartError(Exception):
    """The data directory or the database cannot be used (not writable, full, unreachable, not a database)."""


class ForeignCa(Exception):
    """The database records another CA under this CA's name: the data directory and the database belong to
    different deployments (or this instance was not given the deployment's CA directory)."""


@dataclass(frozen=True)
class Uses:
    """What a process opens. The core (engine, profiles, tokens) is always there; the rest on demand.

    ``ca_keys``: the CA and RA private keys (the passphrase); the services that sign need them.
    ``complete()`` adds what the services named depend on.
    """

    ca_keys: bool = False
    revocation: bool = False  # certificate status changes (hold, release, revoke)
    scep: bool = False
    crl: bool = False
    ocsp: bool = False  # the OCSP responder (needs the CA keys)
    otp: bool = False
    otp_kek: bool = True  # with ``otp``: the key-encryption key (commands that never seal nor open do without)
    binding: bool = False
    challenge: bool = False
    console: bool = False  # the admin console's sessions

    @classmethod
    def server(cls, settings: Settings) -> "Uses":
        """Everything that is switched on (what `serve` and the application open)."""
        return cls(ca_keys=True, revocation=True, scep=True, crl=True, ocsp=settings.ocsp.enabled,
                   otp=settings.otp.enabled,
                   binding=settings.binding.enabled, challenge=settings.challenge.enabled,
                   console=settings.console.enabled)

    @classmethod
    def issuing(cls, settings: Settings) -> "Uses":
        """The SCEP service with the hooks of the capabilities that are on (a command that issues), no CRL."""
        return cls(scep=True, binding=settings.binding.enabled, challenge=settings.challenge.enabled)

    def complete(self) -> "Uses":
        """Add what the services asked for depend on (the services that sign need the CA keys)."""
        return dataclasses.replace(self, ca_keys=self.ca_keys or self.scep or self.crl or self.ocsp,
                                   revocation=self.revocation or self.scep or self.crl or self.ocsp or self.binding)


@dataclass
class Runtime:
    """The services of one process. Optional services are None when the capability is off or not opened."""

    settings: Settings
    engine: AsyncEngine
    clock: Clock
    tokens: TokenStore
    # CA name -> CA (with its private keys); empty when the process did not open the keys
    cas: "LoadedCas" = field(default_factory=LoadedCas)
    revocation: "RevocationService | None" = None
    scep: "ScepService | None" = None
    crl: "CrlService | None" = None
    # CA name -> its recorded CRL partition count (crl.partitions), for the CAs of `cas` that publish partitions
    crl_partitions: dict[str, int] = field(default_factory=dict)
    ocsp: "OcspService | None" = None  # the OCSP responder ([ocsp] enabled, server only)
    otp: "OtpService | None" = None
    binding: "BindingServices | None" = None
    challenges: "ChallengeService | None" = None
    console: "ConsoleSessions | None" = None  # the admin console's sessions ([console] enabled, server only)
    readiness: Readiness = field(default_factory=Readiness)
    # told of each CA loaded after the start (a rollover activated elsewhere: scep_server.ca.lifecycle)
    ca_listeners: "list[Callable[[str], Awaitable[None]]]" = field(default_factory=list)
    ca_pick_up: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    # CA name -> why: an earlier CA whose keys are not in the PKCS#11 token, not loaded (runtime._load_token_cas)
    skipped_cas: dict[str, str] = field(default_factory=dict)
    _profiles: "ProfileStore | None" = field(default=None, repr=False)
    _certificates: "CertificateQueries | None" = field(default=None, repr=False)
    _mdm: "MdmService | None" = field(default=None, repr=False)

    @property
    def mdm(self) -> "MdmService":
        """The MDM sources and their sync, made on first use (needs device binding open)."""
        if self._mdm is None:
            from .mdm.feature import open_mdm

            self._mdm = open_mdm(self)
        return self._mdm

    @property
    def profiles(self) -> "ProfileStore":
        """The profile store, made on first use (it loads the certificate templates' checks, which a command
        that does not touch profiles never needs)."""
        if self._profiles is None:
            from .profiles import ProfileStore

            self._profiles = ProfileStore(self.engine, clock=self.clock)
        return self._profiles

    @property
    def certificates(self) -> "CertificateQueries":
        """Administrators' reads of the inventory, made on first use (they load the certificate and CRL
        encoders, which a command that lists no certificate never needs)."""
        if self._certificates is None:
            self._certificates = _certificate_queries(self.settings, self.engine)
        return self._certificates


def _engine(settings: Settings) -> AsyncEngine:
    return create_engine(settings.database_url(), pool_size=settings.database.pool_size,
                         sqlite_synchronous=settings.database.sqlite_synchronous)


def key_store(settings: Settings, pool_size: int | None = None):
    """The PKCS#11 key store of `[ca] key_backend = "pkcs11"` (None for key files): a pool of `pool_size`
    sessions, by default one per SCEP thread plus two (CRL signing, the event loop). Raises HsmError."""
    if settings.ca.key_backend != "pkcs11":
        return None
    from .ca.pkcs11 import HsmSettings, Pkcs11Keys, read_pin
    from .enrolment.service import scep_threads

    ca = settings.ca
    pin = read_pin(ca.pkcs11_pin_env, Path(ca.pkcs11_pin_file) if ca.pkcs11_pin_file else None)
    return Pkcs11Keys(HsmSettings(
        module=ca.pkcs11_module or "", token_label=ca.pkcs11_token_label or "", pin=pin,
        ca_key_label=ca.ca_key_label, ra_key_label=ca.ra_key_label,
        pool_size=pool_size or scep_threads(settings.server.scep_threads, settings.server.workers) + 2))


def _load_or_create_ca(settings: Settings, now: datetime, report: list[str]) -> "CertificateAuthority":
    from .ca.authority import load_or_create_ca
    from .ca.keys import load_or_create_passphrase

    directory = settings.ca_dir()
    store = key_store(settings, pool_size=1)
    base = settings.server.public_base_url()
    try:
        passphrase = (load_or_create_passphrase(settings.ca.passphrase_env, settings.passphrase_path(),
                                                keys_in=directory.parent) if store is None else b"")
        ca, created = load_or_create_ca(
            directory, name=settings.ca.name, subject=settings.ca.subject, ra_subject=settings.ca.ra_subject,
            key_size=settings.ca.key_size, validity_days=settings.ca.validity_days,
            ra_validity_days=settings.ca.ra_validity_days, passphrase=passphrase, base_url=base, now=now,
            key_type=settings.ca.key_type, key_store=store, ra_mode=settings.ca.ra_mode)
    except (ValueError, TypeError) as exc:  # a wrong passphrase, a key that is not the certificate's
        raise _keys_unavailable(settings, directory, exc) from None
    except OSError as exc:  # not writable, no room left, not a directory
        raise StartError(f"cannot create or read the CA in {directory}: {_reason(exc)}") from None
    finally:
        if store is not None:
            store.close()  # this process (a `serve` parent about to fork) keeps no session open
    if not created:
        return ca
    key_type = {"ec-p256": "EC P-256", "ec-p384": "EC P-384"}.get(settings.ca.key_type,
                                                                   f"RSA {settings.ca.key_size}")
    report.append(f"created CA {ca.name!r} ({ca.cert.subject.rfc4514_string()}, {key_type} key) in {directory}")
    report.append(f"  CA certificate: {directory / 'ca.crt'}  SHA-256 {ca.fingerprint_sha256}")
    if ca.ra_mode == "split":
        report.append(f"  split RA certificates: {directory / 'ra.crt'} signs, {directory / 'ra-enc.crt'} decrypts")
    if store is not None:
        report.append(f"  keys {settings.ca.ca_key_label!r} (CA) and {settings.ca.ra_key_label!r} (RA) in PKCS#11 "
                      f"token {settings.ca.pkcs11_token_label!r}")
    else:
        report.append(f"  keys encrypted with the passphrase in ${settings.ca.passphrase_env} or "
                      f"{settings.passphrase_path()}")
    report.extend(base_url_notice(settings))
    return ca


def base_url_notice(settings: Settings) -> list[str]:
    """First start without server.base_url: what certificates will name, and how to set the public URL."""
    server = settings.server
    if server.base_url:
        return []
    how = ("set server.base_url in the configuration file (or SCEP_SERVER_SERVER__BASE_URL) to the URL devices "
           "reach, e.g. https://scep.example.com")
    if server.issuing_refusal() is not None:
        return [f"  no certificate is issued: server.listen is {server.listen} and server.base_url is not set; {how}"]
    return [f"  certificates will name {server.public_base_url()} as their CRL and CA certificate location "
            f"(server.base_url is not set); {how}"]


async def initialise(settings: Settings, *, clock: Clock = utcnow, default_profile: bool | None = True) -> list[str]:
    """First start: data directory, database schema, CA and RA, a `default` static profile. Idempotent.

    ``default_profile``: True makes the `default` profile when there is no profile, False never, None only on the
    start that creates the CA (a server's restart does not bring back a profile an administrator deleted).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from trustkit.db import writer

    from .ca import inventory
    from .profiles import ProfileStore
    from .store.migrate import upgrade

    report: list[str] = []
    now = clock()
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartError(f"cannot create the data directory {settings.data_dir}: {_reason(exc)}") from None
    try:
        engine = _engine(settings)
    except SQLAlchemyError as exc:  # a URL SQLAlchemy cannot read
        raise database_unusable(settings, exc) from None
    try:
        try:
            await upgrade(engine)
            recorded = await _recorded_ca(engine, settings.ca.name)
        except (SQLAlchemyError, OSError) as exc:  # unreachable, refused, not a database, read-only, full
            raise database_unusable(settings, exc) from None
        if recorded is not None and _no_ca_files(settings.ca_dir()):
            raise ForeignCa(
                f"the database records CA {settings.ca.name!r} (SHA-256 {recorded}), made by another instance (or "
                f"before this CA directory was emptied), and {settings.ca_dir()} holds no CA: give this instance "
                "that CA directory and its passphrase (a shared volume or a copy) instead of making a second CA under "
                "the same name; nothing was written")
        ca = _load_or_create_ca(settings, now, report)
        if recorded is not None and recorded != ca.fingerprint_sha256:
            raise ForeignCa(
                f"the CA in {settings.ca_dir()} (SHA-256 {ca.fingerprint_sha256}) is not the CA {settings.ca.name!r} "
                f"the database records (SHA-256 {recorded}): this data directory and the database belong to "
                "different deployments")
        if default_profile is None:
            default_profile = bool(report)  # the CA was created just now
        try:
            async with writer(engine).begin() as conn:
                await inventory.register_ca(conn, ca, now)
            store = ProfileStore(engine)
            if default_profile and not await store.list():
                path = settings.data_dir / "default-challenge.txt"
                if await _create_default_profile(store, ca.name, path, now):
                    report.append(f"created static SCEP profile 'default': "
                                  f"{settings.server.public_base_url()}/scep/default")
                    report.append(f"  its challenge password is in {path}")
        except SQLAlchemyError as exc:
            raise database_unusable(settings, exc) from None
    finally:
        await engine.dispose()
    if report:
        report.insert(0, f"database: {_shown_url(settings)}")  # never its password: the output goes to logs
    return report


def database_unusable(settings: Settings, exc: BaseException) -> StartError:
    """The StartError of a database that cannot be used: its URL without the password, and the driver's reason."""
    return StartError(f"cannot use the database {_shown_url(settings)}: {_reason(exc)}{_unwritable_directory(settings)}")


def database_failure(exc: BaseException) -> bool:
    """Whether `exc` is the database's or the way to it: the driver's error, a connection refused or timed out, a
    host name that does not resolve, no route to the host, no PostgreSQL socket (an OSError naming no file)."""
    import socket

    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, (SQLAlchemyError, ConnectionError, socket.gaierror, TimeoutError)) or (
        isinstance(exc, OSError) and exc.errno is not None and exc.filename is None)


def _unwritable_directory(settings: Settings) -> str:
    """Where the SQLite database's directory cannot be written, a note saying so: SQLite keeps a WAL database's
    -wal and -shm files beside it, and needs them even to read it ("attempt to write a readonly database")."""
    import os

    from trustkit.sqlitereads import sqlite_path

    path = sqlite_path(settings.database_url())
    if path is None or not path.parent.is_dir() or os.access(path.parent, os.W_OK):
        return ""
    return (f" ({path.parent} is not writable: SQLite keeps the database's -wal and -shm files there, even to "
            "read it)")


def _reason(exc: BaseException) -> str:
    """One line saying why: the driver's own error for a database error, the system's for an OSError."""
    cause = getattr(exc, "orig", None) or exc
    text = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    lines = text.strip().splitlines()
    kind = type(cause).__name__
    return f"{'' if kind == 'Error' else kind + ': '}{lines[0] if lines else ''}".rstrip(": ")


def _shown_url(settings: Settings) -> str:
    """The database's URL without its password."""
    from trustkit.db import shown_url

    try:
        return shown_url(settings.database_url())
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot read: its scheme only
        return settings.database_url().split(":", 1)[0]


def _keys_unavailable(settings: Settings, directory: Path, exc: Exception) -> CaKeysUnavailable:
    hint = (f" (is ${settings.ca.passphrase_env} or {settings.passphrase_path()} the right passphrase?)"
            if any(word in str(exc).lower() for word in ("password", "decrypt")) else "")
    return CaKeysUnavailable(f"cannot read the CA keys in {directory}{hint}: {exc}")


def _no_ca_files(directory: Path) -> bool:
    """Whether a CA directory holds nothing a start would load (a key without its certificate is
    authority.CAFilesExist's to name)."""
    from .ca.authority import LOCK_FILE

    return not directory.is_dir() or all(p.name == LOCK_FILE for p in directory.iterdir())


async def _recorded_ca(engine: AsyncEngine, name: str) -> str | None:
    """The SHA-256 of the CA certificate the database records under `name`, or None."""
    import sqlalchemy as sa

    from .store.tables import cas

    async with engine.connect() as conn:
        return (await conn.execute(sa.select(cas.c.fingerprint_sha256).where(cas.c.name == name))).scalar()


async def _create_default_profile(store: "ProfileStore", ca: str, path: Path, now: datetime) -> bool:
    """Make the `default` static profile, its secret in `path`; False when another process starting at the same
    moment made it first (its secret is the one in `path`, which this process leaves alone).

    The secret is written (durably, under a name of its own) before the profile exists and renamed to `path`
    once it does: a write that fails (no room left) leaves no profile whose secret nobody has, and the next
    start makes it again."""
    import os

    from .ca.keys import durable_write, fsync_directory
    from .profiles import ProfileExists, ProfileSettings, new_static_secret

    secret = new_static_secret()
    staged = path.with_name(f"{path.name}.{os.getpid()}.new")
    try:
        durable_write(staged, secret.encode() + b"\n")
    except OSError as exc:
        raise StartError(f"cannot write {path}: {_reason(exc)}; the default profile was not made") from None
    try:
        await store.create("default", ca=ca, challenge_kind="static", static_secret=secret, now=now,
                           settings=ProfileSettings(device_trust=False))
    except BaseException as exc:
        staged.unlink(missing_ok=True)
        if isinstance(exc, ProfileExists):
            return False
        raise
    os.replace(staged, path)
    fsync_directory(path.parent)
    return True


def load_cas(settings: Settings, skipped: dict[str, str] | None = None) -> "dict[str, CertificateAuthority]":
    """The CAs of the deployment with their keys, the issuing one first. With the keys in a PKCS#11 token a CA
    other than the issuing one whose keys are not there (or not its) is left out, named in ``skipped`` with
    why (see _load_token_cas)."""
    from .ca.authority import load_ca
    from .ca.keys import load_or_create_passphrase

    names = ca_names(settings)
    if settings.ca.key_backend == "pkcs11":  # every CA's keys in the token, by its directory's labels
        return _load_token_cas(settings, names, {} if skipped is None else skipped)
    try:
        passphrase = load_or_create_passphrase(settings.ca.passphrase_env, settings.passphrase_path(),
                                               keys_in=settings.ca_dir().parent)
    except ValueError as exc:  # none, and the CA keys need one: never a new random one
        raise CaKeysUnavailable(str(exc)) from None
    cas = {}
    for name in names:
        directory = settings.ca_dir(name)
        try:
            ca = load_ca(directory, name=name, passphrase=passphrase, base_url=settings.server.public_base_url(),
                         ca_decrypts=settings.ca.ca_key_decrypts())
        except (ValueError, TypeError, PermissionError) as exc:
            raise CaKeysUnavailable(f"cannot read the CA keys in {directory} (is ${settings.ca.passphrase_env} or "
                                    f"{settings.passphrase_path()} the right passphrase?): {exc}") from None
        cas[name] = ca
    return cas


def _load_token_cas(settings: Settings, names: list[str], skipped: dict[str, str]
                    ) -> "dict[str, CertificateAuthority]":
    """The CAs whose keys are in the token, over one pool of sessions: the first CA's keys by the settings'
    labels, those of a CA made by a rollover by the labels its directory records (scep_server.ca.keylabels).

    The issuing CA (``names[0]``) must load (CaKeysUnavailable otherwise), and so must every CA while the token
    cannot be used. An earlier CA whose keys the token does not hold, or holds but not as the keys of its
    certificates (an old generation's key deleted from the token, a directory of a file-based rollover made
    before the keys moved to the token), is left out with a warning (``ca.skipped``) and recorded in
    ``skipped``: the server issues, and that CA's CRL is no longer published (README "PKCS#11")."""
    from .ca.authority import load_ca
    import structlog

    from .ca.pkcs11 import HsmError, KeyNotInToken

    log = structlog.get_logger("ca")
    store, cas, name = None, {}, names[0]
    try:
        store = key_store(settings)
        for name in names:
            try:
                cas[name] = load_ca(settings.ca_dir(name), name=name, passphrase=b"", key_store=store,
                                    base_url=settings.server.public_base_url(),
                                    ca_decrypts=settings.ca.ca_key_decrypts())
            except (KeyNotInToken, ValueError, TypeError) as exc:
                # the token's answer: no such key, or not this CA's (a key that does not match its certificate is
                # a ValueError). Any other failure of the token (it is away, a search refused) is no answer about
                # the key: the start fails, rather than leave out a CA whose CRL must go on being published
                if name == names[0]:
                    raise
                skipped[name] = f"{exc.__class__.__name__}: {exc}"
                log.warning("ca.skipped", ca=name, error=skipped[name])
    except (HsmError, ValueError, TypeError) as exc:
        if store is not None:
            store.close()
        where = f" for CA {name!r}" if len(names) > 1 else ""
        raise CaKeysUnavailable(f"cannot use the CA keys in PKCS#11 token {settings.ca.pkcs11_token_label!r}{where}: "
                                f"{exc}") from None
    return cas


def release_keys(cas: "dict[str, CertificateAuthority]") -> None:
    """Close what the CAs' keys hold open (PKCS#11 sessions); key files hold nothing."""
    for ca in cas.values():
        for key in (ca.key, ca.ra_key):  # a PKCS#11 CA has one RA key (no split RA certificates there)
            close = getattr(key, "close", None)
            if close is not None:
                close()


def _check_on(settings: Settings, uses: Uses) -> None:
    for capability in ("otp", "binding", "challenge"):
        if getattr(uses, capability) and not enabled(settings, capability):
            raise CapabilityOff(f"the {capability} capability is switched off in this deployment "
                                f"([{capability}] enabled = false)")


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, *, clock: Clock = utcnow, uses: Uses | None = None
                       ) -> AsyncIterator[Runtime]:
    """Build the services `uses` names (default: the server's) over one engine; close them and the engine on exit.

    Raises CapabilityOff when `uses` names a capability the configuration switches off, FileNotFoundError
    when the CA keys are asked for before `init`.
    """
    uses = (uses or Uses.server(settings)).complete()
    _check_on(settings, uses)
    ca_names(settings)  # an initialised data directory (checked without reading a key)
    engine = _engine(settings)
    try:
        async with contextlib.AsyncExitStack() as stack:
            skipped: dict[str, str] = {}
            runtime = Runtime(settings=settings, engine=engine, clock=clock, tokens=TokenStore(engine, clock=clock),
                              cas=LoadedCas(load_cas(settings, skipped) if uses.ca_keys else {}), skipped_cas=skipped)
            stack.callback(release_keys, runtime.cas)  # last, after the SCEP threads have stopped
            if uses.revocation:
                from .ca.revocation import RevocationService

                runtime.revocation = RevocationService(engine, clock=clock)
            if runtime.cas and (uses.crl or settings.crl.partitioning):
                await _crl_partitioning(runtime)
            if uses.crl:
                from .crlwiring.feature import open_crl

                runtime.crl = await stack.enter_async_context(open_crl(runtime))
            if uses.ocsp and settings.ocsp.enabled:
                from .ocspwiring.feature import open_ocsp

                runtime.ocsp = await stack.enter_async_context(open_ocsp(runtime))
            if uses.otp:
                from .otpwiring.service import open_otp

                runtime.otp = await stack.enter_async_context(open_otp(runtime, with_kek=uses.otp_kek))
            if uses.challenge:
                from .challenge.feature import open_challenges

                runtime.challenges = await stack.enter_async_context(open_challenges(runtime))
            if uses.binding:
                from .binding.feature import open_binding

                runtime.binding = await stack.enter_async_context(open_binding(runtime))
            stack.push_async_callback(runtime.tokens.close)  # the last uses still queued, before the engine closes
            if uses.console and settings.console.enabled:
                from .console.sessions import ConsoleSessions

                runtime.console = ConsoleSessions(engine, clock=clock, idle_timeout=settings.console.idle_timeout,
                                                  lifetime=settings.console.lifetime)
            if uses.scep:
                runtime.scep = await stack.enter_async_context(_open_scep(runtime))
            yield runtime
        if settings.audit.chain:  # what this process wrote is sealed before it ends (a command's changes)
            await _seal_on_exit(runtime)
    finally:
        await engine.dispose()


async def _crl_partitioning(runtime: Runtime) -> None:
    """With ``crl.partitioning`` on, record each CA's partition count (the first record wins) and have its
    certificates name their partition; either way, every CA with a recorded count publishes its partitions
    (certificates issued while partitioning was on name them, even once it is off)."""
    from crl.partitions import partition_count, record_partitioning, recorded_partitioning

    crl = runtime.settings.crl
    if crl.partitioning:
        count = partition_count(crl.partition_expected_certificates, crl.partition_target_size)
        for name, ca in runtime.cas.items():
            ca.crl_partitions = await record_partitioning(runtime.engine, name, count, runtime.clock())
    recorded = await recorded_partitioning(runtime.engine)
    runtime.crl_partitions = {name: n for name, n in recorded.items() if name in runtime.cas}


def _certificate_queries(settings: Settings, engine: AsyncEngine) -> "CertificateQueries":
    """The inventory's reads, with the devices' bindings when the binding capability is on (its tables are
    read, so a process that did not open the binding services still filters by device)."""
    from .ca.queries import CertificateQueries

    links = None
    if enabled(settings, "binding"):
        from .binding.certlinks import BoundCertificates

        links = BoundCertificates()
    return CertificateQueries(engine, device_links=links)
async def _seal_on_exit(runtime: Runtime) -> None:
    from .audit.service import seal

    import structlog

    try:
        await seal(runtime)
    except Exception as exc:  # noqa: BLE001 - a running server's sealer, or the next command, seals them
        log = structlog.get_logger(__name__)
        if _may_not_write(exc):  # a listing on a SELECT-only role, a read-only file or a standby: it wrote nothing
            log.info("audit.seal.skipped", reason=f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
        else:
            log.error("audit.seal.failed", error=f"{exc.__class__.__name__}: {exc}")


def _may_not_write(exc: BaseException) -> bool:
    """Whether a failure says this process may not write the database at all: PostgreSQL's permission denied
    (SQLSTATE 42501) or read-only transaction (25006, a standby), SQLite's read-only database."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) in ("42501", "25006"):
        return True
    return "attempt to write a readonly database" in str(orig)


@contextlib.asynccontextmanager
async def _open_scep(runtime: Runtime) -> AsyncIterator["ScepService"]:
    """The SCEP service, with the hooks of the capabilities that are open."""
    from .ca.lifecycle import pick_up_cas
    from .enrolment import ScepService, scep_threads

    verifiers = {}
    if runtime.challenges is not None:
        from .challenge.service import DelegatedVerifier, DynamicVerifier

        verifiers = {"dynamic": DynamicVerifier(runtime.challenges), "delegated": DelegatedVerifier(runtime.challenges)}
    assert runtime.revocation is not None
    service = ScepService(
        engine=runtime.engine, cas=runtime.cas, profiles=runtime.profiles, clock=runtime.clock, verifiers=verifiers,
        crl_source=runtime.crl.crl_source if runtime.crl is not None else None,
        device_identity=runtime.binding.devices.enrolment_device if runtime.binding is not None else None,
        ensure_device=runtime.binding.devices.ensure if runtime.binding is not None else None,
        on_status_change=runtime.revocation.notify_changed,
        threads=scep_threads(runtime.settings.server.scep_threads, runtime.settings.server.workers),
        getcrl_queue=runtime.settings.server.scep_getcrl_queue,
        refuse_issuing=runtime.settings.server.issuing_refusal(), ocsp_aia=runtime.settings.ocsp.enabled,
        pick_up_cas=functools.partial(pick_up_cas, runtime))
    try:
        yield service
    finally:
        await service.close()
