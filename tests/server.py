"""Running the application in tests: in-process on a real loopback port, or as `scep-server serve` processes."""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from scep_server.app import create_app
from scep_server.appkeys import RUNTIME
from trustkit.clock import utcnow
from scep_server.config import Settings
from scep_server.runtime import Runtime, initialise
from tests.factories import settings_for
from tests.openapi_check import attach as check_against_openapi


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """The processes `pid` forked (a `serve --workers N` supervisor's workers), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


@dataclass
class RunningServer:
    url: str
    settings: Settings
    app: object

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def challenge(self) -> str:
        """The default static profile's challenge, as written on first start."""
        return (self.data_dir / "default-challenge.txt").read_text().strip()

    def scepclient_recipient(self, ca: str = "default") -> list[str]:
        """Arguments that make micromdm's scepclient encrypt to the RA only when the CA key is EC.

        scepclient encrypts a request to every certificate GetCACert returns unless `-ca-fingerprint` picks
        one, and cannot encrypt to an EC key: with an EC CA it is pointed at the RSA RA certificate. It also
        verifies the reply's signature with only the certificate picked: with split RA certificates that is the
        signing one (the server decrypts a request addressed to it with its key, docs/scep.md).
        """
        authority = self.runtime.cas[ca]
        if isinstance(authority.cert.public_key(), rsa.RSAPublicKey):
            return []
        return ["-ca-fingerprint", authority.ra_cert.fingerprint(hashes.SHA256()).hex()]


async def allow_single_des(settings: Settings, profile: str = "default", *, clock=utcnow) -> None:
    """Let ``profile`` decrypt single DES: micromdm's scepclient 2.1.0 encrypts every request with DES-CBC
    whatever GetCACaps offers, and new profiles refuse single DES. The test deployments that scepclient talks to
    allow it on their `default` profile."""
    from scep_server.profiles import ProfileStore
    from trustkit.db import create_engine

    engine = create_engine(settings.database_url(), sqlite_synchronous=settings.database.sqlite_synchronous)
    try:
        store = ProfileStore(engine)
        current = await store.get(profile)
        await store.update(profile, now=clock(),
                           settings=current.settings.model_copy(update={"allow_single_des": True}))
    finally:
        await engine.dispose()



@contextlib.asynccontextmanager
async def served_as_serve_does(settings: Settings):
    """The application of `settings` (initialised) on a loopback port, behind the runner `serve` uses
    (scep_server.web.protocol: its parser limits and answers); yields the port."""
    from aiohttp import web

    from scep_server.serve import bind
    from scep_server.web import protocol

    await initialise(settings)
    sock = bind("127.0.0.1", 0)
    runner = protocol.AppRunner(create_app(settings), access_log=None, auto_decompress=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
        sock.close()

async def start_app(aiohttp_server, tmp_path: Path, db_url: str | None = None, clock=None, *,
                    single_des_on_default: bool = True, first_crl: bool = True, **extra) -> RunningServer:
    """Initialise a data directory (CA, schema, default profile) and serve the app on a free port.

    ``single_des_on_default``: the `default` profile accepts single DES, for micromdm's scepclient.
    ``first_crl``: return once every CA's first CRL is served. A server answers 503 "not published yet" (with
    Retry-After) until its publisher has signed it, which a loaded machine may do after a test's first steps.
    """
    kwargs = {"clock": clock} if clock else {}
    for attempt in range(5):  # the free port may be taken by another process before the server binds it
        port = free_port()
        settings = settings_for(tmp_path / "data", db_url, listen=f"127.0.0.1:{port}", **extra)
        if attempt == 0:
            await initialise(settings, **kwargs)
            if single_des_on_default:
                await allow_single_des(settings, **kwargs)
        app = check_against_openapi(create_app(settings, **kwargs))  # every /api/v1 exchange matches the document
        try:
            await aiohttp_server(app, host="127.0.0.1", port=port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == 4:
                raise
            continue
        running = RunningServer(url=f"http://127.0.0.1:{port}", settings=settings, app=app)
        if first_crl and running.runtime.crl is not None:
            for publisher in running.runtime.crl.publishers.values():
                await publisher.wait_newer(None, timeout=120)
        return running
    raise AssertionError("unreachable")


@contextlib.contextmanager
def serve_processes(data_dir: Path, db_url: str, *, workers: int = 1, count: int = 1, env: dict | None = None):
    """Start `count` independent `scep-server serve` processes on one data directory and database.

    Yields their base URLs; all share the CA material and database, as instances of one deployment do.
    """
    _prepare_for_scepclient(data_dir, db_url)
    procs, urls = [], []
    environ = {**os.environ, "SCEP_SERVER_DATABASE__URL": db_url, "SCEP_SERVER_LOG__LEVEL": "warning",
               "SCEP_SERVER_CA__KEY_SIZE": "2048", **(env or {})}
    try:
        for _ in range(count):
            port = free_port()
            cmd = [sys.executable, "-m", "scep_server.cli", "--data-dir", str(data_dir), "serve",
                   "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
            procs.append(subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
            _wait_ready(urls[-1], procs[-1])
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _prepare_for_scepclient(data_dir: Path, db_url: str) -> None:
    """Initialise the data directory as `serve` would and let its `default` profile accept single DES (see
    allow_single_des); run on a thread of its own, since callers may be inside an event loop."""
    import concurrent.futures

    async def prepare():
        from scep_server.profiles import UnknownProfile

        settings = settings_for(data_dir, db_url)
        await initialise(settings)
        with contextlib.suppress(UnknownProfile):
            await allow_single_des(settings)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, prepare()).result()


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not become ready in {timeout}s")


async def run(*cmd: str, timeout: float = 60, cwd: Path | None = None, input: bytes | None = None,
              env: dict | None = None):
    """Run an external program without blocking the event loop (the server under test runs on it).

    ``env`` adds to (does not replace) this process's environment.
    """
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=cwd, stdin=subprocess.PIPE if input else None,
                                                env={**os.environ, **env} if env else None,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
