"""The admin console in a real browser: Playwright driving Debian's chromium, headless, against a server on
127.0.0.1. Missing chromium or Playwright fails these tests (.ci/install-peers installs chromium), unless
SCEP_TEST_ALLOW_MISSING=1 outside CI. A failing test leaves a screenshot in its tmp directory."""
from __future__ import annotations

import contextlib
import csv
import io
import re

import pytest

from tests.crlwiring.conftest import FAST_CRL, crl_serials
from tests.helpers import missing, require_tool
from tests.otp.conftest import make_key, secrets_file

from .conftest import open_console

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the sessions' storage: test_console_http

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
async def browser():
    executable = require_tool(CHROMIUM)
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("the Python package playwright is not installed (pip install -e '.[test]')")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=executable, headless=True)
        try:
            yield b
        finally:
            await b.close()


@contextlib.asynccontextmanager
async def page_of(browser, tmp_path, name: str):
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    except BaseException:
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(tmp_path / f"{name}-failure.png"), full_page=True)
        raise
    finally:
        await context.close()


async def sign_in(page, console) -> None:
    await page.goto(console.url + "/admin/")
    assert page.url.endswith("/admin/login")  # anonymous: sent to the sign-in page
    await page.fill("#token", console.admin)
    await page.click("#sign-in")
    await page.wait_for_url(re.compile(r"/admin/$"))


async def test_sign_in_filter_revoke_publish_and_sign_out(aiohttp_server, tmp_path, db_url, browser):
    console = await open_console(aiohttp_server, tmp_path, db_url, crl=FAST_CRL)
    try:
        rt = console.srv.runtime
        await rt.crl.publishers["default"].wait_newer(None, timeout=10)
        target = await console.issue(cn="laptop-7")
        other = await console.issue(cn="laptop-8")
        async with page_of(browser, tmp_path, "flow") as page:
            await sign_in(page, console)
            assert await page.inner_text("#readiness") == "ready"
            assert await page.inner_text("#ca-default .crl-number") == "1"
            # filter the inventory by serial prefix (a GET form: works without JavaScript)
            await page.click("text=Certificates")
            await page.fill("#f-serial", target[:10])
            await page.click("#apply")
            await page.wait_for_url(re.compile(r"serial_prefix="))
            rows = await page.locator("tr.cert").evaluate_all("rs => rs.map(r => r.dataset.serial)")
            assert rows == [target] and other not in rows
            # revoke it through the confirmation form
            await page.click(f"a[href$='/certificates/{target}']")
            await page.click("#action-revoke")
            await page.select_option("#reason", "key-compromise")
            await page.click("#confirm")
            await page.wait_for_url(re.compile(rf"/admin/certificates/{target}$"))
            assert (await page.inner_text("#status")).startswith("revoked (key-compromise)")
            await page.goto(console.url + "/admin/certificates?status=revoked")
            rows = await page.locator("tr.cert").evaluate_all("rs => rs.map(r => r.dataset.serial)")
            assert rows == [target]
            # on the CRL once published
            await rt.crl.publish("default")
            async with console.http.get(console.url + "/crl/default.crl") as resp:
                assert int(target, 16) in crl_serials(await resp.read())
            # sign out: back to the sign-in page, and the old cookie is refused
            cookie = next(c["value"] for c in await page.context.cookies() if c["name"] == "console_session")
            await page.click("#sign-out")
            await page.wait_for_url(re.compile(r"/admin/login$"))
            status, headers, _ = await console.get("/admin/", cookie)
            assert status == 303 and headers["Location"] == "/admin/login"
    finally:
        await console.http.close()


async def test_csrf_and_anonymous_pages(aiohttp_server, tmp_path, db_url, browser):
    console = await open_console(aiohttp_server, tmp_path, db_url)
    try:
        serial = await console.issue()
        async with page_of(browser, tmp_path, "anonymous") as page:
            for path in ("/admin/", "/admin/certificates", f"/admin/certificates/{serial}",
                         f"/admin/certificates/{serial}/hold", "/admin/enrolments", "/admin/devices", "/admin"):
                await page.goto(console.url + path)
                assert page.url == console.url + "/admin/login", path
        async with page_of(browser, tmp_path, "csrf") as page:
            await sign_in(page, console)
            await page.goto(f"{console.url}/admin/certificates/{serial}/hold")
            await page.locator("form.confirm input[name=csrf]").evaluate("e => e.remove()")  # a form posted without it
            async with page.expect_navigation() as nav:
                await page.click("#confirm")
            response = await nav.value
            assert response.status == 403
            assert "CSRF" in await page.inner_text("#error")
            assert (await rt_status(console, serial)) == "valid"
    finally:
        await console.http.close()


async def rt_status(console, serial: str) -> str:
    return (await console.srv.runtime.certificates.get(serial)).status.value


def upload(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "text/csv", "buffer": data}


async def test_yubikeys_import_with_a_preview_then_filter_and_download_the_csv(aiohttp_server, tmp_path, db_url,
                                                                               browser):
    console = await open_console(aiohttp_server, tmp_path, db_url)
    try:
        otp = console.srv.runtime.otp
        keys = [make_key(800_001 + i) for i in range(3)]
        good = secrets_file(keys)
        bad = good + b"800009,not-modhex,00,00,,,\n"
        async with page_of(browser, tmp_path, "yubikeys") as page:
            await sign_in(page, console)
            await page.click("text=YubiKeys")
            await page.click("#import")
            # a file with one bad line: the preview names it, nothing is imported
            await page.set_input_files("#file", upload("bad.csv", bad))
            await page.click("#preview")
            await page.wait_for_selector("#summary")
            lines = await page.locator("tr.bad-line").evaluate_all("rs => rs.map(r => r.dataset.line)")
            assert set(lines) == {"4"}  # every problem of that line, and none of the others
            assert await page.locator("#import-form").count() == 0
            assert await otp.report(with_history=False) == []
            # the good file: previewed, then chosen again and imported
            await page.set_input_files("#file", upload("good.csv", good))
            await page.click("#preview")
            await page.wait_for_selector("#import-form")
            assert await otp.report(with_history=False) == []
            await page.set_input_files("#import-file", upload("good.csv", good))
            await page.click("#import")
            assert "Imported 3 keys" in await page.inner_text("#imported")
            await otp.revoke(800_002)
            # filter the report, then download the CSV of what it shows
            await page.click("text=YubiKeys")
            assert await page.inner_text("#count-UNASSIGNED") == "2"
            await page.select_option("#f-status", "UNASSIGNED")
            await page.click("#apply")
            await page.wait_for_url(re.compile(r"status=UNASSIGNED"))
            shown = await page.locator("tr.key").evaluate_all(
                "rs => rs.map(r => Array.from(r.querySelectorAll('td.cell'), c => c.textContent))")
            assert [row[0] for row in shown] == ["800001", "800003"]
            async with page.expect_download() as info:
                await page.click("#csv")
            download = await info.value
            assert download.suggested_filename == "yubikeys.csv"
            rows = list(csv.reader(io.StringIO(open(await download.path(), encoding="utf-8").read())))
            assert rows[0][0] == "serial" and rows[1:] == shown
    finally:
        await console.http.close()
