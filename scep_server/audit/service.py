"""The audit trail's operations for the HTTP handler and the command line: filters parsed from text, a page
of events as JSON, the chain's sealer job and its verification (the SQL is in scep_server.store)."""
from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from trustkit import spreadsheet
from trustkit.clock import aware
from trustkit.paging import Page, PageRequest
from trustkit.problems import BadRequest

from ..store import chain
from ..store.events import EVENT_KEY, EventFilter, list_events

if TYPE_CHECKING:
    from ..runtime import Runtime

log = structlog.get_logger(__name__)

__all__ = ["CSV_COLUMNS", "EVENT_KEY", "EventFilter", "csv_cells", "event_json", "filter_from", "page", "parse_kind",
           "parse_time", "render_csv", "seal", "sealer_job", "verify"]

_KIND = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_TEXT = 255  # actor and subject are columns of 255 characters


def parse_kind(text: str) -> tuple[str, bool]:
    """(kind or prefix, whether a prefix): ``pki.cert.revoke`` exact, ``pki.cert.`` or ``pki.cert.*`` a prefix."""
    prefix = text.endswith(".*") or text.endswith(".")
    value = text[:-1] if text.endswith("*") else text
    if not _KIND.fullmatch(value) or (text.endswith("*") and not text.endswith(".*")):
        raise BadRequest("kind: an event kind (letters, digits, '.', '_', ':', '-'), or a prefix ending in "
                         "'.' or '.*'", code="invalid_kind")
    return value, prefix


def parse_time(name: str, text: str) -> datetime:
    """An ISO 8601 date and time with its offset (``Z`` or ``+01:00``); a BadRequest otherwise."""
    bad = BadRequest(f"{name}: an ISO 8601 date and time with an offset, e.g. 2026-12-01T00:00:00Z",
                     code="invalid_time")
    if not text or len(text) > 64 or not text.isascii():
        raise bad
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise bad from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise bad
    try:  # in UTC, as stored: an offset must not carry it past year 1 or 9999
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise bad from None


def _text(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_TEXT or not value.isprintable():
        raise BadRequest(f"{name}: at most {MAX_TEXT} printable characters", code="invalid_input")
    return value


def filter_from(*, kind: str | None = None, actor: str | None = None, subject: str | None = None,
                since: str | None = None, until: str | None = None) -> EventFilter:
    """The filter of a request (query parameters or command options), checked (BadRequest)."""
    kind_value, prefix = parse_kind(kind) if kind is not None else (None, False)
    start = parse_time("since", since) if since is not None else None
    end = parse_time("until", until) if until is not None else None
    return EventFilter(kind=kind_value, kind_prefix=prefix, actor=_text("actor", actor),
                       subject=_text("subject", subject), since=start, until=end)


def event_json(row: Any) -> dict[str, Any]:
    """An event as the API and `audit list --format json` show it."""
    try:
        data = json.loads(row.data)
    except ValueError:
        data = None
    return {"id": row.id, "at": aware(row.at).isoformat(), "kind": row.kind, "subject": row.subject,
            "actor": row.actor, "data": data if isinstance(data, dict) else {"_stored": row.data},
            "chain_seq": row.chain_seq, "chain_hash": row.chain_hash}


CSV_COLUMNS = ("id", "at", "kind", "subject", "actor", "data", "chain_seq", "chain_hash")


def csv_cells(event: dict[str, Any]) -> list[str]:
    """An event (`event_json`) as the cells of its CSV row (before spreadsheet escaping): what a page shows of it."""
    values = {**event, "data": json.dumps(event["data"], sort_keys=True, separators=(",", ":"))}
    return ["" if values[c] is None else str(values[c]) for c in CSV_COLUMNS]


def render_csv(events: list[dict[str, Any]]) -> str:
    """Events as spreadsheet-safe CSV (`audit list --format csv`, the console's download)."""
    return spreadsheet.render_csv(CSV_COLUMNS, (csv_cells(e) for e in events))


async def page(engine: AsyncEngine, request: PageRequest, flt: EventFilter) -> Page[dict[str, Any]]:
    """One page of events as JSON objects, newest first."""
    async with engine.connect() as conn:
        found = await list_events(conn, request, flt)
    return Page(items=[event_json(r) for r in found.items], next_cursor=found.next_cursor)


async def seal(runtime: "Runtime") -> int:
    """Seal the events written since the last seal (starts the chain on its first call)."""
    return await chain.seal(runtime.engine, now=runtime.clock())


async def verify(engine: AsyncEngine) -> chain.Verification:
    return await chain.verify(engine)


def sealer_job(runtime: "Runtime") -> Callable[[], Awaitable[None]]:
    """The server's loop that seals new events every `[audit] seal_interval` seconds."""
    interval = runtime.settings.audit.seal_interval

    async def audit_sealer() -> None:
        while True:
            try:
                sealed = await seal(runtime)
                if sealed:
                    log.debug("audit.sealed", events=sealed)
            except Exception as exc:  # noqa: BLE001 - the next round seals what this one could not
                log.error("audit.seal.failed", error=f"{exc.__class__.__name__}: {exc}")
            await asyncio.sleep(interval)

    return audit_sealer
