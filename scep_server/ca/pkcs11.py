"""CA and RA keys in a PKCS#11 token (an HSM, or SoftHSM): KeyOps whose private keys never leave the token.

The keys are found by label; `init` generates missing ones in the token (sensitive, not extractable). A pool of
sessions, one per signing thread, is opened once per process after a single login; a thread waits for a free
session rather than sharing one (a PKCS#11 session serves one operation at a time). When the token goes away
and comes back (an HSM restarted, a network HSM reconnected), the sessions are opened again and the operation
retried once (SessionPool.call); while it is away, operations fail at once with TokenUnavailable (a 503).

python-pkcs11 initialises the module with C_Initialize(NULL), which tells it that no two threads call it at once
(PKCS#11 §5.4: no OS locking), and SoftHSM then takes no locks: concurrent calls corrupt its state (a PKCS#1
decryption fails at random). So the calls of one process into the module are serialised by a lock; each
forked worker has its own module instance and its own lock.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustkit.problems import ServiceUnavailable

from .keys import sign_failed
from .tbs import SignsCertificates

log = structlog.get_logger("ca.pkcs11")
T = TypeVar("T")

_CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}


class HsmError(RuntimeError):
    """The token cannot serve the CA: module, token, PIN or key missing or wrong. The message says which."""


@dataclass(frozen=True)
class HsmSettings:
    module: str
    token_label: str
    pin: str = field(repr=False)  # never in a log line, an error or a traceback that shows this object
    ca_key_label: str
    ra_key_label: str
    pool_size: int


def read_pin(pin_env: str, pin_file: Path | None) -> str:
    """The user PIN: from the environment variable named `pin_env`, else from `pin_file`."""
    value = os.environ.get(pin_env)
    if value:
        return value
    if pin_file is not None:
        try:
            data = pin_file.read_text().strip()
        except OSError as exc:
            raise HsmError(f"cannot read the PKCS#11 PIN file {pin_file}: {exc.strerror}") from None
        if data:
            return data
        raise HsmError(f"the PKCS#11 PIN file {pin_file} is empty")
    raise HsmError(f"no PKCS#11 PIN: set ${pin_env} or ca.pkcs11_pin_file")


_init_lock = threading.Lock()
_initialised_in: dict[str, int] = {}  # module path -> pid that initialised it
_call_locks: dict[str, threading.Lock] = {}  # module path -> the lock every call into it holds (see above)


def _call_lock(module: str) -> threading.Lock:
    with _init_lock:
        return _call_locks.setdefault(module, threading.Lock())


def _library(module: str):
    import pkcs11

    if not Path(module).is_file():
        raise HsmError(f"PKCS#11 module {module} does not exist (ca.pkcs11_module)")
    try:
        lib = pkcs11.lib(module)
    except pkcs11.PKCS11Error as exc:
        raise HsmError(f"cannot load the PKCS#11 module {module}: {exc}") from None
    with _init_lock:
        pid = os.getpid()
        if _initialised_in.setdefault(module, pid) != pid:
            lib.reinitialize()  # a forked worker: PKCS#11 state is not inherited across fork
            _initialised_in[module] = pid
            _call_locks[module] = threading.Lock()  # nor is a lock another thread of the parent held
    return lib


class KeyNotInToken(HsmError):
    """The token holds no usable key under a label: none, or one of a kind or size the CA cannot use. What the
    token answers about it is no doubt, unlike a failure of the search itself (a plain HsmError)."""


class TokenUnavailable(HsmError, ServiceUnavailable):
    """The token cannot be used now (gone, restarting, or its sessions could not be reopened): the operation
    failed without waiting, a later one tries the token again. Answered 503 to a client."""

    code = "token_unavailable"

    def __init__(self, detail: str) -> None:
        ServiceUnavailable.__init__(self, detail)


RECONNECT_BACKOFF = (1.0, 30.0)
"""Seconds a failed reopening of the sessions is not retried for: the first, doubling up to the second."""
CALL_TIMEOUT = 30.0
"""Seconds a key operation waits for a session and the module's call lock before it fails (a hung token)."""


