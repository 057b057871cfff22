"""YubiKey OTP secrets files: detect the format, validate every line, report the problems.

Formats (docs/otp.md "Secrets file formats"): the Personalization Tool's "Yubico format" and ykman's
`--config-output` (serial, public ID, private ID, AES key, access code, timestamp), the YK-KSM
provisioning format (`# ykksm 1`), and the Personalization Tool's "Traditional" log, which has no
serial column. Pure: bytes in, records and per-line issues out; nothing is decided about the
database here. Every issue is counted, but only the first MAX_ISSUES of each kind (errors, warnings, skipped
lines), by line, are kept: a hostile file of a million bad lines costs neither memory nor a huge answer.
"""
from __future__ import annotations

import csv
import heapq
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable

from . import modhex

SERIAL_MAX = 0xFFFFFFFF
PUBLIC_ID_STANDARD_LEN = 12
PUBLIC_ID_MAX_LEN = 16  # an OTP is 32-48 characters (YK-VAL PUBID_MAX_LEN); longer IDs never validate
SERIAL_PUBLIC_ID_PREFIX = "ff00"  # ykman --serial-public-id: ff 00 || serial (big-endian u32) = "vvcc..."
BATCH_PUBLIC_ID_PREFIX = "0000"  # ykman examples/yubiotp_batch.py: 00 00 || serial
MAX_ISSUES = 1000  # issues of each kind kept (the first by line); the others are only counted

FORMAT_YUBICO = "yubico"  # Personalization Tool "Yubico format" (access code zero-padded to 12 hex)
FORMAT_YKMAN = "ykman"  # ykman otp yubiotp -O (empty access code)
FORMAT_KSM = "ykksm"  # YK-KSM Key_Provisioning_Format
FORMAT_TRADITIONAL = "traditional"  # Personalization Tool "Traditional" log
FORMAT_MIXED = "mixed"
FORMAT_UNKNOWN = "unknown"

TRADITIONAL_HELP = (
    "Personalization Tool 'Traditional' log lines carry no serial number: re-export the keys in "
    "'Yubico format' (Settings > Logging settings > Log configuration output > Yubico format, or "
    "`ykman otp yubiotp --config-output FILE`), or program them with a serial-based public ID "
    "(`ykman otp yubiotp --serial-public-id`, public ID vvcc...) so the serial can be read from it"
)

_HEX12 = re.compile(r"[0-9a-f]{12}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX_ANY = re.compile(r"[0-9a-f]+")
_DECIMAL = re.compile(r"[0-9]+")
_TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f")
_TIMESTAMP_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
                           r"| [0-9]{2}:[0-9]{2}:[0-9]{2})")


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """One YubiKey OTP configuration from a secrets file; secrets are kept out of repr."""

    line: int
    serial: int
    public_id: str
    private_id: bytes = field(repr=False)
    aes_key: bytes = field(repr=False)
    access_code: bytes | None = field(repr=False, default=None)
    source_format: str = FORMAT_YUBICO


@dataclass(frozen=True, slots=True)
class LineIssue:
    """A problem found on one line (line 0: the file as a whole)."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line else self.reason


def first_issues(issues: Iterable[LineIssue], limit: int = MAX_ISSUES) -> tuple[LineIssue, ...]:
    """The first `limit` issues by line (a line's own in their order), holding no more than that many."""
    return tuple(heapq.nsmallest(limit, issues, key=lambda i: i.line))


class Issues:
    """Issues of one kind: all counted, the first MAX_ISSUES by line kept (memory bounded by 2 x MAX_ISSUES);
    it may start from issues already kept and their total."""

    def __init__(self, kept: Iterable[LineIssue] = (), total: int = 0) -> None:
        self.kept: list[LineIssue] = list(kept)
        self.total = total

    def append(self, issue: LineIssue) -> None:
        self.total += 1
        self.kept.append(issue)
        if len(self.kept) >= 2 * MAX_ISSUES:
            self.kept = list(first_issues(self.kept))

    def first(self) -> tuple[LineIssue, ...]:
        return first_issues(self.kept)


@dataclass(frozen=True, slots=True)
class ParsedSecrets:
    """The outcome of parsing: records, and the errors that reject the file, warnings and skips (the first
    MAX_ISSUES of each by line; the ``*_total`` fields count them all)."""

    format: str
    records: tuple[SecretRecord, ...]
    errors: tuple[LineIssue, ...]
    warnings: tuple[LineIssue, ...]
    skipped: tuple[LineIssue, ...]
    errors_total: int = 0
    warnings_total: int = 0
    skipped_total: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.records)


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # The Personalization Tool writes the system code page on Windows (translated event names).
        return data.decode("cp1252", errors="replace").lstrip("\ufeff")


