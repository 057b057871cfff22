"""The console's audit log (the ``events`` table, as `scep-server audit list` and GET /api/v1/events show it):

    GET  /admin/audit                          events, newest first: filters ``actor``, ``kind`` (exact, or a prefix
                                               ending in ``.`` or ``.*``), ``subject``, ``since`` (inclusive) and
                                               ``until`` (exclusive, ISO 8601 with an offset), cursor pages
    GET  /admin/audit.csv                      with the same query: exactly the page shown, as spreadsheet-safe CSV
    GET  /admin/audit/chain                    the hash chain's verification (``[audit] chain``; `audit verify`)

The chain is verified on its own page, on request: verification reads every event, too much for each view of
the list. A bad filter value is a 400 page.
"""
from __future__ import annotations

from aiohttp import web
from yarl import URL

from trustkit import paging
from trustkit.problems import DomainError

from .pages import PREFIX, page as _page, runtime as _runtime

FILTERS = ("kind", "actor", "subject", "since", "until")


async def _events(request: web.Request):
    """(filter values, page of events) of the query; a BadRequest (400) on a bad value."""
    from ..audit import service

    values = {key: request.query.get(key, "") for key in FILTERS}
    flt = service.filter_from(**{key: value or None for key, value in values.items()})
    page = await service.page(_runtime(request).engine, paging.page_request(request.query, service.EVENT_KEY,
                                                                            default=50), flt)
    return values, page


async def audit_log(request: web.Request) -> web.Response:
    from ..audit.service import CSV_COLUMNS, csv_cells

    values = {key: request.query.get(key, "") for key in FILTERS}
    error, rows, next_url = None, [], None
    try:
        values, page = await _events(request)
        rows = [{"id": e["id"], "subject": e["subject"], "cells": csv_cells(e)} for e in page.items]
        next_url = paging.next_link(request.rel_url, page)
    except DomainError as exc:
        if exc.status != 400:
            raise
        error = exc.detail
    csv_url = str(URL(PREFIX + "/audit.csv").with_query(request.rel_url.query))
    return _page(request, "audit.jinja2", {
        "filters": values, "columns": CSV_COLUMNS, "rows": rows, "next_url": next_url, "csv_url": csv_url,
        "chain": _runtime(request).settings.audit.chain, "error": error}, status=400 if error else 200)


async def audit_csv(request: web.Request) -> web.Response:
    """Exactly the page the log shows (same filters, same cursor and limit), as spreadsheet-safe CSV."""
    from ..audit.service import render_csv

    _, page = await _events(request)
    return web.Response(text=render_csv(page.items), content_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="audit.csv"'})


async def audit_chain(request: web.Request) -> web.Response:
    from ..audit import service

    runtime = _runtime(request)
    result = await service.verify(runtime.engine)
    return _page(request, "audit_chain.jinja2", {"chain": runtime.settings.audit.chain, "result": result},
                 status=200)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/audit", audit_log)
    app.router.add_get("/audit.csv", audit_csv)
    app.router.add_get("/audit/chain", audit_chain)
