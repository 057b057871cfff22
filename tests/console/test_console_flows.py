"""End-to-end flows through the console in a real browser (Playwright driving Debian's chromium) against a real
server on 127.0.0.1, with real SCEP clients on the device side:

- a profile that requires approval: certmonger's scep-submit sends the request (PENDING), the enrolment shows in
  /admin/enrolments, the admin approves it in the browser, and the device's CertPoll receives the certificate;
- a device (enrolled by micromdm's scepclient, bound by an attestation) is deactivated in the browser, and the
  CA's CRL fetched over HTTP lists its certificate with reason certificateHold;
- every page of the console's router but the sign-in page (read from the running application, so pages added
  later are covered) sends an anonymous browser to the sign-in page, for GET and POST alike.

A failing test leaves a screenshot in its tmp directory (``page_of``)."""
from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from scep_server.binding.service import services
from scep_server.console.web import PREFIX, PUBLIC
from tests.binding.conftest import Api, enrol, tokens, trust_default_profile
from tests.challenge.test_pending import Device, approval_profile
from tests.crlwiring.conftest import FAST_CRL, crl_serials

from .conftest import open_console
from .test_console_browser import browser, page_of, sign_in  # noqa: F401 - browser is a fixture

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the sessions' storage: test_console_http


async def test_a_pending_enrolment_approved_in_the_browser_reaches_the_device(aiohttp_server, tmp_path, db_url,
                                                                              browser):  # noqa: F811
    console = await open_console(aiohttp_server, tmp_path, db_url)
    try:
        await approval_profile(console.srv)
        dev = Device(console.srv, tmp_path / "dev", "manual", "printer-9")
        rc, out = await dev.pkcs_req()
        assert rc in (1, 5), out  # scep-submit: "the CA is still thinking"
        rc, out = await dev.cert_poll()
        assert rc in (1, 5), out  # still pending
        async with page_of(browser, tmp_path, "approve") as page:
            await sign_in(page, console)
            await page.click("nav >> text=Enrolments")
            row = page.locator(f'tr.enrolment[data-transaction="{dev.txid}"]')
            assert await row.locator("td.state").inner_text() == "pending"
            assert "CN=printer-9" in await row.inner_text()
            await row.locator("text=Approve").click()
            await page.wait_for_url(re.compile(r"/admin/enrolments/confirm\?"))
            await page.click("#confirm")
            await page.wait_for_url(re.compile(r"/admin/enrolments\?state=all$"))
            row = page.locator(f'tr.enrolment[data-transaction="{dev.txid}"]')
            assert await row.locator("td.state").inner_text() == "issued"
            assert console.admin_id in await row.inner_text()  # decided by the signed-in token
        rc, out = await dev.cert_poll()
        assert rc == 0, out
        certs = dev.open_envelope(out)
        assert certs[0].subject.rfc4514_string() == "CN=printer-9"
        assert certs[0].public_key().public_numbers() == dev.key.public_key().public_numbers()
    finally:
        await console.http.close()


async def _crl_reason(http: aiohttp.ClientSession, url: str, serial: int, timeout: float = 15):
    """The reason the CA's CRL (over HTTP) gives for `serial`, once it lists it."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url + "/crl/default.crl") as resp:
            assert resp.status == 200 and resp.content_type == "application/pkix-crl"
            listed = crl_serials(await resp.read())
        if serial in listed:
            return listed[serial]
        assert time.monotonic() < deadline, f"serial {serial:x} not on the CRL after {timeout}s"
        await asyncio.sleep(0.1)


async def test_deactivating_a_device_in_the_browser_holds_its_certificate_on_the_crl(
        aiohttp_server, tmp_path, db_url, browser, scepclient):  # noqa: F811
    console = await open_console(aiohttp_server, tmp_path, db_url, crl=FAST_CRL)
    try:
        rt = console.srv.runtime
        await rt.crl.publishers["default"].wait_newer(None, timeout=10)
        await trust_default_profile(rt)
        enrolled = await enrol(scepclient, console.url, console.srv.challenge(), tmp_path / "dev", "laptop-9")
        await services(rt).devices.create("laptop-9", name="Laptop 9", actor="test")
        signin, admin = await tokens(rt)
        async with aiohttp.ClientSession() as http:
            api = Api(http, console.url, signin, admin)
            assert (await api.attest("laptop-9", enrolled.cert_pem, enrolled.key))["managed"]  # binds it
            async with http.get(console.url + "/crl/default.crl") as resp:
                assert enrolled.cert.serial_number not in crl_serials(await resp.read())
            async with page_of(browser, tmp_path, "deactivate") as page:
                await sign_in(page, console)
                await page.click("nav >> text=Devices")
                await page.click('a[href$="/admin/devices/laptop-9"]')
                assert enrolled.serial in await page.inner_text("#bindings")
                await page.click("#action-deactivate")
                await page.fill("#reason", "reported stolen")
                await page.click("#confirm")
                await page.wait_for_url(re.compile(r"/admin/devices/laptop-9$"))
                assert await page.inner_text("#status") == "deactivated"
            reason = await _crl_reason(http, console.url, enrolled.cert.serial_number)
            assert reason is x509.ReasonFlags.certificate_hold
        assert (await rt.certificates.get(enrolled.serial)).status.value == "hold"
    finally:
        await console.http.close()


def console_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) of every route of the console sub-application mounted at /admin, its placeholders filled
    with a plausible value; the static files and HEAD routes left out."""
    subapps = [r.get_info()["app"] for r in app.router.resources()
               if isinstance(r, web.PrefixedSubAppResource) and r.get_info().get("prefix") == PREFIX]
    assert len(subapps) == 1
    out = []
    for resource in subapps[0].router.resources():
        info = resource.get_info()
        if "directory" in info:  # the style sheet: public
            continue
        template = info.get("formatter") or info.get("path")
        assert template, info
        path = re.sub(r"\{[^}]+\}", "x1", template)  # mounted: the prefix is part of the path
        assert path.startswith(PREFIX + "/"), path
        out += [(route.method, path) for route in resource if route.method != "HEAD"]
    return out


async def test_every_console_page_sends_an_anonymous_browser_to_sign_in(aiohttp_server, tmp_path, db_url,
                                                                        browser):  # noqa: F811
    console = await open_console(aiohttp_server, tmp_path, db_url)
    try:
        routes = console_routes(console.srv.app)
        paths = {p for _, p in routes}
        # the router holds at least the pages this test was written against
        assert {"/admin/", "/admin/certificates", "/admin/enrolments", "/admin/devices", "/admin/yubikeys",
                "/admin/login", "/admin/logout"} <= paths, sorted(paths)
        login = console.url + PREFIX + "/login"
        async with page_of(browser, tmp_path, "anonymous") as page:
            checked = 0
            for method, path in routes:
                if path in PUBLIC:
                    continue
                if method == "GET":
                    await page.goto(console.url + path)
                    assert page.url == login, (method, path, page.url)
                else:  # a form posted by an anonymous browser: redirected, nothing done
                    response = await page.request.fetch(console.url + path, method=method,
                                                        form={"csrf": "0" * 64}, max_redirects=0)
                    assert response.status == 303, (method, path, response.status)
                    assert response.headers["location"] == PREFIX + "/login", (method, path)
                checked += 1
            await page.goto(console.url + PREFIX)  # without the slash
            assert page.url == login
            assert checked >= 10
            # the sign-in page itself is served
            response = await page.goto(login)
            assert response.status == 200 and await page.locator("#token").count() == 1
    finally:
        await console.http.close()