class _Builder:
    def __init__(self) -> None:
        self.records: list[SecretRecord] = []
        self.errors = Issues()
        self.warnings = Issues()
        self.skipped = Issues()
        self.formats: set[str] = set()

    def error(self, line: int, reason: str) -> None:
        self.errors.append(LineIssue(line, reason))

    def warn(self, line: int, reason: str) -> None:
        self.warnings.append(LineIssue(line, reason))

    def skip(self, line: int, reason: str) -> None:
        self.skipped.append(LineIssue(line, reason))


def _shape(raw: str) -> str:
    """What a field looks like, never what it holds: a field in the wrong column may be a private ID, an AES key
    or an access code, and an issue goes into answers, pages and terminals."""
    if _HEX_ANY.fullmatch(raw.lower()):
        kind = "decimal digits" if _DECIMAL.fullmatch(raw) else "hex digits"
    else:
        kind = "characters that are not all hex digits"
    return f"{len(raw)} {kind}"


def _shape_hint(raw: str) -> str:
    """A hint when a field has the shape of a secret: the columns are likely out of order."""
    if not _HEX_ANY.fullmatch(raw.lower()):
        return ""
    like = {12: "a private ID or an access code", 32: "an AES key"}.get(len(raw))
    return (f" (the shape of {like}: are the columns in the order serial, public ID, private ID, AES key?)"
            if like else "")


def _parse_serial(raw: str, line: int, b: _Builder) -> int | None:
    if raw.lower() == "none":
        b.error(line, "serial is 'None': the tool could not read the key's serial number "
                      "(make the serial visible over USB and program the key again)")
        return None
    if not raw:
        b.error(line, "serial number is missing")
        return None
    if not _DECIMAL.fullmatch(raw):
        b.error(line, f"serial (field 1) is not a decimal number: it has {_shape(raw)}{_shape_hint(raw)}")
        return None
    digits = raw.lstrip("0")
    value = int(digits or "0") if len(digits) <= 12 else SERIAL_MAX + 1  # no huge int from a hostile field
    if value == 0:
        b.error(line, "serial is 0: the key does not expose its serial number (the Personalization Tool "
                      "writes 0 then); enable 'serial number visible' or use ykman")
        return None
    if value > SERIAL_MAX:
        b.error(line, f"serial (field 1) is larger than a YubiKey serial (32 bits, at most {SERIAL_MAX}): it has "
                      f"{_shape(raw)}{_shape_hint(raw)}")
        return None
    return value


def _check_public_id(raw: str, line: int, b: _Builder, column: int = 2) -> str | None:
    if not raw:
        b.error(line, "public ID is empty: the key was programmed without a public identity "
                      "(click Generate for the Public Identity, or use ykman -S/-P)")
        return None
    if not modhex.is_modhex(raw):
        b.error(line, f"public ID (field {column}) is not ModHex (letters cbdefghijklnrtuv, even length): it has "
                      f"{_shape(raw)}{_shape_hint(raw) if column == 2 else ''}")
        return None
    if len(raw) > PUBLIC_ID_MAX_LEN:
        b.error(line, f"public ID (field {column}) is longer than {PUBLIC_ID_MAX_LEN} characters (it has {len(raw)}): "
                      "its OTPs would exceed 48 characters, which validation clients refuse")
        return None
    if len(raw) != PUBLIC_ID_STANDARD_LEN:
        b.warn(line, f"public ID (field {column}) is {len(raw)} characters long, not the standard "
                     f"{PUBLIC_ID_STANDARD_LEN}")
    return raw


def _hex_problem(raw: str, what: str, size: int) -> str:
    if raw and not _HEX_ANY.fullmatch(raw):
        return f"{what} contains characters that are not hex"
    return f"{what} must be {size} hex characters, got {len(raw)}"


def _check_private_id(raw: str, line: int, b: _Builder) -> bytes | None:
    if not _HEX12.fullmatch(raw):
        b.error(line, _hex_problem(raw, "private ID", 12))
        return None
    return bytes.fromhex(raw)


def _check_aes_key(raw: str, line: int, b: _Builder) -> bytes | None:
    if not _HEX32.fullmatch(raw):
        if _HEX_ANY.fullmatch(raw) and len(raw) in (48, 64):
            b.error(line, f"AES key is {len(raw) * 4} bits: YubiKey OTP uses AES-128 (32 hex characters)")
        else:
            b.error(line, _hex_problem(raw, "AES key", 32))
        return None
    return bytes.fromhex(raw)


def _check_access_code(raw: str, line: int, b: _Builder) -> tuple[bool, bytes | None]:
    if not raw:
        return True, None
    if not _HEX12.fullmatch(raw):
        b.error(line, "access code must be empty or 12 hex characters")
        return False, None
    return True, bytes.fromhex(raw)