def _gone(exc: BaseException) -> bool:
    """Whether a PKCS#11 failure says the session, the login or the token is gone (retried on new sessions),
    not that the operation itself is wrong (bad data, a refused mechanism: never retried). CKR_GENERAL_ERROR is
    not one: SoftHSM answers it to a PKCS#1 v1.5 decryption whose padding is wrong."""
    import pkcs11

    if isinstance(exc, (pkcs11.SessionHandleInvalid, pkcs11.SessionClosed, pkcs11.DeviceRemoved,
                        pkcs11.TokenNotPresent, pkcs11.TokenNotRecognised, pkcs11.DeviceError,
                        pkcs11.UserNotLoggedIn, pkcs11.ObjectHandleInvalid, pkcs11.KeyHandleInvalid,
                        pkcs11.NoSuchKey)):
        return True
    # CKR_CRYPTOKI_NOT_INITIALIZED (the module was finalised) has no class of its own in python-pkcs11
    return type(exc) is pkcs11.PKCS11Error and "not initialized" in str(exc)


class _Sessions:
    """One generation of logged-in sessions; replaced as a whole when the token comes back."""

    def __init__(self, generation: int, token, sessions: list) -> None:
        self.generation, self.token, self.all = generation, token, sessions
        self.free: queue.LifoQueue = queue.LifoQueue()
        for s in sessions:
            self.free.put(s)
        self.keys: dict[tuple[int, str, object], object] = {}  # (id(session), label, class) -> key object


