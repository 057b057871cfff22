"""Algorithm identifiers SCEP meets on the wire and the primitives behind them (RFC 8894 §3.5.2, RFC 5652 §10)."""
from __future__ import annotations

import hashlib
import warnings

from cryptography.hazmat.primitives import hashes, padding as sympad
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from trustkit import der

from . import oids
from .types import ContentCipher, Digest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES


class UnsupportedAlgorithm(ValueError):
    """An algorithm identifier this codec does not implement (mapped to failInfo badAlg)."""


DIGEST_BY_OID: dict[str, Digest] = {d.oid: d for d in Digest}
# Some clients put the signature algorithm in digestAlgorithm; it names the digest just as well.
DIGEST_BY_OID.update({
    "1.2.840.113549.1.1.4": Digest.MD5,
    "1.2.840.113549.1.1.5": Digest.SHA1,
    "1.3.14.3.2.29": Digest.SHA1,
    "1.2.840.113549.1.1.11": Digest.SHA256,
    "1.2.840.113549.1.1.13": Digest.SHA512,
})
CIPHER_BY_OID: dict[str, ContentCipher] = {c.oid: c for c in ContentCipher}

# signatureAlgorithm values accepted with PKCS#1 v1.5 (RFC 5652 §10.1.2, RFC 3370 §3.2, RFC 5754 §3.2).
PKCS1_SIGNATURE_OIDS = frozenset({
    oids.RSA_ENCRYPTION, "1.2.840.113549.1.1.4", "1.2.840.113549.1.1.5", "1.3.14.3.2.29",
    "1.2.840.113549.1.1.11", "1.2.840.113549.1.1.12", "1.2.840.113549.1.1.13", "1.2.840.113549.1.1.14",
})