def _check_timestamp(raw: str, line: int, b: _Builder) -> bool:
    if not raw:
        return True
    # the shape first (one of _TIMESTAMP_FORMATS), then the calendar through the C parser (strptime is slow)
    if _TIMESTAMP_RE.fullmatch(raw):
        try:
            datetime.fromisoformat(raw.upper())
            return True
        except ValueError:
            pass
    b.error(line, f"timestamp (field 6) is not YYYY-MM-DDThh:mm:ss: it has {_shape(raw)}{_shape_hint(raw)}")
    return False


def _cross_check_serial(public_id: str, serial: int, line: int, b: _Builder) -> bool:
    if len(public_id) != PUBLIC_ID_STANDARD_LEN:
        return True
    hex_id = modhex.to_hex(public_id)
    encoded = int(hex_id[4:], 16)
    if hex_id.startswith(SERIAL_PUBLIC_ID_PREFIX) and encoded != serial:
        b.error(line, f"public ID {public_id} encodes serial {encoded} (ykman --serial-public-id) "
                      f"but the serial column says {serial}")
        return False
    if hex_id.startswith(BATCH_PUBLIC_ID_PREFIX) and encoded not in (0, serial) and hex_id[4:6] != "00":
        b.warn(line, f"public ID {public_id} looks serial-based ({encoded}) but the serial column says {serial}")
    return True


def _non_otp_row(fields: list[str]) -> str | None:
    """Why a Yubico-format row is not a Yubico OTP configuration, or None (yubikeylogger.cpp).

    OATH-HOTP rows carry `{pubId},{movingFactorSeed}` and a 40-hex key; challenge-response HMAC rows
    `,0,`; static-password and challenge-response Yubico OTP rows `,,`.
    """
    second = fields[1]
    third = fields[2] if len(fields) > 2 else ""
    fourth = fields[3] if len(fields) > 3 else ""
    if len(fourth) == 40 and _HEX_ANY.fullmatch(fourth):
        if second == "" and third == "0":
            return "challenge-response (HMAC-SHA1) configuration, not Yubico OTP"
        return "OATH-HOTP configuration (40-hex HMAC key), not Yubico OTP"
    if second == "" and third == "0":
        return "challenge-response (HMAC-SHA1) configuration, not Yubico OTP"
    if second == "" and third == "":
        return "static password or challenge-response configuration, not Yubico OTP"
    return None


def _yubico_row(fields: list[str], line: int, fmt: str, b: _Builder) -> None:
    if len(fields) < 4:
        b.error(line, f"expected at least 4 comma-separated fields (serial, public ID, private ID, AES key), "
                      f"found {len(fields)}")
        return
    if fmt == FORMAT_YUBICO and len(fields) > 4 and fields[4] == "":
        fmt = FORMAT_YKMAN  # ykman writes an empty access code; the Personalization Tool pads it with zeros
    b.formats.add(fmt)
    reason = _non_otp_row(fields)
    if reason:
        b.skip(line, reason)
        return
    serial = _parse_serial(fields[0], line, b)
    public_id = _check_public_id(fields[1], line, b)
    private_id = _check_private_id(fields[2], line, b)
    aes_key = _check_aes_key(fields[3], line, b)
    access_ok, access_code = _check_access_code(fields[4] if len(fields) > 4 else "", line, b)
    ts_ok = _check_timestamp(fields[5] if len(fields) > 5 else "", line, b)
    if serial is None or public_id is None or private_id is None or aes_key is None or not access_ok or not ts_ok:
        return
    if not _cross_check_serial(public_id, serial, line, b):
        return
    b.records.append(SecretRecord(line=line, serial=serial, public_id=public_id, private_id=private_id,
                                  aes_key=aes_key, access_code=access_code, source_format=fmt))


def _traditional_row(fields: list[str], line: int, b: _Builder) -> None:
    b.formats.add(FORMAT_TRADITIONAL)
    event = fields[0]
    if event.lower() != "yubico otp":
        known = next((e for e in _TRADITIONAL_EVENTS if event.lower().startswith(e)), None)
        # an event this server does not know is not quoted: in a file of shifted columns it may be a secret
        b.skip(line, f"{event[:len(known)]!r} configuration, not Yubico OTP" if known else
               f"not a Yubico OTP configuration (field 1, the event, has {_shape(event)})")
        return
    if len(fields) < 6:
        b.error(line, f"Traditional log line has {len(fields)} fields, expected 18")
        return
    public_id = _check_public_id(fields[3].lower().replace(" ", ""), line, b, column=4)
    private_id = _check_private_id(fields[4].lower().replace(" ", ""), line, b)
    aes_key = _check_aes_key(fields[5].lower().replace(" ", ""), line, b)
    if public_id is None or private_id is None or aes_key is None:
        return
    hex_id = modhex.to_hex(public_id)
    if len(public_id) == PUBLIC_ID_STANDARD_LEN and hex_id.startswith(SERIAL_PUBLIC_ID_PREFIX) \
            and 0 < int(hex_id[4:], 16):
        serial = int(hex_id[4:], 16)
        b.warn(line, f"serial {serial} taken from the serial-based public ID {public_id}")
        new_code = fields[7].lower() if len(fields) > 7 else ""
        access_ok, access_code = _check_access_code(new_code, line, b)
        if access_ok:
            b.records.append(SecretRecord(line=line, serial=serial, public_id=public_id, private_id=private_id,
                                          aes_key=aes_key, access_code=access_code,
                                          source_format=FORMAT_TRADITIONAL))
        return
    b.error(line, TRADITIONAL_HELP)