class SessionPool:
    """Logged-in sessions of one token, lent to one thread at a time.

    When the token goes away (its sessions fail with CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED,
    CKR_TOKEN_NOT_PRESENT, CKR_CRYPTOKI_NOT_INITIALIZED and the like), :meth:`call` drops every session, opens
    new ones (logged in again, the keys found again by label) and runs the operation once more. One thread
    reopens; the others wait for it and use its sessions. A reopening that fails makes the operation fail at
    once with :class:`TokenUnavailable`, and so does every operation for a back-off (1 s doubling to 30 s)
    before the next attempt.
    """

    def __init__(self, settings: HsmSettings):
        self.settings = settings
        self.label = settings.token_label
        lib = _library(settings.module)
        self._lock = _call_lock(settings.module)
        self._reconnect_lock = threading.Lock()
        self._closed = False
        self._failures = 0  # reopenings failed in a row
        self._retry_at = 0.0  # time.monotonic() before which no reopening is attempted
        self._error = ""  # why the last reopening failed
        self.backoff = RECONNECT_BACKOFF
        self.timeout = CALL_TIMEOUT
        self.reconnects = 0  # successful reopenings
        self._labels: set[str] = set()  # the key labels used so far: found again when the sessions are reopened
        # label -> (why its last signature failed, a probe signature): while set, the token is not ready (probe)
        self._sign_failures: dict[str, tuple[str, Callable[[float], object]]] = {}
        self._generation = 1
        with self._lock:
            self._state: _Sessions | None = self._open(lib, generation=1)

    def _open(self, lib, *, generation: int) -> _Sessions:
        import pkcs11

        settings = self.settings
        try:
            token = lib.get_token(token_label=settings.token_label)
        except pkcs11.NoSuchToken:
            raise HsmError(f"no PKCS#11 token labelled {settings.token_label!r} in {settings.module} "
                           "(ca.pkcs11_token_label)") from None
        except pkcs11.MultipleTokensReturned:
            raise HsmError(f"several PKCS#11 tokens are labelled {settings.token_label!r}") from None
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"cannot list the tokens of {settings.module}: {type(exc).__name__} {exc}") from None
        try:
            first = token.open(rw=True, user_pin=settings.pin)
        except pkcs11.UserAlreadyLoggedIn:  # another pool of this process holds the login (it is per token)
            first = token.open(rw=True)
        except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
            raise HsmError(f"the PKCS#11 PIN of token {self.label!r} is wrong") from None
        except pkcs11.PinLocked:
            raise HsmError(f"the PKCS#11 user PIN of token {self.label!r} is locked") from None
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"cannot open a session on token {self.label!r}: {type(exc).__name__} {exc}") from None
        sessions = [first]
        try:
            for _ in range(settings.pool_size - 1):
                sessions.append(token.open(rw=True))
        except pkcs11.PKCS11Error as exc:
            for s in sessions:
                with contextlib.suppress(Exception):
                    s.close()
            raise HsmError(f"cannot open a session on token {self.label!r}: {type(exc).__name__} {exc}") from None
        return _Sessions(generation, token, sessions)

    @property
    def size(self) -> int:
        state = self._state
        return len(state.all) if state is not None else 0

    @property
    def generation(self) -> int:
        state = self._state
        return state.generation if state is not None else 0

    def _borrow(self, timeout: float) -> tuple[_Sessions, object]:
        """A free session of the current generation (reopening the sessions first when they are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise HsmError(f"the sessions of PKCS#11 token {self.label!r} are closed")
            state = self._state
            if state is None:
                self._reconnect(0)
                continue
            try:
                return state, state.free.get(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise TokenUnavailable(f"no session of PKCS#11 token {self.label!r} was free within "
                                           f"{timeout:g} s") from None

    @contextlib.contextmanager
    def _locked(self, timeout: float | None = None) -> Iterator[None]:
        timeout = self.timeout if timeout is None else timeout
        if not self._lock.acquire(timeout=timeout):
            raise TokenUnavailable(f"PKCS#11 token {self.label!r} did not answer within {timeout:g} s")
        try:
            yield
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def session(self) -> Iterator:
        """A session of the pool, with the module's call lock held while it is used (no reopening: see call)."""
        state, s = self._borrow(self.timeout)
        try:
            with self._locked():
                yield s
        finally:
            state.free.put(s)

    def call(self, operation: Callable[[object, Callable[[str], object]], T], *, timeout: float | None = None,
             uniform: bool = False) -> T:
        """``operation(session, key)`` on a session of the pool (``key(label)`` the private key labelled so, as
        that session sees it), with the module's call lock held; run once more on new sessions when the token
        went away in between (see the class). TokenUnavailable when it is not back, or when no session and
        lock were had within ``timeout`` seconds (default: ``self.timeout``).

        ``uniform`` (a decryption): an operation that fails again on the new sessions raises its own error, as
        any other failure of the operation does, never TokenUnavailable: whether the answer is a 503 must not
        depend on the ciphertext (a token might answer a bad padding with an error that reads as "gone")."""
        timeout = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            state, s = self._borrow(timeout)
            try:
                with self._locked(timeout):
                    return operation(s, functools.partial(self._private_key, state, s))
            except Exception as exc:
                if not _gone(exc):
                    raise
                if attempt == 2:
                    if uniform:
                        raise
                    raise TokenUnavailable(f"PKCS#11 token {self.label!r} failed again after its sessions were "
                                           f"reopened: {type(exc).__name__} {exc}".rstrip()) from None
                log.warning("ca.pkcs11.session_lost", token=self.label, error=type(exc).__name__)
                self._reconnect(state.generation)
            finally:
                state.free.put(s)
        raise AssertionError("unreachable")

    def _private_key(self, state: _Sessions, session, label: str, key_class=None):
        import pkcs11

        cache_key = (id(session), label, key_class)
        key = state.keys.get(cache_key)
        if key is None:
            key = session.get_key(object_class=key_class or pkcs11.ObjectClass.PRIVATE_KEY, label=label)
            state.keys[cache_key] = key
            if key_class is None:
                self._labels.add(label)
        return key

    def sign_failed(self, label: str, error: str, retry: Callable[[float], object]) -> None:
        """The key ``label`` failed to sign (the token answered an error, not its absence): :meth:`probe` reports
        the token not ready until ``retry(timeout)``, a signature with that key, succeeds."""
        self._sign_failures[label] = (error, retry)

    def signed(self, label: str) -> None:
        """The key ``label`` signed: whatever failure it had is over."""
        if self._sign_failures:
            self._sign_failures.pop(label, None)

    def track(self, label: str) -> None:
        """A key label the deployment uses: found again when the sessions are reopened, and by :meth:`probe`."""
        self._labels.add(label)

    def untrack(self, label: str) -> None:
        """A key label no longer used (its key was deleted): neither looked for when the sessions are reopened nor
        by :meth:`probe`, and no key object of it is kept."""
        self._labels.discard(label)
        self._sign_failures.pop(label, None)
        state = self._state
        if state is not None:
            for cache_key in [k for k in list(state.keys) if k[1] == label]:
                state.keys.pop(cache_key, None)

    def private_key(self, session, label: str, key_class=None):
        """The private key object labelled `label` as seen from `session` (looked up once per session)."""
        state = self._state
        if state is None:
            raise TokenUnavailable(f"the sessions of PKCS#11 token {self.label!r} are being reopened")
        return self._private_key(state, session, label, key_class)

    def _reconnect(self, seen: int) -> None:
        """Replace the sessions of generation ``seen`` (0: none) with new ones, unless another thread did; one
        thread at a time, the others wait here and then use the new sessions."""
        with self._reconnect_lock:
            state = self._state
            if state is not None and state.generation != seen:
                return  # another thread reopened them while this one waited
            if self._closed:
                raise HsmError(f"the sessions of PKCS#11 token {self.label!r} are closed")
            now = time.monotonic()
            if now < self._retry_at:
                raise TokenUnavailable(f"PKCS#11 token {self.label!r} is unavailable: {self._error} (next attempt "
                                       f"in {self._retry_at - now:.1f} s)")
            self._generation += 1
            generation = self._generation
            self._state = None
            if state is not None:
                self._drop(state)
            try:
                new = self._reopen(generation)
            except HsmError as exc:
                self._failures += 1
                first, most = self.backoff
                self._retry_at = time.monotonic() + min(most, first * 2 ** (self._failures - 1))
                self._error = str(exc)
                log.error("ca.pkcs11.reconnect_failed", token=self.label, error=self._error,
                          retry_in=round(self._retry_at - time.monotonic(), 1))
                raise TokenUnavailable(f"PKCS#11 token {self.label!r} is unavailable: {exc}") from None
            self._failures, self._retry_at, self._error = 0, 0.0, ""
            self._state = new
            self.reconnects += 1
            log.info("ca.pkcs11.reconnected", token=self.label, sessions=len(new.all))

    def _drop(self, state: _Sessions) -> None:
        """Close the sessions of a dropped generation (most calls fail: the token forgot them)."""
        with self._locked():
            for s in state.all:
                with contextlib.suppress(Exception):
                    s.close()
        state.keys.clear()

    def _reopen(self, generation: int) -> _Sessions:
        """New sessions, logged in, every key label of the deployment found; the module is initialised again
        when the token cannot be opened as it is (it was finalised, or the token was replaced)."""
        lib = _library(self.settings.module)
        with self._locked():
            try:
                new = self._open(lib, generation=generation)
            except HsmError:
                with contextlib.suppress(Exception):
                    lib.reinitialize()
                new = self._open(lib, generation=generation)
            try:
                self._check_keys(new)
            except HsmError:
                for s in new.all:
                    with contextlib.suppress(Exception):
                        s.close()
                raise
        return new

    def _check_keys(self, state: _Sessions) -> None:
        import pkcs11

        s = state.all[0]
        for label in sorted(self._labels):
            try:
                self._private_key(state, s, label)
            except pkcs11.NoSuchKey:
                raise HsmError(f"no private key labelled {label!r} in PKCS#11 token {self.label!r}") from None
            except pkcs11.PKCS11Error as exc:
                raise HsmError(f"cannot find the key {label!r} in PKCS#11 token {self.label!r}: "
                               f"{type(exc).__name__} {exc}".rstrip()) from None

    def probe(self, timeout: float = 2.0) -> str:
        """Whether the token serves now: the CA and RA keys found by label on a session of the pool (the
        sessions reopened when they were lost, within the back-off); asked of the token each time, not of a
        cache. "ok", or "error: ..." saying why; at most ``timeout`` seconds waiting for a session."""
        import pkcs11
        from pkcs11 import Attribute, ObjectClass

        labels = sorted(self._labels) or [self.settings.ca_key_label]

        def find(session, _key) -> None:
            for label in labels:
                if not list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label})):
                    raise pkcs11.NoSuchKey(f"no private key labelled {label!r}")

        try:
            self.call(find, timeout=timeout)
        except HsmError as exc:
            return f"error: {exc}"
        except pkcs11.PKCS11Error as exc:
            return f"error: PKCS#11 token {self.label!r}: {type(exc).__name__} {exc}".rstrip()
        for label, (error, retry) in list(self._sign_failures.items()):  # a key whose last signature failed
            try:
                retry(timeout)  # signs once more; clears the failure when it does
            except Exception:  # noqa: BLE001 - reported: the token is not ready
                return f"error: the key {label!r} in PKCS#11 token {self.label!r} failed to sign: {error}"
        return "ok"

    def close(self) -> None:
        self._closed = True
        state, self._state = self._state, None
        if state is not None:
            with self._lock:
                for s in state.all:
                    with contextlib.suppress(Exception):
                        s.close()
            state.keys.clear()


