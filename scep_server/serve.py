"""Running the server: one process, or N worker processes on one port (a listening socket each, or one shared)."""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping

import click
import structlog
from aiohttp import web

from trustkit.http import is_loopback_host

from .app import create_app
from .config import Settings
from .logs import configure, flush_access
from .web import protocol

log = structlog.get_logger("server")


class ListenError(OSError):
    """An address the server cannot listen on (in use, not this host's, a privileged port); the message names it."""


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(exc.errno, f"cannot listen on {shown}: {exc.strerror or exc}") from None
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


def warn_exposed(settings: Settings, announce=print) -> None:
    """Say (and log) at start what is open beyond this host without protection: /metrics without a token, the
    admin console over plain http."""
    server, section = settings.server, settings.metrics
    if section.enabled and not (section.token_env or section.token_file):
        listen = section.listen or server.listen
        if not is_loopback_host(section.host if section.listen else server.host):
            log.warning("server.metrics.open", listen=listen)
            announce(f"warning: /metrics answers whoever reaches {listen} (no metrics.token_env or token_file): "
                     "set a token, or metrics.listen on a loopback or private address")
    # base_url names the plain-http address of CRLs, AIA and OCSP (docs/deployment.md): an http base_url behind a
    # trusted proxy (the TLS proxy the console is reached through) is the documented deployment, not an exposure
    if (settings.console.enabled and not is_loopback_host(server.host) and not server.trusted_proxies
            and not server.public_base_url().startswith("https://")):
        log.warning("server.console.plain_http", listen=server.listen, base_url=server.public_base_url())
        announce(f"warning: the admin console (/admin/) on {server.listen} takes administrator tokens over plain "
                 f"http (no server.trusted_proxies, server.base_url is {server.public_base_url()}): serve it "
                 "behind a TLS proxy listed in server.trusted_proxies, or set console.enabled = false")


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1") to systemd's notification socket, $NOTIFY_SOCKET (a path, or "@name" in
    the abstract namespace). False when there is no such socket; a socket that refuses the message is logged."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # unset, or a kind of socket (vsock) this server does not speak
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("systemd.notify_failed", error=f"{exc.__class__.__name__}: {exc}")
        return False
    return True


def _run_worker(settings: Settings, sock: socket.socket, metrics_sock: socket.socket | None = None,
                ready: Callable[[], None] | None = None) -> None:
    configure(settings.log.level, settings.log.format, cache=True)
    app = create_app(settings, metrics_sock=metrics_sock)
    if ready is not None:
        async def _ready(_app: web.Application) -> None:  # after the runtime opened (CA keys, database)
            ready()

        app.on_startup.append(_ready)
    # auto_decompress off: no client of ours compresses a request, and inflating one costs unbounded CPU
    # before the body size limit applies (a 100 KB gzip is 128 MiB), or a 500 when it does not inflate.
    # protocol.run_app: aiohttp's run_app whose connections answer a request the parser refuses with a
    # problem document (keep-alive 75 s, as aiohttp's run_app keeps it)
    protocol.run_app(app, sock=sock, access_log=None, auto_decompress=False, keepalive_timeout=75.0)


def worker_cpus(mode: str, workers: int, usable: Iterable[int] | None = None) -> list[int] | None:
    """The CPU each worker slot is kept on (server.cpu_affinity), or None: the kernel places the workers.

    ``auto`` keeps each worker on a CPU of its own when there are exactly as many workers (more than one) as
    CPUs this process may use; with fewer, more, or one, the kernel balances them."""
    if mode != "auto" or workers < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0) if usable is None else usable)
    return cpus if len(cpus) == workers else None


