"""Text that no store can hold: checked where it enters (URLs, JSON bodies, cursors), never at the database."""
from __future__ import annotations


def unstorable(text: str) -> str | None:
    """Why `text` cannot be stored or encoded (a NUL character: PostgreSQL refuses it in text; an unpaired
    surrogate: not UTF-8, what aiohttp makes of URL or header bytes that are not), or None when it can."""
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired surrogate"
    return None
