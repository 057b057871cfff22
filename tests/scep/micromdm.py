"""Drive Debian's micromdm ``scepclient`` (2.1.0) against the capture server (used by the interop test and by
the fixture capture script)."""
from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .capture_server import CaptureCA, free_port


@dataclass
class Run:
    """One scepclient invocation and what the server saw."""

    returncode: int
    output: str
    exchanges: list


def traditional_rsa_key(path: Path) -> None:
    """scepclient 2.1.0 reads only PKCS#1 "RSA PRIVATE KEY" PEM files."""
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(path), "2048"], check=True,
                   capture_output=True)


class Server:
    """The capture server on a loopback port for the duration of an ``async with``."""

    def __init__(self, ca: CaptureCA):
        self.ca = ca
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/scep"
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> "Server":
        self._runner = web.AppRunner(self.ca.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def scepclient(self, scepclient: str, workdir: Path, *args: str, timeout: float = 60) -> Run:
        """Run scepclient in ``workdir`` (it writes csr.pem and client.pem there)."""
        before = len(self.ca.exchanges)
        proc = await asyncio.create_subprocess_exec(
            scepclient, "-server-url", self.url, "-debug", *args, cwd=str(workdir),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return Run(proc.returncode or 0, out.decode(errors="replace"), self.ca.exchanges[before:])
