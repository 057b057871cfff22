"""The client's address: the TCP peer, or, when the peer is a trusted reverse proxy, the address it forwarded.

`server.trusted_proxies` lists the proxies' networks and `server.forwarded_header` the header they append
to (`X-Forwarded-For`, or `Forwarded` of RFC 7239). The header is read from the right: addresses of
trusted proxies are skipped and the first other address is the client's; everything to its left was
written by the client and is ignored. From a peer outside those networks the headers are ignored.
Logs and throttles use :func:`client_address`; the middleware also sets ``request.remote`` to it, so
code that cannot import this module (the otp sub-application) sees the same address.
"""
from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Iterable, Sequence

from aiohttp import web

from ..appkeys import RUNTIME

KEY: web.RequestKey[str] = web.RequestKey("client_address", str)  # the resolved address, per request
MAX_HOPS = 32  # forwarded entries looked at, from the right

Address = "IPv4Address | IPv6Address"


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple:
    return tuple(ip_network(c, strict=False) for c in cidrs)


def _ip(text: "str | None") -> "IPv4Address | IPv6Address | None":
    """An address from a header entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`."""
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ip_address(text)
    except ValueError:
        return None  # "unknown", an obfuscated identifier (RFC 7239 §6.3) or garbage
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip, networks: Iterable) -> bool:
    return any(ip in net for net in networks)


def _hops(request: web.BaseRequest, header: str) -> list[str]:
    """The forwarded addresses, left to right (every instance of the header, in order)."""
    if header == "forwarded":
        return [str(element.get("for") or "") for element in request.forwarded]
    hops: list[str] = []
    for value in request.headers.getall("X-Forwarded-For", ()):
        hops.extend(value.split(","))
    return hops


def resolve(peer: "str | None", hops: Sequence[str], trusted: Sequence) -> str:
    """The client's address given the TCP peer, the forwarded chain (left to right) and the trusted networks."""
    peer_ip = _ip(peer)
    if peer_ip is None or not trusted or not _trusted(peer_ip, trusted):
        return peer or ""
    client = str(peer_ip)
    for entry in list(reversed(hops))[:MAX_HOPS]:
        ip = _ip(entry)
        if ip is None:
            break  # unreadable: the nearest address we can vouch for is the last one
        client = str(ip)
        if not _trusted(ip, trusted):
            break
    return client


def _resolve_request(request: web.BaseRequest, cidrs: Sequence[str], header: str) -> str:
    trusted = _networks(tuple(cidrs))
    return resolve(request.remote, _hops(request, header) if trusted else (), trusted)


def client_address(request: web.BaseRequest) -> str:
    """The client's address (for logs and throttles), honouring `server.trusted_proxies`."""
    known = request.get(KEY)
    if known is not None:
        return known
    runtime = request.config_dict.get(RUNTIME)
    server = runtime.settings.server if runtime is not None else None
    address = _resolve_request(request, server.trusted_proxies if server else (),
                               server.forwarded_header if server else "x-forwarded-for")
    request[KEY] = address
    return address


def throttle_key(address: str) -> str:
    """What a per-address throttle counts against: the IPv4 address, or the /64 of an IPv6 address
    (one subscriber's prefix), so an attacker cannot multiply its tries by its addresses."""
    ip = _ip(address)
    if isinstance(ip, IPv6Address):
        return str(IPv6Network((ip, 64), strict=False))
    return str(ip) if ip is not None else address


def middleware(cidrs: Sequence[str], header: str = "x-forwarded-for"):
    """Resolve the client address once per request; `request.remote` becomes that address."""
    cidrs = tuple(cidrs)

    @web.middleware
    async def client_address_middleware(request: web.Request, handler):
        if not cidrs:
            request[KEY] = request.remote or ""
            return await handler(request)
        address = _resolve_request(request, cidrs, header)
        request[KEY] = address
        if address != request.remote:
            request = request.clone(remote=address)
        return await handler(request)

    return client_address_middleware
