"""Serving CRLs at the CDP (RFC 5280 §4.2.1.13, RFC 2585 §4) with validators and 304s (RFC 9110 §13)."""
# Cache-Control/Expires never reach beyond nextUpdate (RFC 9111 §5.2). Responses for the current CRL are
# prepared once per CRL and per second (max-age counts down to nextUpdate); a request only looks the CA
# up, compares validators and hands the prepared bytes and headers to aiohttp.
from __future__ import annotations

import re
import time
from datetime import datetime
from email.utils import formatdate, parsedate_to_datetime
from typing import Callable, Mapping, Protocol

from aiohttp import web
from multidict import CIMultiDict

from trustkit.http import text_errors

from .config import CrlSettings

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.~-]+")
_PARTITION = re.compile(r"0|[1-9][0-9]{0,5}")  # one spelling per partition: no sign, no leading zero
DER_TYPE = "application/pkix-crl"  # RFC 2585 §4.2
PEM_TYPE = "application/x-pem-file"


class HasCurrentCrl(Protocol):
    """Anything serving a CRL: a Publisher, or a fixed holder in tests."""

    @property
    def current(self): ...


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


class _Prepared:
    """Bodies and headers of one CRL for one second."""

    __slots__ = ("crl", "second", "last_modified_ts", "shares_second", "_common", "_forms")

    def __init__(self, crl, second: int, max_age_cap: int) -> None:
        self.crl = crl
        self.second = second
        self.last_modified_ts = crl.this_update.timestamp()
        # the CRL before it was served with the same Last-Modified: that date does not tell them apart
        self.shares_second = getattr(crl, "shares_second", False)
        remaining = int(crl.next_update.timestamp()) - second
        common = {"Last-Modified": _http_date(self.last_modified_ts)}
        if remaining > 0:
            max_age = min(max_age_cap, remaining)
            common["Cache-Control"] = f"public, max-age={max_age}, no-transform"
            common["Expires"] = _http_date(second + max_age)
        else:  # nextUpdate has passed: the CRL is stale, let nobody cache it
            common["Cache-Control"] = "no-cache"
            common["Expires"] = _http_date(second)
        self._common = common
        self._forms: dict[str, tuple] = {}

    def form(self, name: str) -> tuple:
        """(body, ETag, headers of a 200, headers of a 304) of the "der" or "pem" representation, made when first
        asked for: the PEM text of a CRL exists only once a client wants it."""
        prepared = self._forms.get(name)
        if prepared is None:
            body, etag, ctype = ((self.crl.der, self.crl.etag, DER_TYPE) if name == "der" else
                                 (self.crl.pem, self.crl.etag[:-1] + '-pem"', PEM_TYPE))
            prepared = self._forms[name] = (body, etag, CIMultiDict(self._common, **{"Content-Type": ctype,
                                                                                     "ETag": etag}),
                                            CIMultiDict(self._common, ETag=etag))
        return prepared


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 §13.1.2)."""
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


def _not_modified_since(header: str, last_modified_ts: float, *, shares_second: bool = False) -> bool:
    """Whether the CRL is unmodified since the date `header` gives. When the CRL before it had the same
    thisUpdate second (`shares_second`), a client dated that second may hold either: only a later date is."""
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a year beyond a C long
        return False  # an unreadable date is ignored (RFC 9110 §13.1.3)
    if since.tzinfo is None:
        return False
    if shares_second:
        return int(last_modified_ts) < since.timestamp()
    return int(last_modified_ts) <= since.timestamp()


class CrlEndpoint:
    """`GET/HEAD /crl/{ca}.crl` (DER) and `/crl/{ca}.pem`; 404 for an unknown CA, 503 before the first CRL.
    With `partitions` (CA -> partition number -> publisher), `/crl/{ca}/{partition}.crl|.pem` too."""

    def __init__(self, publishers: Mapping[str, HasCurrentCrl], *, settings: "CrlSettings | None" = None,
                 clock: Callable[[], float] = time.time,
                 partitions: "Mapping[str, Mapping[int, HasCurrentCrl]] | None" = None) -> None:
        self.publishers = publishers
        self.partitions = partitions if partitions is not None else {}
        self.max_age = int((settings or CrlSettings()).http_max_age.total_seconds())
        self.clock = clock
        self._prepared: dict[str, _Prepared] = {}

    def _prepare(self, ca: str, pub: "HasCurrentCrl | None" = None, key: "str | None" = None):
        pub = pub if pub is not None else self.publishers.get(ca)
        if pub is None:
            return None
        crl = pub.current
        if crl is None:
            return False
        second = int(self.clock())
        key = key or ca
        prepared = self._prepared.get(key)
        if prepared is None or prepared.crl is not crl or prepared.second != second:
            prepared = self._prepared[key] = _Prepared(crl, second, self.max_age)
        return prepared

    @text_errors
    async def der(self, request: web.Request) -> web.Response:
        """The CRL as DER, the representation the CDP URI names (RFC 5280 §4.2.1.13)."""
        return self._serve(request, request.match_info["ca"], "der")

    @text_errors
    async def pem(self, request: web.Request) -> web.Response:
        """The CRL as PEM (RFC 7468 §5), a convenience for people and scripts."""
        return self._serve(request, request.match_info["ca"], "pem")

    @text_errors
    async def partition_der(self, request: web.Request) -> web.Response:
        """A partition's CRL as DER: the URL the CRL Distribution Point of its certificates names."""
        return self._serve_partition(request, "der")

    @text_errors
    async def partition_pem(self, request: web.Request) -> web.Response:
        return self._serve_partition(request, "pem")

    def _serve_partition(self, request: web.Request, form: str) -> web.Response:
        ca, part = request.match_info["ca"], request.match_info["partition"]
        pubs = self.partitions.get(ca)
        pub = pubs.get(int(part)) if pubs is not None and _PARTITION.fullmatch(part) else None
        if pub is None:
            return web.Response(status=404, text=f"no CRL partition {part[:16]!r} of CA {ca[:64]!r} here\n")
        return self._serve(request, ca, form, pub, f"{ca}/{part}")

    def der_for(self, ca: str):
        """A handler bound to one CA, for a plain (non-pattern) route."""
        async def handler(request: web.Request) -> web.Response:
            return self._serve(request, ca, "der")

        return text_errors(handler)

    def pem_for(self, ca: str):
        async def handler(request: web.Request) -> web.Response:
            return self._serve(request, ca, "pem")

        return text_errors(handler)

    def _serve(self, request: web.Request, ca: str, form: str, pub: "HasCurrentCrl | None" = None,
               key: "str | None" = None) -> web.Response:
        p = self._prepare(ca, pub, key)
        if not p:
            return self._missing(ca, p)
        body, etag, ok_headers, not_modified_headers = p.form(form)
        headers = request.headers
        if "If-None-Match" in headers or "If-Modified-Since" in headers:
            if self._not_modified(headers, etag, p):
                return web.Response(status=304, headers=not_modified_headers)
        return web.Response(body=body, headers=ok_headers)

    @text_errors
    async def other(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return web.Response(status=404, text=f"no such CRL {name!r}: use /crl/<ca>.crl (DER) or /crl/<ca>.pem\n")

    @staticmethod
    def _not_modified(headers, etag: str, p: _Prepared) -> bool:
        """RFC 9110 §13.2.2: If-None-Match decides when present, else If-Modified-Since."""
        inm = headers.get("If-None-Match")
        if inm is not None:
            return _etag_matches(inm, etag)
        return _not_modified_since(headers["If-Modified-Since"], p.last_modified_ts, shares_second=p.shares_second)

    @staticmethod
    def _missing(ca: str, p) -> web.Response:
        if p is None:
            return web.Response(status=404, text=f"no CA named {ca!r} publishes a CRL here\n")
        return web.Response(status=503, headers={"Retry-After": "5"},
                            text=f"the CRL of CA {ca[:64]!r} is not published yet\n")


def add_routes(app: web.Application, publishers: Mapping[str, HasCurrentCrl], *, prefix: str = "/crl",
               settings: "CrlSettings | None" = None, clock: Callable[[], float] = time.time,
               partitions: "Mapping[str, Mapping[int, HasCurrentCrl]] | None" = None) -> CrlEndpoint:
    """Mount the CRL endpoints on `app` (GET, with HEAD) and return the endpoint object."""
    endpoint = CrlEndpoint(publishers, settings=settings, clock=clock, partitions=partitions)
    prefix = prefix.rstrip("/")
    for ca in list(publishers):  # plain routes resolve by dict lookup; the patterns catch CAs added later
        if not _PLAIN_NAME.fullmatch(ca):
            continue
        app.router.add_get(f"{prefix}/{ca}.crl", endpoint.der_for(ca))
        app.router.add_get(f"{prefix}/{ca}.pem", endpoint.pem_for(ca))
    app.router.add_get(prefix + "/{ca}.crl", endpoint.der)
    app.router.add_get(prefix + "/{ca}.pem", endpoint.pem)
    app.router.add_get(prefix + "/{ca}/{partition}.crl", endpoint.partition_der)
    app.router.add_get(prefix + "/{ca}/{partition}.pem", endpoint.partition_pem)
    app.router.add_get(prefix + "/{name}", endpoint.other)
    return endpoint


def last_modified_of(this_update: datetime) -> str:
    """The Last-Modified value a CRL is served with (thisUpdate, RFC 9110 §8.8.2)."""
    return _http_date(this_update.timestamp())
