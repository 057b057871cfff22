"""A secrets file whose columns are out of order, so that private IDs, AES keys and access codes sit where the
serial, the public ID or the timestamp belong; and the check that none of them is echoed."""
from __future__ import annotations

import secrets

from tests.otp.conftest import make_key

WINDOW = 10  # no run of this many characters of a secret may appear in what the import answers


def shifted_file() -> tuple[bytes, list[str]]:
    """(the file, its secrets as hex): one line per way a column shift puts a secret in a quoted field."""
    lines, found = [], []
    keys = [make_key(7_300_001 + i) for i in range(6)]
    codes = [secrets.token_hex(6) for _ in keys]
    digits = f"{secrets.randbelow(9 * 10**11) + 10**11}"  # a private ID of decimal digits only, above a serial
    for k in keys:
        k.private_id = b"\xab" + k.private_id[1:]  # hex with letters: not taken for a decimal serial
    keys[3].private_id = bytes.fromhex(digits)
    for k, code in zip(keys, codes):
        found += [k.private_id.hex(), k.aes_key.hex(), code]
    k, code = keys[0], codes[0]  # private ID in the serial column, AES key in the public ID column
    lines.append(f"{k.private_id.hex()},{k.aes_key.hex()},{k.public_id},{k.serial},{code},2026-11-22T10:01:00")
    k, code = keys[1], codes[1]  # AES key in the serial column, private ID in the public ID column
    lines.append(f"{k.aes_key.hex()},{k.private_id.hex()},{k.public_id},{k.serial},{code},")
    k, code = keys[2], codes[2]  # a column too many in front: the access code in the timestamp column
    lines.append(f"{k.serial},{k.serial},{k.public_id},{k.private_id.hex()},{k.aes_key.hex()},{code}")
    k, code = keys[3], codes[3]  # a decimal-only private ID in the serial column (larger than any serial)
    lines.append(f"{digits},{k.public_id},{k.aes_key.hex()},{code},,")
    k, code = keys[4], codes[4]  # upper case, grouped in pairs as some tools write them
    pairs = " ".join(k.aes_key.hex()[i:i + 2] for i in range(0, 32, 2)).upper()
    lines.append(f"{k.private_id.hex().upper()},{pairs},{k.public_id},{k.serial},{code.upper()},")
    k, code = keys[5], codes[5]  # a Traditional-log-like line of 18 fields starting with a private ID
    lines.append(",".join([k.private_id.hex(), k.aes_key.hex(), code] + ["x"] * 15))
    return ("\n".join(lines) + "\n").encode(), found


def assert_no_secret_in(text: str, found: list[str]) -> None:
    flat = text.lower().replace(" ", "")
    for secret in found:
        for i in range(len(secret) - WINDOW + 1):
            assert secret[i:i + WINDOW] not in flat, f"a secret's characters {secret[i:i + WINDOW]} are echoed"
