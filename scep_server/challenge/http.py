"""Bounded reading of the answers of outbound HTTP calls (Intune, validation webhooks)."""
from __future__ import annotations

import json
from typing import Any

import aiohttp


class ResponseTooLarge(Exception):
    """The peer announced or sent more than the configured cap."""


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, refused as soon as it is known to exceed `cap` bytes (announced or received)."""
    if resp.content_length is not None and resp.content_length > cap:
        raise ResponseTooLarge(f"the answer announces {resp.content_length} bytes (cap {cap})")
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 14):
        buf += chunk
        if len(buf) > cap:
            raise ResponseTooLarge(f"the answer exceeds {cap} bytes")
    return bytes(buf)


async def json_object(resp: aiohttp.ClientResponse, cap: int) -> "dict[str, Any] | None":
    """The JSON object of a bounded body; None if the body is not a JSON object."""
    body = await read_capped(resp, cap)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def header_safe(token: object) -> bool:
    """An access token that can go in an Authorization header as it is (printable ASCII, no space)."""
    return (isinstance(token, str) and 0 < len(token) <= 16384 and token.isascii() and token.isprintable()
            and " " not in token)
