"""The console's audit log over HTTP: filters (actor, kind, subject, time range), cursor pages, the CSV of
exactly the page shown (spreadsheet-safe), the hash chain's verification; anonymous requests, posts without the
CSRF token and hostile values end in a redirect or a 4xx page, never a 500. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import html
import io
import re
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from scep_server.store import chain
from scep_server.store.events import record_event
from scep_server.store.tables import events
from trustkit.db import writer
from trustkit.spreadsheet import csv_safe

from .conftest import open_console
from .test_console_browser import browser, page_of, sign_in  # noqa: F401 - the browser fixture

ROW = re.compile(r'<tr class="event" data-id="(\d+)">(.*?)</tr>', re.S)
CELL = re.compile(r'<td class="cell[^"]*">(.*?)</td>', re.S)
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def table(text: str) -> list[list[str]]:
    return [[html.unescape(c) for c in CELL.findall(body)] for _, body in ROW.findall(text)]


def kinds(text: str) -> list[str]:
    return [row[2] for row in table(text)]


def csv_rows(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["id", "at", "kind", "subject", "actor", "data", "chain_seq", "chain_hash"]
    return rows[1:]


async def seed(console) -> None:
    """Five events on 2026-01-01, a second apart (newest first in the log: e5 ... e1)."""
    rows = [("pki.cert.issue", "01ab", "scep:default"), ("pki.cert.revoke", "01ab", "token:ab:ops"),
            ("device.create", "laptop-1", "token:ab:ops"), ("pki.certificate", "=HYPERLINK(\"x\")", "cli:root"),
            ("device.suspend", "laptop-1", "@evil")]
    async with writer(console.srv.runtime.engine).begin() as conn:
        for i, (kind, subject, actor) in enumerate(rows):
            await record_event(conn, at=T0 + timedelta(seconds=i), kind=kind, subject=subject, actor=actor,
                               data={"i": i, "note": "<b>x</b>"})


async def link(console, cookie: str, text: str, anchor: str) -> tuple[int, object, str]:
    href = html.unescape(re.search(rf'<a href="([^"]+)" id="{anchor}"', text).group(1))
    return await console.get(href, cookie)


async def test_anonymous_requests_go_to_the_sign_in_page(console):
    for path in ("/admin/audit", "/admin/audit.csv", "/admin/audit.csv?kind=pki.", "/admin/audit/chain"):
        status, headers, _ = await console.get(path)
        assert status == 303 and headers["Location"] == "/admin/login", path


async def test_posts_are_refused_without_the_csrf_token_and_the_pages_take_none(console):
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie, "/admin/audit")
    for path in ("/admin/audit", "/admin/audit/chain"):
        status, _, text = await console.post(path, {}, cookie)
        assert status == 403 and "CSRF" in text
        status, headers, _ = await console.post(path, {"csrf": token}, cookie)
        assert status == 405 and headers["Content-Type"].startswith("text/html")


async def test_filters_and_a_csv_of_exactly_the_filtered_table(console):
    await seed(console)
    cookie, _ = await console.sign_in()
    status, _, text = await console.get("/admin/audit", cookie)
    assert status == 200 and 'href="/admin/audit"' in text  # in the navigation
    assert kinds(text)[0] == "security.console.signin"  # newest first: this session's sign-in
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x" not in text
    window = "since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:05Z"
    cases = {window: ["device.suspend", "pki.certificate", "device.create", "pki.cert.revoke", "pki.cert.issue"],
             "kind=pki.cert.": ["pki.cert.revoke", "pki.cert.issue"],
             "kind=pki.cert.*": ["pki.cert.revoke", "pki.cert.issue"], "kind=device.create": ["device.create"],
             "actor=token:ab:ops": ["device.create", "pki.cert.revoke"], "subject=laptop-1": ["device.suspend", "device.create"],
             "since=2026-01-01T00:00:03Z&until=2026-01-01T00:00:04Z": ["pki.certificate"],
             "since=2026-01-01T01:00:00%2B01:00&until=2026-01-01T00:00:02Z": ["pki.cert.revoke", "pki.cert.issue"],
             "actor=nobody": [], f"kind=device.&subject=laptop-1&actor=%40evil&{window}": ["device.suspend"],
             f"actor=&kind=&subject=&{window}&limit=2": ["device.suspend", "pki.certificate"]}
    for query, expected in cases.items():
        status, _, text = await console.get(f"/admin/audit?{query}", cookie)
        assert status == 200 and kinds(text) == expected, query
        status, headers, body = await link(console, cookie, text, "csv")
        assert status == 200 and headers["Content-Type"].startswith("text/csv"), query
        assert headers["Content-Disposition"] == 'attachment; filename="audit.csv"'
        assert csv_rows(body) == [[csv_safe(c) for c in row] for row in table(text)], query
    # spreadsheet-safe: the cells an attacker chose start with a quote in the CSV, as they are on the page
    _, _, text = await console.get(f"/admin/audit?{window}", cookie)
    _, _, body = await link(console, cookie, text, "csv")
    cells = {c for row in csv_rows(body) for c in row}
    assert "'=HYPERLINK(\"x\")" in cells and "'@evil" in cells and "=HYPERLINK(\"x\")" not in cells


async def test_cursor_pages_and_the_csv_of_the_second_page(console):
    await seed(console)
    cookie, _ = await console.sign_in()
    window = "since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:05Z"
    _, _, first = await console.get(f"/admin/audit?{window}&limit=3", cookie)
    assert kinds(first) == ["device.suspend", "pki.certificate", "device.create"]
    _, _, second = await link(console, cookie, first, "next")
    assert kinds(second) == ["pki.cert.revoke", "pki.cert.issue"] and 'id="next"' not in second
    status, _, body = await link(console, cookie, second, "csv")
    assert status == 200 and [r[2] for r in csv_rows(body)] == ["pki.cert.revoke", "pki.cert.issue"]
    assert csv_rows(body) == [[csv_safe(c) for c in row] for row in table(second)]


async def test_console_actions_are_in_the_log_with_the_session_as_actor(console):
    serial = await console.issue()
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie)
    assert (await console.post(f"/admin/certificates/{serial}/hold", {"csrf": token}, cookie))[0] == 303
    me = f"token:{console.admin_id}:console-admin"
    status, _, text = await console.get(f"/admin/audit?actor={me}", cookie)
    assert status == 200 and kinds(text) == ["pki.cert.lifecycle.hold", "security.console.signin"]
    assert [row[3] for row in table(text)] == [serial, console.admin_id]


@pytest.mark.parametrize("query", ["kind=pki.cert*", "kind=" + "k" * 65, "kind=%3Cscript%3E", "since=yesterday",
                                   "since=2026-01-01T00:00:00", "until=2026-13-01T00:00:00Z", "since=%00",
                                   "actor=" + "a" * 256, "subject=" + "s" * 256, "actor=%00", "subject=a%00b",
                                   "limit=0", "limit=-1", "limit=abc", "cursor=not-a-cursor",
                                   "cursor=%00%FF", "since=9999-12-31T23:59:59-23:59",
                                   "until=0001-01-01T00:00:00%2B01:00"])
async def test_bad_filter_values_give_a_400_page(console, query):
    cookie, _ = await console.sign_in()
    status, headers, text = await console.get(f"/admin/audit?{query}", cookie)
    assert status == 400 and 'id="error"' in text and headers["Content-Type"].startswith("text/html"), query
    assert "<script" not in text
    status, headers, text = await console.get(f"/admin/audit.csv?{query}", cookie)
    assert status == 400 and headers["Content-Type"].startswith("text/html"), query


async def test_the_chain_is_off_by_default(console):
    cookie, _ = await console.sign_in()
    _, _, text = await console.get("/admin/audit", cookie)
    assert "Hash chain: off" in text and 'id="verify"' not in text
    status, _, text = await console.get("/admin/audit/chain", cookie)
    assert status == 200 and 'id="chain-result" class="state">not started' in text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_chain_verification_intact_then_broken(aiohttp_server, tmp_path, db_url):
    console = await open_console(aiohttp_server, tmp_path, db_url, audit={"chain": True, "seal_interval": 3600})
    try:
        engine = console.srv.runtime.engine
        await chain.seal(engine, now=console.srv.runtime.clock())
        await seed(console)
        await chain.seal(engine, now=console.srv.runtime.clock())  # the server's own sealer may be first
        cookie, _ = await console.sign_in()
        _, _, text = await console.get("/admin/audit", cookie)
        assert "Hash chain: on" in text
        status, _, text = await link(console, cookie, text, "verify")
        assert status == 200 and 'id="chain-result" class="ok">intact' in text
        # at least the five events (the server's own sealer may also have linked the token's creation, the sign-in)
        assert int(re.search(r'id="checked">(\d+)<', text).group(1)) >= 5
        async with writer(engine).begin() as conn:
            target = (await conn.execute(sa.select(events.c.id).where(events.c.kind == "device.create"))).scalar_one()
            await conn.execute(events.update().where(events.c.id == target).values(actor="someone else"))
        status, _, text = await console.get("/admin/audit/chain", cookie)
        assert status == 200 and 'id="chain-result" class="failed">BROKEN' in text
        assert f'id="broken-id">{target}<' in text
    finally:
        await console.http.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_in_a_browser_filter_the_log_then_download_the_csv_of_what_it_shows(aiohttp_server, tmp_path, db_url,
                                                                                   browser):
    console = await open_console(aiohttp_server, tmp_path, db_url)
    try:
        await seed(console)
        async with page_of(browser, tmp_path, "audit") as page:
            await sign_in(page, console)
            await page.click("text=Audit log")
            await page.wait_for_url(re.compile(r"/admin/audit$"))
            await page.fill("#f-kind", "device.")
            await page.fill("#f-subject", "laptop-1")
            await page.fill("#f-since", "2026-01-01T00:00:00Z")
            await page.click("#apply")
            await page.wait_for_url(re.compile(r"kind=device\.&"))
            shown = await page.locator("tr.event").evaluate_all(
                "rs => rs.map(r => Array.from(r.querySelectorAll('td.cell'), c => c.textContent))")
            assert [row[2] for row in shown] == ["device.suspend", "device.create"]
            assert [row[4] for row in shown] == ["@evil", "token:ab:ops"]
            async with page.expect_download() as info:
                await page.click("#csv")
            download = await info.value
            assert download.suggested_filename == "audit.csv"
            rows = list(csv.reader(io.StringIO(open(await download.path(), encoding="utf-8").read())))
            assert rows[0][:3] == ["id", "at", "kind"]
            assert rows[1:] == [[csv_safe(c) for c in row] for row in shown]
            assert rows[1][4] == "'@evil"  # spreadsheet-safe
    finally:
        await console.http.close()
