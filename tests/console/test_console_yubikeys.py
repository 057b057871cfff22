"""The console's YubiKeys page over HTTP (no browser): the report with its filters, counts and cursor pages, the
CSV of exactly the page shown, the import's preview then all-or-nothing import, revoke and delete; anonymous
requests, missing CSRF tokens and hostile values end in a redirect or a 4xx page, never a 500.
Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import hashlib
import html
import io
import re

import aiohttp
import pytest

from otp.report import ReportFilter
from tests.otp.conftest import make_key, secrets_file

from .conftest import CSRF, open_console

ROW = re.compile(r'<tr class="key" data-serial="(\d+)">(.*?)</tr>', re.S)
CELL = re.compile(r'<td class="cell">(.*?)</td>', re.S)


def table(text: str) -> list[list[str]]:
    return [[html.unescape(c) for c in CELL.findall(body)] for _, body in ROW.findall(text)]


def serials(text: str) -> list[int]:
    return [int(s) for s, _ in ROW.findall(text)]


def csv_rows(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:3] == ["serial", "public_id", "status"]
    return rows[1:]


async def upload(console, cookie: str, data: bytes, *, csrf: str | None, step: str = "preview",
                 digest: str | None = None, headers: dict | None = None):
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf", csrf)
    if digest is not None:
        form.add_field("digest", digest)
    form.add_field("step", step)
    form.add_field("file", data, filename="keys.csv", content_type="text/csv")
    hdrs = {"Cookie": f"console_session={cookie}", **(headers or {})}
    async with console.http.post(console.url + "/admin/yubikeys/import", data=form, headers=hdrs,
                                 allow_redirects=False) as r:
        return r.status, await r.text()


async def inventory(console) -> list[int]:
    return [r.serial for r in await console.srv.runtime.otp.report(ReportFilter(), with_history=False)]


@pytest.fixture
async def keys(console):
    """Four keys: 700001 ACTIVE for alice, 700002 REVOKED (formerly bob's), 700003 and 700004 UNASSIGNED."""
    otp = console.srv.runtime.otp
    ks = [make_key(700_001 + i) for i in range(4)]
    assert (await otp.import_secrets(secrets_file(ks))).ok
    assert (await otp.verify_signin("alice", ks[0].otp())).enrolled
    assert (await otp.verify_signin("bob", ks[1].otp())).enrolled
    await otp.revoke(700_002)
    return ks


async def test_anonymous_requests_go_to_the_sign_in_page(console):
    for path in ("/admin/yubikeys", "/admin/yubikeys.csv?status=ACTIVE", "/admin/yubikeys/import",
                 "/admin/yubikeys/700001/revoke", "/admin/yubikeys/700001/delete"):
        status, headers, _ = await console.get(path)
        assert status == 303 and headers["Location"] == "/admin/login", path
    status, _ = await upload(console, "nobody", secrets_file([make_key(700_100)]), csrf="0" * 64)
    assert status == 303 and await inventory(console) == []
    status, headers, _ = await console.post("/admin/yubikeys/700001/revoke", {"csrf": "0" * 64})
    assert status == 303 and headers["Location"] == "/admin/login"


async def test_posts_without_the_sessions_csrf_token_or_from_another_site_are_refused(console, keys):
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie, "/admin/yubikeys")
    for form in ({}, {"csrf": "0" * 64}):
        for action in ("revoke", "delete"):
            status, _, _ = await console.post(f"/admin/yubikeys/700003/{action}", form, cookie)
            assert status == 403, (form, action)
    good = secrets_file([make_key(700_100)])
    for csrf in (None, "f" * 64):
        status, text = await upload(console, cookie, good, csrf=csrf, step="import",
                                    digest=hashlib.sha256(good).hexdigest())
        assert status == 403 and "CSRF" in text
    status, _ = await upload(console, cookie, good, csrf=token, step="import", digest=hashlib.sha256(good).hexdigest(),
                             headers={"Origin": "https://evil.example"})
    assert status == 403
    assert sorted(await inventory(console)) == [700_001, 700_002, 700_003, 700_004]  # nothing changed
    rows = {r.serial: r.status for r in await console.srv.runtime.otp.report(ReportFilter(), with_history=False)}
    assert rows[700_003] == "UNASSIGNED"


