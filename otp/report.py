"""The YubiKey report: filters, rows and their table / CSV / JSON renderings (Okta "View Report")."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timezone
from typing import Any, Mapping

from trustkit import spreadsheet
from trustkit.paging import RowId
from trustkit.text import unstorable

from .errors import InvalidInput
from .statuses import STATUSES

FORMATS = ("table", "csv", "json")

REPORT_KEY = (int, RowId)  # serial (64-bit), id
"""The kinds of a report page's cursor: the serial, then the row id (a serial repeats among deleted keys)."""

# (filter name, query/option name) of the date-range filters
DATE_FILTERS = ("imported_after", "imported_before", "enrolled_after", "enrolled_before",
                "last_used_after", "last_used_before")


def parse_when(value: str, name: str) -> datetime:
    """An ISO date or date-time; naive values are UTC, a bare date means its midnight."""
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=timezone.utc)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name}: {value!r} is not an ISO date (YYYY-MM-DD) or date-time") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    try:  # in UTC, as the database compares it: an offset must not carry it past year 1 or 9999
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        raise InvalidInput(f"{name}: {value!r} is out of range") from None


# ASCII digits only: str.isdigit() and int() also take other scripts' digits, and isdigit() takes '²'.
_ASCII_NUMBER = re.compile(r"[0-9]{1,19}")


def parse_number(value: str | int, what: str) -> int:
    """A non-negative integer written in ASCII digits (surrounding blanks allowed); InvalidInput otherwise."""
    text = str(value).strip()
    if not _ASCII_NUMBER.fullmatch(text):
        raise InvalidInput(f"{what} {value!r} is not a number")
    return int(text)


def parse_serial(value: str | int) -> int:
    try:
        serial = parse_number(value, "serial")
    except InvalidInput:
        serial = 0
    if not 0 < serial <= 0xFFFFFFFF:
        raise InvalidInput(f"serial {value!r} is not a YubiKey serial number")
    return serial


@dataclass(frozen=True)
class ReportFilter:
    """Filters of the report; `*_after` is inclusive, `*_before` exclusive; `user` matches current or former."""

    status: str | None = None
    serial: int | None = None
    user: str | None = None
    public_id: str | None = None
    imported_after: datetime | None = None
    imported_before: datetime | None = None
    enrolled_after: datetime | None = None
    enrolled_before: datetime | None = None
    last_used_after: datetime | None = None
    last_used_before: datetime | None = None
    include_deleted: bool = True
    limit: int | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ReportFilter":
        """Build from query parameters or CLI options (strings); InvalidInput on a bad value."""
        kw: dict[str, Any] = {}
        status = values.get("status")
        if status:
            status = str(status).upper()
            if status not in STATUSES:
                raise InvalidInput(f"status must be one of {', '.join(STATUSES)}")
            kw["status"] = status
        if values.get("serial") not in (None, ""):
            kw["serial"] = parse_serial(values["serial"])
        for name in ("user", "public_id"):
            if values.get(name):
                text = str(values[name])
                why = unstorable(text) or ("longer than 255 characters" if len(text) > 255 else None)
                if why:
                    raise InvalidInput(f"{name}: {why}")
                kw[name] = text.strip().lower() if name == "public_id" else text
        for name in DATE_FILTERS:
            raw = values.get(name)
            if raw not in (None, ""):
                kw[name] = raw if isinstance(raw, datetime) else parse_when(str(raw), name)
        deleted = values.get("include_deleted")
        if deleted not in (None, ""):
            kw["include_deleted"] = str(deleted).lower() not in ("0", "false", "no")
        if values.get("limit") not in (None, ""):
            limit = values["limit"]
            try:
                kw["limit"] = limit if isinstance(limit, int) else parse_number(limit, "limit")
            except InvalidInput:
                raise InvalidInput("limit must be a number") from None
            if kw["limit"] < 1:
                raise InvalidInput("limit must be positive")
        return cls(**kw)


