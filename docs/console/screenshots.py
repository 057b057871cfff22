"""Screenshots of the admin console's main pages, for the README (docs/console/*.png).

    .venv/bin/python docs/console/screenshots.py            # writes docs/console/<page>.png

A fresh data directory (embedded SQLite) is initialised, a server started on 127.0.0.1, a few devices,
certificates, a pending enrolment, YubiKeys and audit events made through the command line, the API and SCEP
(our own client), then headless chromium (Playwright, /usr/bin/chromium) signs in with an admin token and
photographs each page. Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

# (file name, path, what to click first: a link whose text starts with this, or None)
PAGES = [
    ("dashboard", "/admin/", None),
    ("certificates", "/admin/certificates", None),
    ("certificate", "/admin/certificates", "first-certificate"),
    ("enrolments", "/admin/enrolments", None),
    ("devices", "/admin/devices", None),
    ("yubikeys", "/admin/yubikeys", None),
    ("profiles", "/admin/profiles", None),
    ("tokens", "/admin/tokens", None),
    ("otp-clients", "/admin/otp-clients", None),
    ("external-cas", "/admin/external-cas", None),
    ("audit", "/admin/audit", None),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(data: Path, *args: str, stdin: bytes | None = None) -> str:
    env = {**os.environ, "SCEP_SERVER_CA__KEY_SIZE": "2048", "SCEP_SERVER_LOG__LEVEL": "warning"}
    done = subprocess.run([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data), *args], cwd=ROOT,
                          env=env, input=stdin, capture_output=True, check=True)
    return done.stdout.decode()


async def _enrol(session: aiohttp.ClientSession, url: str, profile: str, challenge: str, cn: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from scep_server.scep import client
    from scep_server.scep.types import ContentCipher, MessageType

    async with session.get(f"{url}/scep/{profile}?operation=GetCACert") as resp:
        certs = [x509.load_der_x509_certificate(der) for der in client.certs_in_order(await resp.read())]
    # the RA: the certificate that is not a CA
    ra = next(c for c in certs if not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    ra = ra.public_bytes(serialization.Encoding.DER)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cipher = ContentCipher.AES128_CBC
    body = client.build_request(
        MessageType.PKCS_REQ, content=client.make_csr(key, cn, challenge), signer_cert_der=client.make_self_signed_signer(key),
        signer_key=key, recipient_cert_der=ra, transaction_id=client.transaction_id_for(key.public_key()),
        sender_nonce=os.urandom(16), cek=os.urandom(cipher.key_size), iv=os.urandom(cipher.block_size), cipher=cipher)
    async with session.post(f"{url}/scep/{profile}?operation=PKIOperation", data=body) as resp:
        await resp.read()


def _yubikeys(n: int) -> bytes:
    from otp import modhex

    lines = []
    for i in range(n):
        serial = 9_000_000 + i
        pid = modhex.encode(b"\xff\x00" + serial.to_bytes(4, "big"))
        lines.append(f"{serial},{pid},{secrets.token_hex(6)},{secrets.token_hex(16)},000000000000,2026-11-22T10:01:00,")
    return ("\n".join(lines) + "\n").encode()


async def _seed(data: Path, url: str, admin: str) -> None:
    challenge = (data / "default-challenge.txt").read_text().strip()
    hdrs = {"Authorization": f"Bearer {admin}"}
    async with aiohttp.ClientSession() as session:
        for i in range(8):
            await _enrol(session, url, "default", challenge, f"laptop-{i:02d}")
        for i in range(5):
            async with session.post(f"{url}/api/v1/devices", json={"id": f"laptop-{i:02d}", "name": f"Laptop {i}"},
                                    headers=hdrs) as resp:
                await resp.read()
        async with session.post(f"{url}/api/v1/devices/laptop-03/deactivate", json={"reason": "lost"},
                                headers=hdrs) as resp:
            await resp.read()
        async with session.post(f"{url}/api/v1/profiles", headers=hdrs, json={
                "name": "byod", "challenge": "static", "settings": {"require_approval": True}}) as resp:
            byod = (await resp.json()).get("secret", "")
        if byod:
            await _enrol(session, url, "byod", byod, "byod-phone-1")


async def _shoot(url: str, admin: str) -> list[str]:
    from playwright.async_api import async_playwright

    written = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
        await page.goto(url + "/admin/login")
        await page.fill("input[name=token]", admin)
        await page.click("button[type=submit]")
        await page.wait_for_url(url + "/admin/")
        for name, path, click in PAGES:
            response = await page.goto(url + path)
            if response is None or response.status != 200:
                print(f"{name}: {path} answered {response.status if response else 'nothing'}, skipped")
                continue
            if click == "first-certificate":
                link = page.locator("a[href^='/admin/certificates/']").first
                if await link.count() == 0:
                    continue
                await link.click()
            target = OUT / f"{name}.png"
            await page.screenshot(path=str(target), full_page=name == "dashboard")  # its charts are below the fold
            written.append(target.name)
        await browser.close()
    return written


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        _cli(data, "init")
        _cli(data, "yubikey", "import", "-", stdin=_yubikeys(12))
        created = _cli(data, "token", "create", "--scope", "admin", "--name", "console")
        admin = next(line.split(": ", 1)[1] for line in created.splitlines() if line.startswith("token: "))
        port = _free_port()
        env = {**os.environ, "SCEP_SERVER_LOG__LEVEL": "warning"}
        proc = subprocess.Popen([sys.executable, "-m", "scep_server.cli", "--data-dir", str(data), "serve", "--listen",
                                 f"127.0.0.1:{port}"], cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the server did not start")
                    time.sleep(0.2)
            asyncio.run(_seed(data, url, admin))
            print("wrote", ", ".join(asyncio.run(_shoot(url, admin))))
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