async def test_filters_counts_and_a_csv_of_exactly_the_page_shown(console, keys):
    cookie, _ = await console.sign_in()
    status, _, text = await console.get("/admin/yubikeys", cookie)
    assert status == 200 and serials(text) == [700_001, 700_002, 700_003, 700_004]
    assert 'href="/admin/yubikeys"' in text  # the navigation links the page
    for name, n in (("UNASSIGNED", 2), ("ACTIVE", 1), ("REVOKED", 1)):
        assert f'<td id="count-{name}">{n}</td>' in text
    cases = {"status=ACTIVE": [700_001], "status=revoked": [700_002], "user=alice": [700_001],
             "user=bob": [700_002],  # the former user of a revoked key
             "serial=700003": [700_003], f"public_id={keys[3].public_id}": [700_004],
             "imported_after=2000-01-01&status=UNASSIGNED": [700_003, 700_004], "imported_before=2000-01-01": [],
             "enrolled_after=2000-01-01": [700_001, 700_002], "last_used_before=2000-01-01": [],
             "exclude_deleted=1&status=UNASSIGNED": [700_003, 700_004]}
    for query, expected in cases.items():
        status, _, text = await console.get(f"/admin/yubikeys?{query}", cookie)
        assert status == 200 and serials(text) == expected, query
        href = html.unescape(re.search(r'<a href="([^"]+)" id="csv"', text).group(1))
        status, headers, body = await console.get(href, cookie)
        assert status == 200 and headers["Content-Type"].startswith("text/csv"), query
        assert headers["Content-Disposition"] == 'attachment; filename="yubikeys.csv"'
        assert csv_rows(body) == table(text), query
    # counts are of the other filters: a user filter narrows them, the status filter does not
    _, _, text = await console.get("/admin/yubikeys?user=alice&status=REVOKED", cookie)
    assert '<td id="count-ACTIVE">1</td>' in text and '<td id="count-UNASSIGNED">0</td>' in text
    # cursor pages: the CSV of the second page holds the second page's rows
    _, _, first = await console.get("/admin/yubikeys?limit=3", cookie)
    assert serials(first) == [700_001, 700_002, 700_003]
    nxt = html.unescape(re.search(r'<a href="([^"]+)" id="next"', first).group(1))
    _, _, second = await console.get(nxt, cookie)
    assert serials(second) == [700_004] and 'id="next"' not in second
    href = html.unescape(re.search(r'<a href="([^"]+)" id="csv"', second).group(1))
    assert "cursor=" in href and "limit=3" in href
    _, _, body = await console.get(href, cookie)
    assert csv_rows(body) == table(second) and [r[0] for r in csv_rows(body)] == ["700004"]


@pytest.mark.parametrize("query", ["status=LOST", "serial=abc", "serial=99999999999", "serial=%C2%B2",
                                   "imported_after=yesterday", "enrolled_before=2026-13-01", "limit=0",
                                   "limit=-1", "cursor=not-a-cursor", "exclude_deleted=maybe", "user=%00",
                                   "public_id=" + "x" * 300, "imported_after=0001-01-01T00:00:00%2B01:00",
                                   "last_used_before=9999-12-31T23:59:59-01:00"])
async def test_bad_filter_values_give_a_400_page(console, query):
    cookie, _ = await console.sign_in()
    status, headers, text = await console.get(f"/admin/yubikeys?{query}", cookie)
    assert status == 400 and 'id="error"' in text and headers["Content-Type"].startswith("text/html"), query
    status, _, text = await console.get(f"/admin/yubikeys.csv?{query}", cookie)
    assert status == 400 and 'id="error"' in text, query


async def test_import_preview_names_the_bad_line_and_imports_nothing_then_the_import_commits(console):
    cookie, _ = await console.sign_in()
    status, _, text = await console.get("/admin/yubikeys/import", cookie)
    assert status == 200 and 'enctype="multipart/form-data"' in text
    token = CSRF.search(text).group(1)
    good = [make_key(700_201), make_key(700_202)]
    bad = (secrets_file(good[:1]).decode() + "700203,not-modhex,zz,zz,,,\n" + secrets_file(good[1:]).decode()).encode()
    status, text = await upload(console, cookie, bad, csrf=token)
    assert status == 422 and re.search(r'<tr class="bad-line" data-line="2"><td>2</td><td>[^<]+</td></tr>', text)
    assert 'id="import-form"' not in text and "nothing was imported" in text
    assert good[0].aes_key.hex() not in text and "digest" not in text  # no secret nor digest in the page
    assert await inventory(console) == []
    data = secrets_file(good)
    status, text = await upload(console, cookie, data, csrf=token)
    digest = hashlib.sha256(data).hexdigest()
    assert status == 200 and 'id="import-form"' in text and f'name="digest" value="{digest}"' in text
    assert "2 lines parsed, 0 problems" in text and good[0].aes_key.hex() not in text
    assert await inventory(console) == []  # a preview imports nothing
    # the import step wants the previewed file: another file, or none, is refused
    status, text = await upload(console, cookie, data + secrets_file([make_key(700_204)]), csrf=token, step="import",
                                digest=digest)
    assert status == 400 and "preview" in text
    status, text = await upload(console, cookie, data, csrf=token, step="import")
    assert status == 400
    status, text = await upload(console, cookie, data, csrf=token, step="import", digest=digest)
    assert status == 200 and 'id="imported"' in text and "Imported 2 keys" in text
    assert sorted(await inventory(console)) == [700_201, 700_202]
    # importing it again: every line is a duplicate, all refused, nothing changes
    status, text = await upload(console, cookie, data, csrf=token, step="import", digest=digest)
    assert status == 422 and set(re.findall(r'data-line="(\d+)"', text)) == {"1", "2"}  # duplicates
    assert sorted(await inventory(console)) == [700_201, 700_202]
    # a file of more bad lines than are listed: the page counts them all and says which are shown
    status, text = await upload(console, cookie, b"x\n" * 1500, csrf=token)
    assert status == 422 and "1500 problems (the first 1000 by line are listed)" in text
    assert len(re.findall(r'class="bad-line"', text)) == 1000