_RSA_SIGN = {"sha1": "SHA1_RSA_PKCS", "sha224": "SHA224_RSA_PKCS", "sha256": "SHA256_RSA_PKCS",
             "sha384": "SHA384_RSA_PKCS", "sha512": "SHA512_RSA_PKCS"}
_OAEP = {"sha1": ("SHA_1", "SHA1"), "sha224": ("SHA224", "SHA224"), "sha256": ("SHA256", "SHA256"),
         "sha384": ("SHA384", "SHA384"), "sha512": ("SHA512", "SHA512")}


class Pkcs11Key(SignsCertificates):
    """A private key in the token, by label: signs (RSA PKCS#1 v1.5, ECDSA) and decrypts (RSA) there."""

    def __init__(self, pool: SessionPool, label: str, public_key, store: "Pkcs11Keys | None" = None):
        self.pool, self.label, self._pub = pool, label, public_key
        self.store = store  # the key store it came from: a renewed RA's key is made and found through it

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        return self._pub

    def sign(self, data: bytes, digest: hashes.HashAlgorithm) -> bytes:
        """The signature, made in the token. TokenUnavailable (a 503) while the token is away; any other failure
        (an error the token answers, CKR_GENERAL_ERROR say) is logged and counted and raised as KeyFailed (a
        503 too), and the token is not ready (SessionPool.probe) until this key signs again."""
        try:
            signature = self._sign(data, digest)
        except TokenUnavailable:
            from .. import metrics

            metrics.key_sign_failed("pkcs11")
            raise
        except Exception as exc:  # noqa: BLE001 - nothing signed: a 503, logged and counted
            self.pool.sign_failed(self.label, f"{type(exc).__name__} {exc}".rstrip(), self._probe_sign)
            raise sign_failed("pkcs11", self.label, exc) from None
        self.pool.signed(self.label)
        return signature

    def _probe_sign(self, timeout: float) -> None:
        self._sign(b"readiness probe", hashes.SHA256(), timeout=timeout)
        self.pool.signed(self.label)

    def _sign(self, data: bytes, digest: hashes.HashAlgorithm, timeout: float | None = None) -> bytes:
        import pkcs11
        from pkcs11.util.ec import encode_ecdsa_signature

        if isinstance(self._pub, rsa.RSAPublicKey):
            mechanism = _RSA_SIGN.get(digest.name)
            if mechanism is None:
                raise ValueError(f"no RSA signature with {digest.name} in PKCS#11")
            return self.pool.call(lambda s, key: key(self.label).sign(
                data, mechanism=getattr(pkcs11.Mechanism, mechanism)), timeout=timeout)
        h = hashes.Hash(digest)
        h.update(data)
        tbs = h.finalize()
        # CKM_ECDSA over a digest made here: tokens without CKM_ECDSA_SHA384 (SoftHSM) sign all the same
        return encode_ecdsa_signature(self.pool.call(lambda s, key: key(self.label).sign(
            tbs, mechanism=pkcs11.Mechanism.ECDSA), timeout=timeout))

    def decrypt(self, ciphertext: bytes, scheme: str) -> bytes:
        import pkcs11

        if not isinstance(self._pub, rsa.RSAPublicKey):
            raise ValueError("an EC key does not decrypt (SCEP key transport needs the RSA RA key)")
        if scheme == "pkcs1v15":
            mechanism, param = pkcs11.Mechanism.RSA_PKCS, None
        elif scheme.startswith("oaep-") and scheme[5:] in _OAEP:
            h, mgf = _OAEP[scheme[5:]]
            mechanism, param = (pkcs11.Mechanism.RSA_PKCS_OAEP,
                                (getattr(pkcs11.Mechanism, h), getattr(pkcs11.MGF, mgf), None))
        else:
            raise ValueError(f"unsupported key transport scheme {scheme!r}")
        return self.pool.call(lambda s, key: key(self.label).decrypt(ciphertext, mechanism=mechanism,
                                                                     mechanism_param=param), uniform=True)

    def close(self) -> None:
        self.pool.close()