_HASH_BY_OID = {
    "1.3.14.3.2.26": hashes.SHA1, "2.16.840.1.101.3.4.2.4": hashes.SHA224, "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384, "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
_HASH_NAME = {hashes.SHA1: "sha1", hashes.SHA224: "sha224", hashes.SHA256: "sha256", hashes.SHA384: "sha384",
              hashes.SHA512: "sha512"}
_HASH_OID_BY_NAME = {v: k for k, v in ((oid, _HASH_NAME[h]) for oid, h in _HASH_BY_OID.items())}

# Encoded AlgorithmIdentifiers we emit: digests with NULL parameters (RFC 3370 §2.1 allows both forms;
# NULL is what Windows, Go and OpenSSL send), rsaEncryption with NULL (RFC 3370 §3.2).
DIGEST_ALG_DER = {d: der.seq(der.oid(d.oid), der.NULL_DER) for d in Digest}
RSA_ENCRYPTION_ALG_DER = der.seq(der.oid(oids.RSA_ENCRYPTION), der.NULL_DER)


_HASHLIB_CTORS = {Digest.MD5: hashlib.md5, Digest.SHA1: hashlib.sha1, Digest.SHA256: hashlib.sha256,
                  Digest.SHA512: hashlib.sha512}


def digest_bytes(digest: Digest, data: bytes) -> bytes:
    """The hash of ``data``."""
    return _HASHLIB_CTORS[digest](data).digest()


def _hash_alg(data: bytes, el: der.Element) -> type[hashes.HashAlgorithm]:
    """The hash named by an AlgorithmIdentifier (RFC 4055 §2.1)."""
    kids = der.children(data, der.expect(el, der.SEQUENCE, "hash algorithm"))
    if not kids or kids[0][0] != der.OID:
        raise der.DERError("hash algorithm without an OID")
    h = _HASH_BY_OID.get(der.decode_oid(der.contents(data, kids[0])))
    if h is None:
        raise UnsupportedAlgorithm("unsupported hash algorithm")
    return h


def _mgf1_hash(data: bytes, el: der.Element) -> type[hashes.HashAlgorithm]:
    """The hash of an MGF1 AlgorithmIdentifier (RFC 4055 §2.2)."""
    kids = der.children(data, der.expect(el, der.SEQUENCE, "mask generation function"))
    if len(kids) < 2 or kids[0][0] != der.OID or der.decode_oid(der.contents(data, kids[0])) != oids.MGF1:
        raise UnsupportedAlgorithm("unsupported mask generation function")
    return _hash_alg(data, kids[1])


def key_transport(data: bytes, alg: der.Element) -> str:
    """The RSA key-transport scheme named by a keyEncryptionAlgorithm (RFC 3370 §4.2.1, RFC 3560 §3).

    Returns "pkcs1v15" or "oaep-<hash>" (MGF1 with the same hash, empty label).
    """
    kids = der.children(data, der.expect(alg, der.SEQUENCE, "keyEncryptionAlgorithm"))
    if not kids or kids[0][0] != der.OID:
        raise der.DERError("keyEncryptionAlgorithm without an OID")
    dotted = der.decode_oid(der.contents(data, kids[0]))
    if dotted == oids.RSA_ENCRYPTION:
        return "pkcs1v15"
    if dotted != oids.RSAES_OAEP:
        raise UnsupportedAlgorithm(f"unsupported key transport algorithm {dotted}")
    h: type[hashes.HashAlgorithm] = hashes.SHA1
    mgf: type[hashes.HashAlgorithm] = hashes.SHA1
    if len(kids) > 1 and kids[1][0] == der.SEQUENCE:  # RSAES-OAEP-params, all fields defaulted when absent
        for p in der.children(data, kids[1]):
            inner = der.children(data, p)
            if not inner:
                raise der.DERError("empty OAEP parameter")
            if p[0] == der.ctx(0):
                h = _hash_alg(data, inner[0])
            elif p[0] == der.ctx(1):
                mgf = _mgf1_hash(data, inner[0])
            elif p[0] == der.ctx(2):
                # pSourceFunc: id-pSpecified with an empty label is the only value in use (RFC 8017 §A.2.1)
                src = der.children(data, inner[0])
                if len(src) > 1 and der.string_bytes(data, src[1]):
                    raise UnsupportedAlgorithm("RSAES-OAEP with a label is not supported")
    if h is not mgf:
        raise UnsupportedAlgorithm("RSAES-OAEP with a mask hash different from the label hash is not supported")
    return "oaep-" + _HASH_NAME[h]


def key_transport_alg_der(scheme: str) -> bytes:
    """The keyEncryptionAlgorithm for a scheme name (RFC 3370 §4.2.1, RFC 4055 §4.1)."""
    if scheme == "pkcs1v15":
        return RSA_ENCRYPTION_ALG_DER
    name = scheme.removeprefix("oaep-")
    hoid = _HASH_OID_BY_NAME.get(name) if scheme.startswith("oaep-") else None
    if hoid is None:
        raise ValueError(f"unsupported key transport scheme {scheme!r}")
    if name == "sha1":  # all defaults: empty parameters (RFC 4055 §4.1)
        return der.seq(der.oid(oids.RSAES_OAEP), der.seq())
    hash_alg = der.seq(der.oid(hoid), der.NULL_DER)
    return der.seq(der.oid(oids.RSAES_OAEP), der.seq(
        der.tlv(der.ctx(0), hash_alg),
        der.tlv(der.ctx(1), der.seq(der.oid(oids.MGF1), hash_alg)),
    ))


def rsa_padding(scheme: str) -> padding.AsymmetricPadding:
    """The cryptography padding for a key-transport scheme name ("pkcs1v15", "oaep-sha256", ...)."""
    if scheme == "pkcs1v15":
        return padding.PKCS1v15()
    for cls, name in _HASH_NAME.items():
        if scheme == "oaep-" + name:
            return padding.OAEP(mgf=padding.MGF1(cls()), algorithm=cls(), label=None)
    raise ValueError(f"unsupported key transport scheme {scheme!r}")


def key_transport_capacity(scheme: str, key_size: int) -> int:
    """The longest key a ``key_size``-bit RSA key carries under a key-transport scheme: k - 11 bytes for
    PKCS#1 v1.5 (RFC 8017 §7.2.1), k - 2 hLen - 2 for OAEP (RFC 8017 §7.1.1); negative when none fits."""
    k = (key_size + 7) // 8
    if scheme == "pkcs1v15":
        return k - 11
    for cls, name in _HASH_NAME.items():
        if scheme == "oaep-" + name:
            return k - 2 * cls.digest_size - 2
    raise ValueError(f"unsupported key transport scheme {scheme!r}")


def signature_scheme(data: bytes, alg: der.Element, digest: Digest, *,
                     key_size: int | None = None) -> tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]:
    """Padding and hash to verify a SignerInfo signature (RFC 5652 §5.3, RFC 4056 §2).

    With the signer's ``key_size`` (bits), an RSASSA-PSS saltLength the key cannot carry (RFC 8017 §9.1.2:
    emLen >= hLen + sLen + 2) is an unsupported algorithm. Signers take the hash length (RFC 4055 §3.1) or the
    largest salt that fits (OpenSSL's "max").
    """
    kids = der.children(data, der.expect(alg, der.SEQUENCE, "signatureAlgorithm"))
    if not kids or kids[0][0] != der.OID:
        raise der.DERError("signatureAlgorithm without an OID")
    dotted = der.decode_oid(der.contents(data, kids[0]))
    if dotted in PKCS1_SIGNATURE_OIDS:
        return padding.PKCS1v15(), digest.hash_algorithm()
    if dotted != oids.RSASSA_PSS:
        raise UnsupportedAlgorithm(f"unsupported signature algorithm {dotted}")
    h: type[hashes.HashAlgorithm] = hashes.SHA1
    mgf: type[hashes.HashAlgorithm] = hashes.SHA1
    salt = 20
    if len(kids) > 1 and kids[1][0] == der.SEQUENCE:  # RSASSA-PSS-params (RFC 4055 §3.1)
        for p in der.children(data, kids[1]):
            inner = der.children(data, p)
            if not inner:
                raise der.DERError("empty PSS parameter")
            if p[0] == der.ctx(0):
                h = _hash_alg(data, inner[0])
            elif p[0] == der.ctx(1):
                mgf = _mgf1_hash(data, inner[0])
            elif p[0] == der.ctx(2):
                salt = der.decode_integer(der.contents(data, der.expect(inner[0], der.INTEGER, "saltLength")))
            elif p[0] == der.ctx(3):
                if der.decode_integer(der.contents(data, der.expect(inner[0], der.INTEGER, "trailerField"))) != 1:
                    raise UnsupportedAlgorithm("unsupported PSS trailer field")
    if salt < 0:
        raise der.DERError("negative PSS salt length")
    if key_size is not None and salt > pss_max_salt_length(key_size, h):
        raise UnsupportedAlgorithm(f"an RSASSA-PSS saltLength of {_bounded_int(salt)} does not fit "
                                   f"a {key_size}-bit key")
    return padding.PSS(mgf=padding.MGF1(mgf()), salt_length=salt), h()


