"""The console's profile and token pages in a real browser (Playwright, Debian's chromium): a static secret rotated
in the console enrols a device with micromdm's scepclient and the old one is refused; the secret page without
JavaScript; a token made, used and disabled. Missing chromium, Playwright or scepclient fails these tests, unless
SCEP_TEST_ALLOW_MISSING=1 outside CI."""
from __future__ import annotations

import re

import pytest
from cryptography import x509

from tests.interop.conftest import device_key
from tests.server import run

from .conftest import open_console
from .test_console_browser import browser, page_of, sign_in  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def enrol(scepclient, url: str, work, challenge: str, cn: str) -> tuple[int, str]:
    work.mkdir()
    device_key(work / "k.pem")
    rc, out, err = await run(scepclient, "-server-url", url, "-private-key", "k.pem", "-challenge", challenge,
                             "-cn", cn, cwd=work)
    return rc, out + err


async def test_rotate_the_secret_in_the_console_then_enrol_with_it(aiohttp_server, tmp_path, db_url, browser,
                                                                   scepclient):
    console = await open_console(aiohttp_server, tmp_path, db_url)
    try:
        old = console.srv.challenge()
        async with page_of(browser, tmp_path, "rotate") as page:
            await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.url)
            await sign_in(page, console)
            await page.click("text=Profiles")
            await page.click("a[href$='/profiles/default']")
            url = (await page.inner_text("#scep-url")).strip()
            assert url == f"{console.srv.runtime.settings.server.public_base_url()}/scep/default"
            # the deferred script shows the copy button (it may run after the click returned)
            await page.wait_for_selector("button[data-copy=scep-url]", state="visible")
            await page.click("#action-rotate")
            await page.click("#confirm")
            await page.wait_for_selector("#secret")
            secret = (await page.inner_text("#secret")).strip()
            assert secret and secret != old
            await page.bring_to_front()  # the clipboard is written for a focused page only
            await page.click("#copy-secret")
            # a locator, not a string predicate: the console's CSP forbids the eval a string needs
            await page.locator("#copy-secret", has_text="Copied").wait_for()
            assert await page.evaluate("navigator.clipboard.readText()") == secret
            # the secret is not shown again
            await page.click("#to-profile")
            await page.wait_for_url(re.compile(r"/admin/profiles/default$"))
            assert secret not in await page.content()

        rc, out = await enrol(scepclient, url, tmp_path / "new", secret, "rotated-1")
        assert rc == 0, out
        issued = x509.load_pem_x509_certificate((tmp_path / "new" / "client.pem").read_bytes())
        assert issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "rotated-1"
        rc, out = await enrol(scepclient, url, tmp_path / "old", old, "rotated-2")
        assert rc != 0 and "badRequest" in out
        assert not (tmp_path / "old" / "client.pem").exists()
    finally:
        await console.http.close()


async def test_the_secret_page_works_without_javascript(aiohttp_server, tmp_path, db_url, browser):
    console = await open_console(aiohttp_server, tmp_path, db_url)
    try:
        context = await browser.new_context(java_script_enabled=False)
        try:
            page = await context.new_page()
            page.set_default_timeout(10_000)
            await sign_in(page, console)
            await page.goto(console.url + "/admin/profiles/default/rotate-secret")
            await page.click("#confirm")
            await page.wait_for_selector("#secret")
            secret = (await page.inner_text("#secret")).strip()
            assert await console.srv.runtime.profiles.static_secret_ok("default", secret)
            assert not await page.is_visible("#copy-secret")  # no script: no button that could not work
        finally:
            await context.close()
    finally:
        await console.http.close()


async def test_make_a_token_use_it_and_disable_it(aiohttp_server, tmp_path, db_url, browser):
    console = await open_console(aiohttp_server, tmp_path, db_url)

    async def api_status(token: str) -> int:
        async with console.http.get(console.url + "/api/v1/profiles",
                                    headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status

    try:
        async with page_of(browser, tmp_path, "tokens") as page:
            await sign_in(page, console)
            await page.click("text=Tokens")
            await page.select_option("#scope", "admin")
            await page.fill("#name", "deploy")
            await page.fill("#expires-in", "1d")
            await page.click("#create")
            await page.wait_for_selector("#secret")
            secret = (await page.inner_text("#secret")).strip()
            assert await api_status(secret) == 200
            await page.click("#to-tokens")
            row = page.locator("tr.token", has_text="deploy")
            assert await row.locator(".state").inner_text() == "enabled"
            assert secret not in await page.content()
            await row.locator("a.button").click()
            await page.click("#confirm")
            await page.wait_for_url(re.compile(r"/admin/tokens$"))
            assert await page.locator("tr.token", has_text="deploy").locator(".state").inner_text() == "disabled"
            assert await api_status(secret) == 401
    finally:
        await console.http.close()