class Pkcs11Keys:
    """The CA and RA keys of one deployment in one token (scep_server.ca.authority's key store).

    The labels are the settings' (``ca.ca_key_label``, ``ca.ra_key_label``) for the deployment's first CA; a CA
    made by a rollover has labels of its own, recorded in its directory (scep_server.ca.keylabels), and its keys
    come from :meth:`for_labels`: a store with those labels over the same sessions."""

    def __init__(self, settings: HsmSettings, *, pool: SessionPool | None = None, root: "Pkcs11Keys | None" = None):
        self.settings = settings
        self.pool = pool if pool is not None else SessionPool(settings)
        self.root = root if root is not None else self  # the store with the settings' labels
        # (label, CKA_ID) of each key pair this store generated: the ID is random, given at generation, so an
        # object with both is one of them (discard_generated)
        self.generated: list[tuple[str, bytes]] = []

    def for_labels(self, labels: tuple[str, str] | None) -> "Pkcs11Keys":
        """The store whose CA and RA keys are labelled ``labels`` = (CA label, RA label), over the same sessions;
        None: the store with the settings' labels."""
        if labels is None:
            return self.root
        if labels == self.labels():
            return self
        ca_label, ra_label = labels
        return Pkcs11Keys(dataclasses.replace(self.root.settings, ca_key_label=ca_label, ra_key_label=ra_label),
                          pool=self.pool, root=self.root)

    def labels(self) -> tuple[str, str]:
        """(the CA key's label, the first RA key's label)."""
        return self.settings.ca_key_label, self.settings.ra_key_label

    def label_taken(self, label: str) -> bool:
        """Whether any object of the token (a private or public key, a certificate, ...) has this label."""
        from pkcs11 import Attribute

        import pkcs11

        def find(s, _key) -> bool:
            return bool(list(s.get_objects({Attribute.LABEL: label})))

        try:
            return self.pool.call(find)
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"cannot search the token {self.pool.label!r} for the label {label!r}: "
                           f"{type(exc).__name__} {exc}".rstrip()) from None

    def discard_generated(self) -> list[str]:
        """Delete from the token the key pairs this store generated (a CA rollover's prepare that failed after
        making some): the objects with the label and the random CKA_ID each was given, no other. The labels of
        the pairs deleted; HsmError when the token refuses or cannot be reached (the pairs stay listed)."""
        import pkcs11
        from pkcs11 import Attribute

        pairs = list(self.generated)

        def delete(s, _key) -> None:
            for label, key_id in pairs:
                for obj in list(s.get_objects({Attribute.LABEL: label, Attribute.ID: key_id})):
                    obj.destroy()

        try:
            self.pool.call(delete)
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"cannot delete the keys {', '.join(repr(label) for label, _ in pairs)} from PKCS#11 "
                           f"token {self.pool.label!r}: {type(exc).__name__} {exc}".rstrip()) from None
        for label, _ in pairs:
            self.pool.untrack(label)
        self.generated.clear()
        return [label for label, _ in pairs]

    def close(self) -> None:
        self.pool.close()

    def probe(self, timeout: float = 2.0) -> str:
        """The token's state now (SessionPool.probe): "ok" or "error: ..."."""
        return self.pool.probe(timeout)

    def ca_key(self, create: tuple[str, int] | None = None) -> Pkcs11Key:
        """The CA key; with `create` = (key_type, bits), generated in the token first if no key has its label."""
        return self._key(self.settings.ca_key_label, create, ca=True)

    def ra_key(self, create: tuple[str, int] | None = None, label: str | None = None) -> Pkcs11Key:
        """The RA key labelled ``ca.ra_key_label``, or ``label`` (a renewed RA's, recorded beside its
        certificate: scep_server.ca.ra)."""
        return self._key(label or self.settings.ra_key_label, create, ca=False)

    def renewed_ra_label(self, now: datetime) -> str:
        """``ca.ra_key_label`` with the renewal's UTC time and a random suffix: unique in the token."""
        return f"{self.settings.ra_key_label}-{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"

    def _key(self, label: str, create: tuple[str, int] | None, *, ca: bool) -> Pkcs11Key:
        def find(s, _key):
            found = _find_public(s, label, self.pool.label)
            if found is None and create is not None:
                key_id = secrets.token_bytes(16)
                self.generated.append((label, key_id))  # before the call: a generation that fails half way too
                found = _generate(s, label, *create, ca=ca, key_id=key_id)
            return found

        import pkcs11

        try:
            public = self.pool.call(find)
        except pkcs11.PKCS11Error as exc:  # the token refused the search or the generation: a message, no traceback
            raise HsmError(f"cannot {'find or generate' if create else 'find'} the key {label!r} in PKCS#11 token "
                           f"{self.pool.label!r}: {type(exc).__name__} {exc}".rstrip()) from None
        if public is None:
            raise KeyNotInToken(f"no private key labelled {label!r} in PKCS#11 token {self.pool.label!r} "
                           f"(ca.{'ca' if ca else 'ra'}_key_label; `scep-server init` generates it)")
        if not ca and not isinstance(public, rsa.RSAPublicKey):
            raise KeyNotInToken(f"the RA key {label!r} in token {self.pool.label!r} must be RSA (clients encrypt to "
                                "it)")
        if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
            raise KeyNotInToken(f"the {'CA' if ca else 'RA'} key {label!r} in token {self.pool.label!r} is RSA of "
                           f"{public.key_size} bits: at least 2048 (ca.key_size)")
        if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name not in _CURVES.values():
            raise KeyNotInToken(f"the CA key {label!r} in token {self.pool.label!r} is on the curve "
                           f"{public.curve.name}: P-256 or P-384 (ca.key_type)")
        self.pool.track(label)
        return Pkcs11Key(self.pool, label, public, store=self)


