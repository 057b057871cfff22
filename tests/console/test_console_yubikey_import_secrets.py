"""The console's import preview of a secrets file with its columns out of order names the bad lines without
showing the private IDs, AES keys or access codes that landed in the serial, public ID or timestamp columns."""
from __future__ import annotations

import hashlib

from tests.otp.shifted_secrets import assert_no_secret_in, shifted_file

from .conftest import CSRF
from .test_console_yubikeys import upload


async def test_the_preview_and_the_import_show_no_secret(console):
    cookie, _ = await console.sign_in()
    _, _, page = await console.get("/admin/yubikeys/import", cookie)
    token = CSRF.search(page).group(1)
    data, found = shifted_file()
    status, text = await upload(console, cookie, data, csrf=token)
    assert status == 422 and 'data-line="1"' in text
    assert_no_secret_in(text, found)
    assert "serial (field 1) is not a decimal number" in text
    status, text = await upload(console, cookie, data, csrf=token, step="import",
                                digest=hashlib.sha256(data).hexdigest())
    assert status == 422 and 'data-line="1"' in text and "nothing was imported" in text
    assert_no_secret_in(text, found)