def serve(settings: Settings, *, announce=print) -> int:
    """Serve until SIGINT/SIGTERM. With workers > 1, fork workers over sockets bound here and supervise them."""
    from . import metrics

    section = settings.metrics
    section.token()  # a token source that is empty stops the start here, once
    warn_wildcard_base_url(settings, announce)
    warn_exposed(settings, announce)
    per_worker = settings.server.workers > 1 and settings.server.reuse_port and hasattr(socket, "SO_REUSEPORT")
    sock = bind(settings.server.host, settings.server.port, reuse_port=per_worker)
    # [metrics] listen: one socket for every worker
    metrics_sock = bind(section.host, section.port) if section.enabled and section.listen else None
    host, port = sock.getsockname()[:2]
    announce(f"listening on http://{host}:{port} with {settings.server.workers} worker(s)")
    if metrics_sock is not None:
        m_host, m_port = metrics_sock.getsockname()[:2]
        announce(f"metrics on http://{m_host}:{m_port}/metrics")
    sys.stdout.flush()
    if settings.server.workers == 1:
        _run_worker(settings, sock, metrics_sock, ready=lambda: sd_notify(f"READY=1\nSTATUS=listening on {host}:{port}"))
        return 0
    # the workers' metrics are summed from files in a directory made for this start
    metrics_dir = metrics.prepare_multiprocess() if section.enabled else None
    # server.reuse_port: one socket per worker slot on the same port, made here and kept open by the supervisor,
    # so that connections queued on a slot's socket wait for its worker's restart instead of being reset
    socks = [sock] * settings.server.workers
    if per_worker:
        socks[1:] = [bind(host, port, reuse_port=True) for _ in socks[1:]]
        announce("each worker listens on a socket of its own (server.reuse_port): the kernel spreads connections")
    try:
        return _supervise(settings, socks, metrics_sock, announce)
    finally:
        if metrics_dir is not None:
            metrics.cleanup_multiprocess(metrics_dir)


def _flush_buffers() -> None:
    """What a worker still holds for later writing: its access lines and its metric increments."""
    from . import metrics

    flush_access()
    metrics.flush()


def _worker_ready(fd: int) -> None:
    try:
        os.write(fd, b"r")
    except OSError:  # the supervisor no longer listens (it was told long ago)
        pass


def _await_workers(fd: int, count: int, give_up: Callable[[], bool], timeout: float = 300.0) -> bool:
    """Whether `count` workers said they are ready on the pipe `fd` within `timeout` seconds; False at once when
    `give_up()` (the server is stopping) or a worker exited meanwhile."""
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < count:
        left = deadline - time.monotonic()
        if left <= 0 or give_up() or _a_child_exited():
            return False
        try:
            readable, _, _ = select.select([fd], [], [], min(left, 0.2))
        except InterruptedError:
            continue
        if readable:
            data = os.read(fd, count - seen)
            if not data:
                return False
            seen += len(data)
    return True


def _a_child_exited() -> bool:
    """Whether a child process has exited (it is left for os.wait to collect)."""
    try:
        return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _supervise(settings: Settings, socks: list[socket.socket], metrics_sock: socket.socket | None, announce) -> int:
    """Fork a worker per slot, serving ``socks[slot]`` (one shared socket, or one each: server.reuse_port), and
    restart one that dies."""
    from . import metrics
    children: dict[int, int] = {}
    stopping = False
    ready_r, ready_w = os.pipe()  # each worker writes one byte once it serves; the supervisor then tells systemd

    cpus = worker_cpus(settings.server.cpu_affinity, settings.server.workers)
    if cpus is not None:
        announce(f"each worker kept on a CPU of its own ({', '.join(map(str, cpus))}; server.cpu_affinity)")

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            # the child never returns into the supervisor's frames (their `finally` would remove the live metrics
            # directory): it ends here, 0 once served, 1 with its error said
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                if ready_r >= 0:  # a restart, after the start, finds it closed already (its number maybe reused)
                    os.close(ready_r)
                if cpus is not None:  # before any thread starts: the worker's threads inherit it (a restart too)
                    os.sched_setaffinity(0, {cpus[slot]})
                for other in set(socks) - {socks[slot]}:
                    other.close()  # another slot's socket: only its own worker accepts there
                _run_worker(settings, socks[slot], metrics_sock, ready=lambda: _worker_ready(ready_w))
                code = 0
            except click.ClickException as exc:  # a start error the worker met (the OTP key unreadable, say)
                exc.show()
            except BaseException:  # noqa: BLE001 - said, and the supervisor sees the exit status
                traceback.print_exc()
            finally:
                _flush_buffers()  # os._exit runs no atexit handler
                os._exit(code)
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
    failed = False
    if _await_workers(ready_r, settings.server.workers, lambda: stopping):
        host, port = socks[0].getsockname()[:2]
        sd_notify(f"READY=1\nSTATUS=listening on {host}:{port} with {settings.server.workers} workers")
    elif not stopping and _a_child_exited():
        # a worker could not start (what it said is above): the others would not either; exit 1
        announce("a worker could not start; stopping")
        failed = True
        stop(signal.SIGTERM, None)
    os.close(ready_r)
    ready_r = -1
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
            failed = True
            stop(signal.SIGTERM, None)
            continue
        spawn(slot)
    os.close(ready_w)
    for listening in set(socks):
        listening.close()
    return 1 if failed else 0  # a server that gave up is a failure to its service manager (Restart=on-failure)