def _cross_line_checks(b: _Builder) -> None:
    by_serial: dict[int, int] = {}
    by_public: dict[str, int] = {}
    by_key: dict[bytes, int] = {}
    by_private: dict[bytes, int] = {}
    for r in b.records:
        if r.serial in by_serial:
            b.error(r.line, f"duplicate serial {r.serial} (also on line {by_serial[r.serial]})")
        else:
            by_serial[r.serial] = r.line
        if r.public_id in by_public:
            b.error(r.line, f"duplicate public ID {r.public_id} (also on line {by_public[r.public_id]})")
        else:
            by_public[r.public_id] = r.line
        if r.aes_key in by_key:
            b.warn(r.line, f"same AES key as line {by_key[r.aes_key]}")
        else:
            by_key[r.aes_key] = r.line
        if r.private_id in by_private:
            b.warn(r.line, f"same private ID as line {by_private[r.private_id]}")
        else:
            by_private[r.private_id] = r.line


_TRADITIONAL_EVENTS = ("yubico otp", "oath-hotp", "static password", "challenge-response", "configuration update",
                       "configuration swap", "unknown programming mode")
TRADITIONAL_FIELDS = 18


def _is_traditional(fields: list[str]) -> bool:
    """A Traditional log record: an event name first (possibly translated: then 18 fields)."""
    event = fields[0].lower()
    if _DECIMAL.fullmatch(event) or event in ("", "none"):
        return False
    return event.startswith(_TRADITIONAL_EVENTS) or len(fields) == TRADITIONAL_FIELDS


PROGRESS_LINES = 5000  # parse_secrets reports its progress every this many lines


def parse_secrets(data: bytes, progress: Callable[[int, int], None] | None = None) -> ParsedSecrets:
    """Parse a secrets file: strip BOM/CR/blank/comment lines, detect the format per line, validate.

    ``progress(lines_done, lines)`` is called every PROGRESS_LINES lines and at the end (from the thread
    that parses)."""
    b = _Builder()
    ksm = False
    text = _decode_text(data)
    lines = text.splitlines()
    for number, raw_line in enumerate(lines, start=1):
        if progress is not None and number % PROGRESS_LINES == 0:
            progress(number, len(lines))
        stripped = raw_line.strip().lstrip("\ufeff").strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if re.fullmatch(r"#\s*ykksm\s+1\b.*", stripped, flags=re.IGNORECASE):
                ksm = True
            continue
        if '"' in stripped:
            try:
                fields = [f.strip() for f in next(csv.reader([stripped], skipinitialspace=True))]
            except csv.Error as exc:
                b.error(number, f"not a CSV line ({exc})")
                continue
        else:  # no quoting: what csv.reader would return, much faster for large files
            fields = [f.strip() for f in stripped.split(",")]
        first = fields[0]
        if first.upper() == "LOGGING START":
            b.formats.add(FORMAT_TRADITIONAL)
            b.skip(number, "Traditional log marker")
            continue
        if _is_traditional(fields):
            _traditional_row(fields, number, b)
            continue
        # IDs and keys are case-insensitive hex/ModHex; some tools group them with spaces.
        fields = [f.lower().replace(" ", "") if i <= 3 else f.lower() for i, f in enumerate(fields)]
        _yubico_row(fields, number, FORMAT_KSM if ksm else FORMAT_YUBICO, b)
    if progress is not None:
        progress(len(lines), len(lines))
    _cross_line_checks(b)
    if not b.records and not b.errors.total:
        b.error(0, "no YubiKey OTP records found in the file")
    fmt = FORMAT_UNKNOWN
    if len(b.formats) == 1:
        fmt = next(iter(b.formats))
    elif b.formats == {FORMAT_YUBICO, FORMAT_YKMAN}:
        fmt = FORMAT_YUBICO
    elif b.formats:
        fmt = FORMAT_MIXED
    return ParsedSecrets(format=fmt, records=tuple(b.records), errors=b.errors.first(), warnings=b.warnings.first(),
                         skipped=b.skipped.first(), errors_total=b.errors.total, warnings_total=b.warnings.total,
                         skipped_total=b.skipped.total)
