"""ModHex, the YubiKey keyboard-safe hex alphabet (Yubico OTPs Explained, "ModHex")."""
from __future__ import annotations

ALPHABET = "cbdefghijklnrtuv"
HEX = "0123456789abcdef"
# The same key positions typed under a Dvorak layout (YK-VAL ykval-verify.php converts them back).
DVORAK = "jxe.uidchtnbpygk"

_TO_HEX = str.maketrans(ALPHABET, HEX)
_FROM_HEX = str.maketrans(HEX, ALPHABET)
_DVORAK_TO_MODHEX = str.maketrans(DVORAK, ALPHABET)
_MODHEX_SET = frozenset(ALPHABET)
_DVORAK_SET = frozenset(DVORAK)


def is_modhex(text: str) -> bool:
    """True when `text` is non-empty, of even length and uses only the ModHex alphabet."""
    return bool(text) and len(text) % 2 == 0 and _MODHEX_SET.issuperset(text)


def encode(data: bytes) -> str:
    """Bytes to ModHex, two characters per byte, high nibble first."""
    return data.hex().translate(_FROM_HEX)


def decode(text: str) -> bytes:
    """ModHex to bytes; ValueError on odd length or a character outside the alphabet."""
    if len(text) % 2 or not _MODHEX_SET.issuperset(text):
        raise ValueError("not ModHex")
    return bytes.fromhex(text.translate(_TO_HEX))


def to_hex(text: str) -> str:
    """ModHex to hex text (the `modhex -d -h` view)."""
    return decode(text).hex()


def from_hex(hex_text: str) -> str:
    """Hex text to ModHex."""
    return encode(bytes.fromhex(hex_text))


def normalise(text: str) -> str:
    """Lower-case an OTP and turn an all-Dvorak OTP back into ModHex (as YK-VAL does).

    Characters common to both alphabets keep their ModHex meaning; only a string that is not ModHex
    but made entirely of Dvorak characters is translated.
    """
    text = text.lower()
    if _MODHEX_SET.issuperset(text):
        return text
    if _DVORAK_SET.issuperset(text):
        return text.translate(_DVORAK_TO_MODHEX)
    return text
