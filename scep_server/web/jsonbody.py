"""Reading a JSON request body: one object, strict, with a bounded cost and a 400 for anything else.

Refused (``BadJSON``, a ValueError): bytes that are not UTF-8 JSON, a top level that is not an object,
nesting deeper than ``MAX_DEPTH``, a repeated key in one object (parsers disagree on which one wins),
NaN/Infinity and numbers too large for a float or for Python's integer-parsing limit, strings with a NUL
or an unpaired surrogate (neither can be stored in PostgreSQL or encoded as UTF-8). The request API
bodies are flat, so none of these refusals costs a legitimate caller anything.
"""
from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

MAX_DEPTH = 16


class BadJSON(ValueError):
    """The body is not an acceptable JSON object; the message says why (safe to show the caller)."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise BadJSON("the body repeats a key in one object")
    return obj


def _constant(name: str) -> Any:
    raise BadJSON(f"{name} is not JSON")


def _check(value: Any) -> None:
    """Depth, strings and numbers of a parsed document, walked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise BadJSON("a string contains a NUL character")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadJSON("a string contains an unpaired surrogate") from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadJSON("a number is out of range")
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise BadJSON(f"the body is nested deeper than {MAX_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def loads_object(raw: bytes | str) -> dict[str, Any]:
    """Parse `raw` as one JSON object, or raise BadJSON."""
    try:
        data = json.loads(raw, object_pairs_hook=_pairs, parse_constant=_constant)
    except BadJSON:
        raise
    except RecursionError:
        raise BadJSON("the body is nested too deeply") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer beyond the digit limit
        raise BadJSON("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadJSON("the body must be a JSON object")
    _check(data)
    return data


async def read_object(request: web.Request, *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request body as one JSON object; an empty body gives ``empty`` when set, else BadJSON."""
    raw = await request.read()
    if not raw.strip() and empty is not None:
        return dict(empty)
    return loads_object(raw)
