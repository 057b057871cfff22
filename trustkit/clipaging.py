"""Paged lists on the command line (docs/api.md "Pagination"): every list command takes ``--limit``,
``--cursor`` and ``--all``, and a list is never cut without a word. Shared by the application's commands and
those of its libraries (otp's `yubikey report`, `otp-client list`); ``scep_server.clipaging`` re-exports it.

A command decorates itself with :func:`paging_options`, then reads its rows with :func:`collect`, handing it
a function that fetches one page (a :class:`trustkit.paging.Page`) for a ``PageRequest``. Without ``--all``
one page is printed and, when more rows exist, standard error says how to get them (the cursor to pass, or
``--all``); with ``--all`` pages are read until the last.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

import click

if TYPE_CHECKING:
    from trustkit.paging import Page, PageRequest

DEFAULT_LIMIT = 100
MAX_PAGES = 1_000_000  # a bound on --all: a billion rows at the largest page size


def paging_options(command: Callable) -> Callable:
    """``--limit N`` (default 100, at most 1000), ``--cursor C`` and ``--all``."""
    command = click.option("--all", "all_rows", is_flag=True, help="Every row (reads page after page).")(command)
    command = click.option("--cursor", help="Start after the row this cursor names (printed on stderr).")(command)
    command = click.option("--limit", type=click.IntRange(1, 1000), default=DEFAULT_LIMIT, show_default=True,
                           help="Rows per page.")(command)
    return command


async def collect(fetch: Callable[["PageRequest"], Awaitable["Page[Any]"]], *, limit: int, cursor: str | None,
                  all_rows: bool, kinds: tuple) -> tuple[list[Any], str | None]:
    """(rows, next cursor): one page, or every page with ``all_rows``. A bad ``--cursor`` is a usage error."""
    from trustkit.paging import PageRequest, decode_cursor
    from trustkit.problems import BadRequest

    try:
        after = decode_cursor(cursor, kinds) if cursor else None
    except BadRequest:
        raise click.BadParameter("not a cursor of this list", param_hint="--cursor") from None
    rows: list[Any] = []
    request = PageRequest(limit=limit, after=after)
    for _ in range(MAX_PAGES):
        page = await fetch(request)
        rows.extend(page.items)
        if page.next_cursor is None or not all_rows:
            return rows, page.next_cursor
        request = PageRequest(limit=limit, after=decode_cursor(page.next_cursor, kinds))
    raise click.ClickException("the list did not end")  # pragma: no cover - bounded by MAX_PAGES


def say_more(next_cursor: str | None, shown: int) -> None:
    """On standard error, when a page is not the last: how to read on."""
    if next_cursor is not None:
        click.echo(f"{shown} rows shown; more with --cursor {next_cursor} (or --all)", err=True)
