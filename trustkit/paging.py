"""Cursor pagination for every list of the HTTP API and the command line (docs/api.md "Pagination").

A list is read in pages ordered by a unique key (a tuple of columns, e.g. ``(issued_at, serial)``): a page is
the first ``limit`` rows after a position, and the cursor of the next page is the key of the page's last row.
Keyset pages cost one index range scan wherever they start, rows inserted meanwhile neither repeat nor shift
a page, and a cursor carries no database offset an attacker could make expensive.

- :func:`page_request`: ``limit`` and ``cursor`` from a query string, checked (400 problems
  ``invalid_limit`` / ``invalid_cursor``).
- :func:`after`: the SQL condition "after this key" for SQLite and PostgreSQL alike.
- :func:`take`: cut the ``limit + 1`` rows a query fetched into a :class:`Page` and its next cursor.
- :func:`page_body` / :func:`next_link`: the JSON answer (``{<name>: [...], "next_cursor": ..., "next": ...}``)
  and its ``Link: <...>; rel="next"`` header.

A cursor is opaque to clients: URL-safe base64 of a JSON array of the key's values. A forged cursor only
chooses where a page starts, as a legitimate one does; one that does not decode to the key's shape is a 400.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Generic, Mapping, Sequence, TypeVar

from .clock import aware
from .problems import BadRequest
from .text import unstorable

if TYPE_CHECKING:
    import sqlalchemy as sa

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR_CHARS = 1024

T = TypeVar("T")
KeyPart = type  # str, int, RowId or datetime: the type of one column of the key


class RowId(int):
    """The kind of a cursor value stored in a 32-bit integer column (an autoincrement id): a larger value is no
    row's, and PostgreSQL would refuse to compare it."""


_BOUND = {RowId: 2 ** 31, int: 2 ** 63}


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: tuple | None  # the key of the last row of the previous page; None for the first page


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None  # None on the last page


def encode_cursor(key: Sequence[Any]) -> str:
    """The opaque cursor of a row key (str, int or datetime values: no key column is nullable)."""
    values = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, kinds: Sequence[KeyPart]) -> tuple:
    """The key a cursor carries, each value of its kind; :class:`BadRequest` (``invalid_cursor``) otherwise."""
    bad = BadRequest("cursor: not a cursor of this list", code="invalid_cursor")
    if not text or len(text) > MAX_CURSOR_CHARS or not text.isascii():
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise bad from None
    if not isinstance(values, list) or len(values) != len(kinds):
        raise bad
    out: list[Any] = []
    for value, kind in zip(values, kinds):
        if kind is datetime and isinstance(value, str):
            try:  # as stored: UTC (an offset moved past year 1 or 9999 is no time of ours)
                out.append(aware(datetime.fromisoformat(value)).astimezone(timezone.utc))
            except (ValueError, OverflowError):
                raise bad from None
        elif kind in _BOUND and type(value) is int and abs(value) < _BOUND[kind]:
            out.append(value)
        elif kind is str and isinstance(value, str) and len(value) <= 512 and unstorable(value) is None:
            out.append(value)
        else:
            raise bad
    return tuple(out)


def page_request(query: Mapping[str, str], kinds: Sequence[KeyPart], *, default: int = DEFAULT_LIMIT,
                 maximum: int = MAX_LIMIT) -> PageRequest:
    """``limit`` (1..maximum, default `default`) and ``cursor`` of a request's query."""
    text = query.get("limit")
    if text is None or text == "":
        limit = default
    else:
        if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= maximum:
            raise BadRequest(f"limit: a whole number from 1 to {maximum}", code="invalid_limit")
        limit = int(text)
    cursor = query.get("cursor")
    return PageRequest(limit=limit, after=decode_cursor(cursor, kinds) if cursor else None)


def after(columns: Sequence[sa.ColumnElement], key: Sequence[Any] | None, *,
          descending: bool = False) -> sa.ColumnElement[bool]:
    """Rows strictly after `key` in the order of `columns` (all ascending, or all descending): the expanded
    form ``(a > x) OR (a = x AND b > y) ...``, behind the redundant bound ``a >= x``.

    The bound is what makes a page an index range: PostgreSQL takes no condition of an OR as an index bound,
    so without it an ordered index scan starts at the list's beginning and filters every row before the
    cursor (a page deep in a list costs what all the rows before it cost); SQLite starts at the bound too."""
    import sqlalchemy as sa  # here: the pages' other helpers serve readers that do not use SQLAlchemy

    if key is None:
        return sa.true()
    if len(columns) != len(key):
        raise ValueError("the key and the columns differ in length")
    clauses = []
    for i, (col, value) in enumerate(zip(columns, key)):
        step = col < value if descending else col > value
        clauses.append(sa.and_(*(c == v for c, v in zip(columns[:i], key[:i])), step))
    if len(columns) == 1:
        return clauses[0]
    bound = columns[0] <= key[0] if descending else columns[0] >= key[0]
    return sa.and_(bound, sa.or_(*clauses))


def order(columns: Sequence[sa.ColumnElement], *, descending: bool = False) -> list[sa.ColumnElement]:
    """The ORDER BY that goes with :func:`after`."""
    return [c.desc() if descending else c.asc() for c in columns]


def take(rows: Sequence[T], limit: int, key: Callable[[T], Sequence[Any]]) -> Page[T]:
    """The page of `rows` (a query's first ``limit + 1`` rows): the next cursor only if there is more."""
    items = list(rows[:limit])
    more = len(rows) > limit
    return Page(items=items, next_cursor=encode_cursor(key(items[-1])) if more and items else None)


def next_link(url: Any, page: Page) -> str | None:
    """The URL of the next page: `url` (a yarl.URL, the request's relative URL) with its cursor replaced."""
    if page.next_cursor is None:
        return None
    return str(url.update_query(cursor=page.next_cursor))


def page_body(name: str, items: list[Any], page: Page, url: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(JSON body, headers) of one page: ``{name: items, "next_cursor": ..., "next": ...}`` and ``Link``."""
    link = next_link(url, page)
    headers = {"Link": f'<{link}>; rel="next"'} if link else {}
    return {name: items, "next_cursor": page.next_cursor, "next": link}, headers