async def test_import_hostile_bodies_end_in_4xx(console):
    cookie, _ = await console.sign_in()
    token = await console.csrf(cookie, "/admin/yubikeys/import")
    hdrs = {"Cookie": f"console_session={cookie}"}
    for body, ctype in ((b"garbage", "multipart/form-data; boundary=xyz"), (b"--xyz\r\n\r\n", "multipart/form-data"),
                        (b"--xyz\r\nnot a part", "multipart/form-data; boundary=xyz"),
                        (b"--xyz\r\nContent-Disposition: form-data; name=csrf\r\n\r\n" + b"a" * 5000 + b"\r\n--xyz--\r\n",
                         "multipart/form-data; boundary=xyz"),
                        (f"csrf={token}&step=preview".encode(), "application/x-www-form-urlencoded")):
        async with console.http.post(console.url + "/admin/yubikeys/import", data=body,
                                     headers={**hdrs, "Content-Type": ctype}) as r:
            assert 400 <= r.status < 500, (body, r.status)
    status, text = await upload(console, cookie, b"", csrf=token)
    assert status == 400 and "Choose a secrets file" in text
    status, _ = await upload(console, cookie, b"x", csrf=token, step="commit")
    assert status == 400


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_upload_over_the_apis_import_bound_is_413(aiohttp_server, tmp_path, db_url):
    console = await open_console(aiohttp_server, tmp_path, db_url, otp={"import_max_bytes": 1024})
    try:
        cookie, _ = await console.sign_in()
        token = await console.csrf(cookie, "/admin/yubikeys/import")
        big = secrets_file([make_key(700_300 + i) for i in range(40)])
        assert len(big) > 1024
        status, text = await upload(console, cookie, big, csrf=token)
        assert status == 413 and await inventory(console) == []
    finally:
        await console.http.close()


async def test_revoke_and_delete_with_a_confirmation_form(console, keys):
    cookie, _ = await console.sign_in()
    status, _, text = await console.get("/admin/yubikeys/700001/delete", cookie)
    assert status == 200 and 'id="confirm"' in text
    token = CSRF.search(text).group(1)
    status, _, text = await console.post("/admin/yubikeys/700001/delete", {"csrf": token}, cookie)
    assert status == 409 and "ACTIVE" in text and "revoke it first" in text  # the service's detail
    status, headers, _ = await console.post("/admin/yubikeys/700001/revoke", {"csrf": token}, cookie)
    assert status == 303 and headers["Location"] == "/admin/yubikeys?serial=700001"
    status, _, text = await console.post("/admin/yubikeys/700001/revoke", {"csrf": token}, cookie)
    assert status == 409 and "already revoked" in text
    status, headers, _ = await console.post("/admin/yubikeys/700001/delete", {"csrf": token}, cookie)
    assert status == 303 and headers["Location"] == "/admin/yubikeys"
    status, headers, _ = await console.post("/admin/yubikeys/700003/delete", {"csrf": token}, cookie)
    assert status == 303
    rows = {r.serial: r for r in await console.srv.runtime.otp.report(ReportFilter(), with_history=False)}
    assert rows[700_001].status == "REVOKED" and rows[700_001].deleted and 700_003 not in rows  # unassigned: gone
    events = [e["event"] for e in (await console.srv.runtime.otp.report(ReportFilter(serial=700_001)))[0].history]
    assert "otp.key.revoked" in events and "otp.key.deleted" in events
    for path in ("/admin/yubikeys/700003/revoke", "/admin/yubikeys/123/delete"):
        status, _, _ = await console.get(path, cookie)
        assert status == 404, path
    for path in ("/admin/yubikeys/abc/revoke", "/admin/yubikeys/0/delete", "/admin/yubikeys/99999999999/revoke"):
        status, _, _ = await console.get(path, cookie)
        assert status == 400, path
    status, _, _ = await console.get("/admin/yubikeys/700004/enrol", cookie)
    assert status == 404