def pss_max_salt_length(key_size: int, h: type[hashes.HashAlgorithm]) -> int:
    """The largest RSASSA-PSS salt a ``key_size``-bit key carries with hash ``h`` (RFC 8017 §9.1.1 step 3)."""
    em_len = (key_size - 1 + 7) // 8  # emBits = modBits - 1
    return em_len - h.digest_size - 2


def _bounded_int(n: int) -> str:
    """``n`` for a message, an absurd value shortened to its size."""
    return str(n) if n.bit_length() <= 64 else f"a {n.bit_length()}-bit number"


def _cipher_algorithm(cipher: ContentCipher, key: bytes):
    if cipher is ContentCipher.DES_CBC:
        return TripleDES(key * 3)  # K1 = K2 = K3 is single DES (NIST SP 800-67 §3.3)
    if cipher is ContentCipher.DES3_CBC:
        return TripleDES(key)
    return AES(key)


def decrypt_content(cipher: ContentCipher, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """CBC-decrypt and strip the PKCS#7 padding (RFC 5652 §6.3); ValueError when either is wrong."""
    bs = cipher.block_size
    if len(key) != cipher.key_size or len(iv) != bs or not ciphertext or len(ciphertext) % bs:
        raise ValueError("bad key, IV or ciphertext length")
    return unpad(cipher, decrypt_raw(cipher, key, iv, ciphertext))


def decrypt_raw(cipher: ContentCipher, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """CBC-decrypt whole blocks, padding left in place (lengths checked by the caller)."""
    dec = Cipher(_cipher_algorithm(cipher, key), modes.CBC(iv)).decryptor()
    return dec.update(ciphertext) + dec.finalize()


def unpad(cipher: ContentCipher, plain: bytes) -> bytes:
    """Strip PKCS#7 padding (RFC 5652 §6.3); ValueError when it is not valid."""
    unpadder = sympad.PKCS7(cipher.block_size * 8).unpadder()
    return unpadder.update(plain) + unpadder.finalize()


def encrypt_content(cipher: ContentCipher, key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """PKCS#7-pad and CBC-encrypt (RFC 5652 §6.3)."""
    bs = cipher.block_size
    if len(key) != cipher.key_size or len(iv) != bs:
        raise ValueError(f"{cipher.name} needs a {cipher.key_size}-byte key and a {bs}-byte IV")
    pad = bs - len(plaintext) % bs
    enc = Cipher(_cipher_algorithm(cipher, key), modes.CBC(iv)).encryptor()
    return enc.update(plaintext + bytes((pad,)) * pad) + enc.finalize()


_CIPHER_OID_DER = {c: der.oid(c.oid) for c in ContentCipher}


def content_cipher_alg_der(cipher: ContentCipher, iv: bytes) -> bytes:
    """contentEncryptionAlgorithm with the IV as parameters (RFC 3565 §4.1, RFC 3370 §5.1)."""
    return der.seq(_CIPHER_OID_DER[cipher], der.octet_string(iv))
