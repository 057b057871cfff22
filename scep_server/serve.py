"""Running the server: one process, or N worker processes sharing one listening socket."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time

import structlog
from aiohttp import web

from .app import create_app
from .config import Settings
from .logs import configure

log = structlog.get_logger("server")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def warn_wildcard_base_url(settings: Settings, announce=print) -> None:
    """A wildcard listen address without server.base_url: say (and log) that certificates would name it."""
    server = settings.server
    if not server.wildcard_base_url():
        return
    refusal = server.issuing_refusal()
    log.warning("server.base_url.wildcard", listen=server.listen, issuing=refusal is None)
    if refusal is not None:
        announce(f"warning: {refusal}; GetCACaps and GetCACert are served")
    else:
        announce(f"warning: server.base_url is not set: certificates name {server.public_base_url()} as their CRL "
                 "and CA certificate location (server.allow_wildcard_base_url = true)")


def _run_worker(settings: Settings, sock: socket.socket, metrics_sock: socket.socket | None = None) -> None:
    configure(settings.log.level, settings.log.format, cache=True)
    app = create_app(settings, metrics_sock=metrics_sock)
    # auto_decompress off: no client of ours compresses a request, and inflating one costs unbounded CPU
    # before the body size limit applies (a 100 KB gzip is 128 MiB), or a 500 when it does not inflate
    web.run_app(app, sock=sock, print=None, handle_signals=True, access_log=None,
                auto_decompress=False)


def serve(settings: Settings, *, announce=print) -> int:
    """Serve until SIGINT/SIGTERM. With workers > 1, fork workers over a pre-bound socket and supervise them."""
    from . import metrics

    section = settings.metrics
    section.token()  # a token source that is empty stops the start here, once
    warn_wildcard_base_url(settings, announce)
    sock = bind(settings.server.host, settings.server.port)
    # [metrics] listen: one socket for every worker, like the main one
    metrics_sock = bind(section.host, section.port) if section.enabled and section.listen else None
    host, port = sock.getsockname()[:2]
    announce(f"listening on http://{host}:{port} with {settings.server.workers} worker(s)")
    if metrics_sock is not None:
        m_host, m_port = metrics_sock.getsockname()[:2]
        announce(f"metrics on http://{m_host}:{m_port}/metrics")
    sys.stdout.flush()
    if settings.server.workers == 1:
        _run_worker(settings, sock, metrics_sock)
        return 0
    # the workers' metrics are summed from files in a directory made for this start
    metrics_dir = metrics.prepare_multiprocess() if section.enabled else None
    try:
        return _supervise(settings, sock, metrics_sock, announce)
    finally:
        if metrics_dir is not None:
            metrics.cleanup_multiprocess(metrics_dir)


def _supervise(settings: Settings, sock: socket.socket, metrics_sock: socket.socket | None, announce) -> int:
    from . import metrics
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                _run_worker(settings, sock, metrics_sock)
            finally:
                os._exit(0)
        children[pid] = slot

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(settings.server.workers):
        spawn(slot)
    restarts: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, None)
        metrics.worker_exited(pid)
        if slot is None or stopping:
            continue
        # A worker died unexpectedly: restart it, unless workers keep dying (then give up).
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 60] + [now]
        if len(restarts) > 10:
            announce("workers keep exiting; stopping")
            stop(signal.SIGTERM, None)
            continue
        spawn(slot)
    sock.close()
    return 0

