"""GET /api/v1/events (admin): the audit trail, newest first, with filters and cursor pagination.

Query: ``kind`` (exact, or a prefix ending in ``.`` or ``.*``), ``actor``, ``subject``, ``since``
(inclusive) and ``until`` (exclusive) as ISO 8601 with an offset, ``limit`` and ``cursor``
(docs/api.md "Pagination"). A bad value is a 400 problem.
"""
from __future__ import annotations

from aiohttp import web

from trustkit.paging import page_body, page_request

from ..appkeys import RUNTIME
from ..web.auth import requires
from . import service


@requires("admin")
async def list_events(request: web.Request) -> web.Response:
    q = request.query
    flt = service.filter_from(kind=q.get("kind"), actor=q.get("actor"), subject=q.get("subject"),
                              since=q.get("since"), until=q.get("until"))
    found = await service.page(request.app[RUNTIME].engine, page_request(q, service.EVENT_KEY), flt)
    body, headers = page_body("events", found.items, found, request.rel_url)
    return web.json_response(body, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/events", list_events)
