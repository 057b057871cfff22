"""Running the fuzzer: one input through the codec, the CRL parser or the HTTP handler, with its CPU time.

Shared by tests/fuzz/test_fuzz.py (a bounded run in the normal suite) and bench/fuzz.py (a long run).
"""
from __future__ import annotations

import asyncio
import http.client
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from crl.parse import CrlFormatError, parse_crl
from scep_server.scep import MalformedMessage, SCEPFailure, parse_pki_message
from scep_server.web.scep import MAX_MESSAGE_BYTES

CPU_BUDGET = 0.050  # seconds of CPU per input, whatever the input


class Unexpected(AssertionError):
    """An input ended in something other than the codec's own error (or an HTTP 5xx)."""


def retimed(fn, data: bytes, tries: int = 3) -> float:
    """The least CPU time of ``tries`` more runs of ``fn`` on one input.

    Process CPU time also counts whatever else the process did meanwhile (the in-process server's background
    jobs, the garbage collector). The cost of parsing one input is the same every time, so an input over the
    budget is timed again, and is over the budget only if it is every time.
    """
    def cpu() -> float:
        spent = fn(data)
        return spent[1] if isinstance(spent, tuple) else spent
    return min(cpu() for _ in range(tries))


def codec(data: bytes) -> float:
    """Parse and verify one pkiMessage; thread CPU seconds. Raises Unexpected for a foreign exception."""
    t = time.thread_time()
    try:
        parse_pki_message(data)
    except (MalformedMessage, SCEPFailure):
        pass
    except Exception as exc:  # noqa: BLE001
        raise Unexpected(f"parse_pki_message raised {type(exc).__name__}: {exc!s:.200}") from exc
    return time.thread_time() - t


def crl(data: bytes) -> float:
    """Parse a CRL, index it, summarise it and decode every entry; thread CPU seconds."""
    t = time.thread_time()
    try:
        parsed = parse_crl(data)
        index = parsed.index()
        parsed.summary()
        for serial in list(index.serials()):
            index.entry(serial)
    except CrlFormatError:
        pass
    except Exception as exc:  # noqa: BLE001
        raise Unexpected(f"the CRL parser raised {type(exc).__name__}: {exc!s:.200}") from exc
    return time.thread_time() - t


@dataclass
class Server:
    """The whole application on a loopback port, on its own event loop in a thread."""

    data_dir: Path
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: object = None
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def start(self) -> "Server":
        from aiohttp import web

        from scep_server.app import create_app
        from scep_server.appkeys import RUNTIME
        from scep_server.runtime import initialise
        from tests.factories import settings_for
        from tests.openapi_check import attach as check_against_openapi
        from tests.server import free_port

        self.port = free_port()
        settings = settings_for(self.data_dir, None, listen=f"127.0.0.1:{self.port}")
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def boot():
            await initialise(settings)
            self._runner = web.AppRunner(check_against_openapi(create_app(settings)))
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            runtime = self._runner.app[RUNTIME]
            if runtime.crl is not None:  # the first CRLs are signed in the background: not during a timed input
                for publisher in runtime.crl.publishers.values():
                    await publisher.wait_newer(None, timeout=120)

        def run():
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(boot())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fuzz-server", daemon=True)
        self._thread.start()
        if not ready.wait(60):
            raise RuntimeError("the server did not start")
        return self

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()

    def post(self, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self._conn.request("POST", "/scep/default?operation=PKIOperation", body=body,
                                   headers={"Content-Type": "application/x-pki-message"})
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self._conn.close()
                    self._conn = None
                return resp.status, data
            except (ConnectionError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def http(self, data: bytes) -> tuple[int, float]:
        """POST one body; (status, process CPU seconds: server and client). Raises Unexpected on a 5xx."""
        t = time.process_time()
        status, body = self.post(data)
        spent = time.process_time() - t
        if status >= 500:
            raise Unexpected(f"HTTP {status} for a {len(data)}-byte body: {body[:200]!r}")
        if len(data) > MAX_MESSAGE_BYTES and status != 413:
            raise Unexpected(f"HTTP {status} for a {len(data)}-byte body over the cap")
        return status, spent
