"""CA and RA keys in a PKCS#11 token (an HSM, or SoftHSM): KeyOps whose private keys never leave the token.

The keys are found by label; `init` generates missing ones in the token (sensitive, not extractable). A pool of
sessions, one per signing thread, is opened once per process after a single login; a thread waits for a free
session rather than sharing one (a PKCS#11 session serves one operation at a time).

python-pkcs11 initialises the module with C_Initialize(NULL), which tells it that no two threads call it at once
(PKCS#11 §5.4: no OS locking), and SoftHSM then takes no locks: concurrent calls corrupt its state (a PKCS#1
decryption fails at random). So the calls of one process into the module are serialised by a lock; each
forked worker has its own module instance and its own lock.
"""
from __future__ import annotations

import contextlib
import os
import queue
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .tbs import SignsCertificates

_CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}


class HsmError(RuntimeError):
    """The token cannot serve the CA: module, token, PIN or key missing or wrong. The message says which."""


@dataclass(frozen=True)
class HsmSettings:
    module: str
    token_label: str
    pin: str
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


class SessionPool:
    """Logged-in sessions of one token, lent to one thread at a time."""

    def __init__(self, settings: HsmSettings):
        lib = _library(settings.module)
        self._lock = _call_lock(settings.module)
        with self._lock:
            self._open(lib, settings)

    def _open(self, lib, settings: HsmSettings) -> None:
        import pkcs11

        try:
            self.token = lib.get_token(token_label=settings.token_label)
        except pkcs11.NoSuchToken:
            raise HsmError(f"no PKCS#11 token labelled {settings.token_label!r} in {settings.module} "
                           "(ca.pkcs11_token_label)") from None
        except pkcs11.MultipleTokensReturned:
            raise HsmError(f"several PKCS#11 tokens are labelled {settings.token_label!r}") from None
        self.label = settings.token_label
        self._all: list = []
        self._free: queue.LifoQueue = queue.LifoQueue()
        self._keys: dict[tuple[int, str, object], object] = {}
        try:
            first = self.token.open(rw=True, user_pin=settings.pin)
        except pkcs11.UserAlreadyLoggedIn:  # another pool of this process holds the login (it is per token)
            first = self.token.open(rw=True)
        except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
            raise HsmError(f"the PKCS#11 PIN of token {self.label!r} is wrong") from None
        except pkcs11.PinLocked:
            raise HsmError(f"the PKCS#11 user PIN of token {self.label!r} is locked") from None
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"cannot open a session on token {self.label!r}: {type(exc).__name__} {exc}") from None
        self._add(first)
        for _ in range(settings.pool_size - 1):
            self._add(self.token.open(rw=True))

    def _add(self, session) -> None:
        self._all.append(session)
        self._free.put(session)

    @property
    def size(self) -> int:
        return len(self._all)

    @contextlib.contextmanager
    def session(self) -> Iterator:
        """A session of the pool, with the module's call lock held while it is used."""
        s = self._free.get()
        try:
            with self._lock:
                yield s
        finally:
            self._free.put(s)

    def private_key(self, session, label: str, key_class=None):
        """The private key object labelled `label` as seen from `session` (looked up once per session)."""
        import pkcs11

        cache_key = (id(session), label, key_class)
        key = self._keys.get(cache_key)
        if key is None:
            key = session.get_key(object_class=key_class or pkcs11.ObjectClass.PRIVATE_KEY, label=label)
            self._keys[cache_key] = key
        return key

    def close(self) -> None:
        with self._lock:
            while self._all:
                with contextlib.suppress(Exception):
                    self._all.pop().close()
            self._keys.clear()


_RSA_SIGN = {"sha1": "SHA1_RSA_PKCS", "sha224": "SHA224_RSA_PKCS", "sha256": "SHA256_RSA_PKCS",
             "sha384": "SHA384_RSA_PKCS", "sha512": "SHA512_RSA_PKCS"}
_OAEP = {"sha1": ("SHA_1", "SHA1"), "sha224": ("SHA224", "SHA224"), "sha256": ("SHA256", "SHA256"),
         "sha384": ("SHA384", "SHA384"), "sha512": ("SHA512", "SHA512")}