def _find_public(session, label: str, token: str):
    """The public key of the private key labelled `label`, or None when no private key has that label."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    from pkcs11.util.ec import encode_ec_public_key, encode_ecdsa_signature

    privates = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}))
    if not privates:
        return None
    if len(privates) > 1:
        raise HsmError(f"{len(privates)} private keys are labelled {label!r} in token {token!r}: labels must be "
                       "unique")
    private = privates[0]
    try:
        if private.key_type == KeyType.RSA:
            # the modulus and exponent are public attributes of an RSA private key, sensitive or not: its own
            # public key, whatever public key objects share its label
            n = int.from_bytes(private[Attribute.MODULUS], "big")
            e = int.from_bytes(private[Attribute.PUBLIC_EXPONENT], "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if private.key_type == KeyType.EC:
            publics = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}))
            if not publics:
                raise HsmError(f"the EC key {label!r} in token {token!r} has no public key object with its label")
            # an EC private key does not hold its point: the public key object with the label that verifies its
            # signature (a stray one under the same label, left by an earlier key, is not it)
            challenge = secrets.token_bytes(32)
            signature = encode_ecdsa_signature(private.sign(challenge, mechanism=pkcs11.Mechanism.ECDSA))
            for candidate in publics:
                public = serialization.load_der_public_key(encode_ec_public_key(candidate))
                try:
                    public.verify(signature, challenge, ec.ECDSA(Prehashed(hashes.SHA256())))
                except (InvalidSignature, ValueError, TypeError):
                    continue
                return public
            raise HsmError(f"no public key object labelled {label!r} in token {token!r} is the public key of the "
                           f"private key with that label ({len(publics)} found)")
    except pkcs11.PKCS11Error as exc:
        raise HsmError(f"cannot read the public key of {label!r} in token {token!r}: {exc!r}") from None
    raise HsmError(f"the key {label!r} in token {token!r} is {private.key_type.name}, not RSA or EC")


def _generate(session, label: str, key_type: str, bits: int, *, ca: bool, key_id: bytes):
    """A key pair made in the token (CKA_ID ``key_id``): the private half sensitive, never extractable, stored on
    the token."""
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
    from pkcs11.util.rsa import encode_rsa_public_key

    private = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True,
               Attribute.TOKEN: True, Attribute.SIGN: True, Attribute.DECRYPT: not ca,
               Attribute.UNWRAP: False, Attribute.DERIVE: False}
    public = {Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.ENCRYPT: not ca, Attribute.WRAP: False}
    if key_type == "rsa":
        pub, _ = session.generate_keypair(KeyType.RSA, bits, id=key_id, label=label, store=True,
                                          public_template=public, private_template=private)
        return serialization.load_der_public_key(encode_rsa_public_key(pub))
    if key_type in _CURVES:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[key_type])}, local=True)
        public.pop(Attribute.ENCRYPT)
        private.pop(Attribute.DECRYPT)
        pub, _ = params.generate_keypair(id=key_id, label=label, store=True, public_template=public,
                                         private_template=private)
        return serialization.load_der_public_key(encode_ec_public_key(pub))
    raise HsmError(f"unknown key type {key_type!r}")
