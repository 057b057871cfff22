"""CSV that a spreadsheet opens as data: a cell that starts with a formula character is written with a
leading quote, so an attacker-chosen value (a device name, a user name) cannot run as a formula (CSV
injection). Used by every CSV export (the YubiKey report, the audit trail)."""
from __future__ import annotations

import csv
import io
from typing import Iterable, Sequence

# A spreadsheet reads a cell that starts with one of these as a formula (or strips the blank before one).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# ... and one whose first character after leading blanks (which some spreadsheets and converters strip) is one of
# these, the full-width forms included (some locales read them as the ASCII ones)
AFTER_BLANKS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text: a leading formula character, or one behind leading blanks, is escaped
    with a quote."""
    return "'" + cell if cell.startswith(FORMULA_START) or cell.lstrip().startswith(AFTER_BLANKS) else cell


def render_csv(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A CSV document (CRLF line ends) of `header` and `rows`, every cell made safe."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    for row in rows:
        w.writerow([csv_safe(c) for c in row])
    return buf.getvalue()
