"""A backup taken after a CA rollover was activated holds every CA directory and `ca/active`: restored, the
deployment issues from the CA that issued when it was backed up."""
from __future__ import annotations

import asyncio

import aiohttp
from cryptography import x509

from scep_server.ca.lifecycle import activate_rollover, prepare_rollover
from tests.backup.support import cli
from tests.interop.conftest import ra_and_ca
from tests.server import start_app


async def test_a_backup_after_a_rollover_restores_the_ca_that_issues(aiohttp_server, tmp_path):
    srv = await start_app(aiohttp_server, tmp_path)
    await prepare_rollover(srv.runtime, "default", actor="test")
    assert (await activate_rollover(srv.runtime, "default", actor="test"))["active"] == "default-g2"
    backup = tmp_path / "backup"
    await asyncio.to_thread(cli, "--data-dir", str(srv.data_dir), "backup", str(backup))
    for rel in ("ca/default/ca.key", "ca/default-g2/ca.key", "ca/default-g2/ca.crt", "ca/active"):
        assert (backup / rel).is_file(), rel
    restored = tmp_path / "restored" / "data"
    await asyncio.to_thread(cli, "restore", str(backup), "--data-dir", str(restored), "--verify")
    assert (restored / "ca" / "active").read_text().strip() == "default-g2"
    again = await start_app(aiohttp_server, tmp_path / "restored")
    assert sorted(again.runtime.cas) == ["default", "default-g2"]
    async with aiohttp.ClientSession() as session:
        _, ca_der = await ra_and_ca(session, f"{again.url}/scep/default")
    assert x509.load_der_x509_certificate(ca_der) == again.runtime.cas["default-g2"].cert