@dataclass(frozen=True)
class KeyReport:
    """One row of the report; `history` lists enrolment, revocation, deletion and security events."""

    serial: int
    public_id: str
    status: str
    user: str | None
    last_user: str | None
    imported_at: datetime
    enrolled_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    deleted_at: datetime | None
    blocked_until: datetime | None
    import_id: int
    import_format: str
    history: tuple[dict[str, Any], ...] = field(default=())
    key_id: int = field(default=0, compare=False)  # the row's id: with the serial, where a page ends

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    def to_json(self, with_history: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("history", "key_id"):
                continue
            v = getattr(self, f.name)
            out[f.name] = v.isoformat() if isinstance(v, datetime) else v
        out["serial"] = str(self.serial)
        out["deleted"] = self.deleted
        if with_history:
            out["history"] = [_jsonable(h) for h in self.history]
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


CSV_COLUMNS = ("serial", "public_id", "status", "user", "last_user", "imported_at", "enrolled_at", "last_used_at",
               "revoked_at", "deleted_at", "import_format")
TABLE_COLUMNS = ("serial", "public_id", "status", "user", "imported_at", "enrolled_at", "last_used_at", "revoked_at",
                 "deleted_at")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def _row_cells(row: KeyReport, columns: tuple[str, ...], *, former_user_in_brackets: bool = False) -> list[str]:
    cells = []
    for c in columns:
        if c == "user" and former_user_in_brackets and not row.user and row.last_user:
            cells.append(f"({row.last_user})")  # a revoked key keeps its former user visible, for audit
        else:
            cells.append(_cell(getattr(row, c)))
    return cells


def csv_cells(row: KeyReport) -> list[str]:
    """The cells of a row as the CSV carries them (before spreadsheet escaping), for pages showing what it holds."""
    return _row_cells(row, CSV_COLUMNS)


def render_csv(rows: list[KeyReport]) -> str:
    return spreadsheet.render_csv(CSV_COLUMNS, (_row_cells(r, CSV_COLUMNS) for r in rows))


def render_json(rows: list[KeyReport], with_history: bool = True) -> str:
    return json.dumps({"count": len(rows), "keys": [r.to_json(with_history) for r in rows]}, indent=2)


def render_table(rows: list[KeyReport]) -> str:
    body = [_row_cells(r, TABLE_COLUMNS, former_user_in_brackets=True) for r in rows]
    header = [c.upper() for c in TABLE_COLUMNS]
    widths = [max([len(header[i])] + [len(b[i]) for b in body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip()]
    for b in body:
        lines.append("  ".join(v.ljust(widths[i]) for i, v in enumerate(b)).rstrip())
    lines.append(f"{len(rows)} key{'s' if len(rows) != 1 else ''}")
    return "\n".join(lines) + "\n"


def render(rows: list[KeyReport], fmt: str) -> str:
    if fmt == "csv":
        return render_csv(rows)
    if fmt == "json":
        return render_json(rows)
    if fmt == "table":
        return render_table(rows)
    raise InvalidInput(f"format must be one of {', '.join(FORMATS)}")


def key_reports(rows: list[dict[str, Any]], history: Mapping[int, list[dict[str, Any]]] | None) -> list[KeyReport]:
    """The report's rows from the store's key rows (otp.store.OtpStore.report_rows) and, unless None, their
    events by key id (OtpStore.history): the import first, then the key's events in order."""
    out = []
    for r in rows:
        events: tuple[dict[str, Any], ...] = ()
        if history is not None:
            events = ({"at": r["imported_at"], "event": "otp.key.imported", "user": None, "actor": r["actor"],
                       "client_id": None, "source": None, "detail": {"import_id": r["import_id"], "format": r["format"]}},
                      *history.get(r["id"], []))
        out.append(KeyReport(
            serial=r["serial"], public_id=r["public_id"], status=r["status"], user=r["user_name"],
            last_user=r["last_user"], imported_at=r["imported_at"], enrolled_at=r["enrolled_at"],
            last_used_at=r["last_used_at"], revoked_at=r["revoked_at"], deleted_at=r["deleted_at"],
            blocked_until=r["blocked_until"], import_id=r["import_id"], import_format=r["format"],
            history=events, key_id=r["id"]))
    return out