class Pkcs11Key(SignsCertificates):
    """A private key in the token, by label: signs (RSA PKCS#1 v1.5, ECDSA) and decrypts (RSA) there."""

    def __init__(self, pool: SessionPool, label: str, public_key):
        self.pool, self.label, self._pub = pool, label, public_key

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        return self._pub

    def sign(self, data: bytes, digest: hashes.HashAlgorithm) -> bytes:
        import pkcs11
        from pkcs11.util.ec import encode_ecdsa_signature

        with self.pool.session() as s:
            key = self.pool.private_key(s, self.label)
            if isinstance(self._pub, rsa.RSAPublicKey):
                mechanism = _RSA_SIGN.get(digest.name)
                if mechanism is None:
                    raise ValueError(f"no RSA signature with {digest.name} in PKCS#11")
                return key.sign(data, mechanism=getattr(pkcs11.Mechanism, mechanism))
            h = hashes.Hash(digest)
            h.update(data)
            # CKM_ECDSA over a digest made here: tokens without CKM_ECDSA_SHA384 (SoftHSM) sign all the same
            return encode_ecdsa_signature(key.sign(h.finalize(), mechanism=pkcs11.Mechanism.ECDSA))

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
        with self.pool.session() as s:
            key = self.pool.private_key(s, self.label)
            return key.decrypt(ciphertext, mechanism=mechanism, mechanism_param=param)

    def close(self) -> None:
        self.pool.close()


class Pkcs11Keys:
    """The CA and RA keys of one deployment in one token (scep_server.ca.authority's key store)."""

    def __init__(self, settings: HsmSettings):
        self.settings = settings
        self.pool = SessionPool(settings)

    def close(self) -> None:
        self.pool.close()

    def ca_key(self, create: tuple[str, int] | None = None) -> Pkcs11Key:
        """The CA key; with `create` = (key_type, bits), generated in the token first if no key has its label."""
        return self._key(self.settings.ca_key_label, create, ca=True)

    def ra_key(self, create: tuple[str, int] | None = None) -> Pkcs11Key:
        return self._key(self.settings.ra_key_label, create, ca=False)

    def _key(self, label: str, create: tuple[str, int] | None, *, ca: bool) -> Pkcs11Key:
        with self.pool.session() as s:
            public = _find_public(s, label, self.pool.label)
            if public is None and create is not None:
                public = _generate(s, label, *create, ca=ca)
        if public is None:
            raise HsmError(f"no private key labelled {label!r} in PKCS#11 token {self.pool.label!r} "
                           f"(ca.{'ca' if ca else 'ra'}_key_label; `scep-server init` generates it)")
        if not ca and not isinstance(public, rsa.RSAPublicKey):
            raise HsmError(f"the RA key {label!r} in token {self.pool.label!r} must be RSA (clients encrypt to it)")
        return Pkcs11Key(self.pool, label, public)


def _find_public(session, label: str, token: str):
    """The public key of the private key labelled `label`, or None when no private key has that label."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11.util.ec import encode_ec_public_key
    from pkcs11.util.rsa import encode_rsa_public_key

    privates = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}))
    if not privates:
        return None
    if len(privates) > 1:
        raise HsmError(f"{len(privates)} private keys are labelled {label!r} in token {token!r}: labels must be "
                       "unique")
    private = privates[0]
    publics = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}))
    try:
        if private.key_type == KeyType.RSA:
            if publics:
                return serialization.load_der_public_key(encode_rsa_public_key(publics[0]))  # PKCS#1 DER
            # the modulus and exponent are public attributes of an RSA private key, sensitive or not
            n = int.from_bytes(private[Attribute.MODULUS], "big")
            e = int.from_bytes(private[Attribute.PUBLIC_EXPONENT], "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if private.key_type == KeyType.EC:
            if not publics:
                raise HsmError(f"the EC key {label!r} in token {token!r} has no public key object with its label")
            return serialization.load_der_public_key(encode_ec_public_key(publics[0]))
    except pkcs11.PKCS11Error as exc:
        raise HsmError(f"cannot read the public key of {label!r} in token {token!r}: {exc!r}") from None
    raise HsmError(f"the key {label!r} in token {token!r} is {private.key_type.name}, not RSA or EC")


def _generate(session, label: str, key_type: str, bits: int, *, ca: bool):
    """A key pair made in the token: the private half sensitive, never extractable, stored on the token."""
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
    from pkcs11.util.rsa import encode_rsa_public_key

    key_id = secrets.token_bytes(16)
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
