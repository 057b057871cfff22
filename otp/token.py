"""The Yubico OTP token: one AES-128 block with a CRC-16 (Yubico OTPs Explained; yubico-c yubikey.h)."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import modhex

TOKEN_LEN = 32  # ModHex characters of the encrypted block (YK-VAL TOKEN_LEN)
PUBLIC_ID_MAX_LEN = 16  # ModHex characters (YK-VAL PUBID_MAX_LEN): OTPs are 32-48 characters
OTP_MIN_LEN = TOKEN_LEN
OTP_MAX_LEN = TOKEN_LEN + PUBLIC_ID_MAX_LEN
CRC_OK_RESIDUE = 0xF0B8  # ISO 13239 residue over all 16 bytes (yubico-c ykcrc.c)
CAPSLOCK_BIT = 0x8000  # set in the usage counter when the OTP was triggered by caps lock
USAGE_CTR_MASK = 0x7FFF


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16 as the YubiKey computes it: init 0xffff, reflected polynomial 0x8408, no final XOR."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


class TokenError(ValueError):
    """The OTP does not decode to a valid token (format, CRC or private ID)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Token:
    """The decrypted 16-byte plaintext (OTPs Explained, "OTP generation"), little-endian fields."""

    private_id: bytes = field(repr=False)
    usage_ctr_raw: int  # 2-byte non-volatile counter as stored, caps-lock bit included
    timestamp: int  # 24-bit, ~8 Hz, random start at power-up
    session_use: int  # 1-byte counter of OTPs in this power-up session
    random: int
    crc: int

    @property
    def usage_ctr(self) -> int:
        """The usage counter with the caps-lock bit masked (yubikey_counter in yubikey.h)."""
        return self.usage_ctr_raw & USAGE_CTR_MASK

    @property
    def capslock(self) -> bool:
        """True when the caps-lock bit 0x8000 of the usage counter is set."""
        return bool(self.usage_ctr_raw & CAPSLOCK_BIT)

    @property
    def counters(self) -> tuple[int, int]:
        """The replay-ordering pair (usage_ctr & 0x7fff, session_use)."""
        return (self.usage_ctr_raw & USAGE_CTR_MASK, self.session_use)

    @property
    def timestamp_low(self) -> int:
        return self.timestamp & 0xFFFF

    @property
    def timestamp_high(self) -> int:
        return self.timestamp >> 16

    def to_bytes(self) -> bytes:
        """The 16-byte plaintext including the stored CRC field."""
        return (self.private_id + self.usage_ctr_raw.to_bytes(2, "little") + self.timestamp.to_bytes(3, "little")
                + bytes((self.session_use,)) + self.random.to_bytes(2, "little") + self.crc.to_bytes(2, "little"))

    @classmethod
    def from_bytes(cls, plain: bytes) -> "Token":
        """Split a 16-byte plaintext; the CRC is not checked here."""
        if len(plain) != 16:
            raise TokenError("bad_length", "a token is 16 bytes")
        return cls(
            private_id=plain[0:6],
            usage_ctr_raw=int.from_bytes(plain[6:8], "little"),
            timestamp=int.from_bytes(plain[8:11], "little"),
            session_use=plain[11],
            random=int.from_bytes(plain[12:14], "little"),
            crc=int.from_bytes(plain[14:16], "little"),
        )

    @classmethod
    def create(cls, *, private_id: bytes, usage_ctr: int, timestamp: int, session_use: int, random: int) -> "Token":
        """A token with its CRC field filled in (the generator stores ~crc16 of the first 14 bytes)."""
        if len(private_id) != 6:
            raise ValueError("private ID is 6 bytes")
        if not (0 <= usage_ctr <= 0xFFFF and 0 <= timestamp <= 0xFFFFFF and 0 <= session_use <= 0xFF
                and 0 <= random <= 0xFFFF):
            raise ValueError("token field out of range")
        head = (private_id + usage_ctr.to_bytes(2, "little") + timestamp.to_bytes(3, "little")
                + bytes((session_use,)) + random.to_bytes(2, "little"))
        return cls.from_bytes(head + ((~crc16(head)) & 0xFFFF).to_bytes(2, "little"))


@dataclass(frozen=True, slots=True)
class OtpParts:
    """An OTP split into its public ID (ModHex) and the encrypted 16-byte block."""

    public_id: str
    block: bytes


def split_otp(otp: str) -> OtpParts:
    """Normalise (case, Dvorak) and split an OTP: public ID = all but the last 32 characters."""
    text = modhex.normalise(otp.strip())
    if not (OTP_MIN_LEN <= len(text) <= OTP_MAX_LEN):
        raise TokenError("bad_format", f"an OTP is {OTP_MIN_LEN}-{OTP_MAX_LEN} ModHex characters")
    public_id, tail = text[:-TOKEN_LEN], text[-TOKEN_LEN:]
    try:
        block = modhex.decode(tail)
        if public_id:
            modhex.decode(public_id)
    except ValueError:
        raise TokenError("bad_format", "the OTP is not ModHex") from None
    return OtpParts(public_id=public_id, block=block)


def decrypt_block(block: bytes, aes_key: bytes) -> Token:
    """AES-128 (one block, ECB, no padding) and the CRC residue check; TokenError on a bad CRC."""
    if len(aes_key) != 16 or len(block) != 16:
        raise TokenError("bad_length", "AES-128 key and block are 16 bytes")
    dec = Cipher(algorithms.AES(aes_key), modes.ECB()).decryptor()
    plain = dec.update(block) + dec.finalize()
    if crc16(plain) != CRC_OK_RESIDUE:
        raise TokenError("bad_crc", "CRC check failed (wrong key or corrupted OTP)")
    return Token.from_bytes(plain)


def verify_token(block: bytes, aes_key: bytes, private_id: bytes) -> Token:
    """Decrypt, check the CRC and compare the private ID in constant time."""
    token = decrypt_block(block, aes_key)
    if not hmac.compare_digest(token.private_id, private_id):
        raise TokenError("bad_private_id", "private ID does not match")
    return token


def encrypt_token(token: Token, aes_key: bytes) -> bytes:
    """The encrypted 16-byte block for a token (used to generate OTPs in tests and benchmarks)."""
    enc = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
    return enc.update(token.to_bytes()) + enc.finalize()


def build_otp(public_id: str, token: Token, aes_key: bytes) -> str:
    """A complete OTP: public ID followed by the ModHex of the encrypted token."""
    return public_id + modhex.encode(encrypt_token(token, aes_key))
