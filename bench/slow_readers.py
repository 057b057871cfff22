"""Clients that ask for a large CRL, or a SCEP GetCRL of it, and read nothing: the server's memory and how long
they hold it (`serve --workers 1`, SQLite, loopback only).

    PYTHONPATH=. .venv/bin/python bench/slow_readers.py                      # 1,000,000 entries (46 MB), 6 clients
    PYTHONPATH=. .venv/bin/python bench/slow_readers.py --entries 250000 --clients 4 --hold 40

- Before the server starts, a CRL of `--entries` entries signed by the CA is recorded (bench/getcrl_flood.py's
  record_crl); the server adopts and serves it.
- `crl` turn: `--clients` raw sockets (4 KiB receive buffer) each send GET /crl/default.crl and read nothing.
  `getcrl` turn: as many send a GetCRL (each signed by a self-signed signer of its own) and read nothing; the
  status line of each is peeked at (200, or 503 when the worker's GetCRL lane is full). Per turn: the worker's RSS
  before, once every client has asked (the peak over the first seconds), then every `--sample` seconds for
  `--hold` seconds, and when each client's connection was closed by the server (if it was).
- `fast` turn: `--fast` sequential downloads of /crl/default.crl by a client that reads (aiohttp), MB/s.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from getcrl_flood import getcrl_bodies, record_crl  # noqa: E402  (bench/getcrl_flood.py)
from scep_enroll import Server  # noqa: E402  (bench/scep_enroll.py)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class NonReader:
    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(request)
        self.sock.setblocking(False)
        self.started = time.monotonic()
        self.closed_after: float | None = None
        self.status = b""

    def peek(self) -> None:
        """The status line once it is here; whether the server has closed the connection (seen as a reset, or
        as the end once what the socket holds is read: only then is anything read)."""
        if self.closed_after is not None:
            return
        try:
            head = self.sock.recv(12, socket.MSG_PEEK)
            if head and not self.status:
                self.status = head[9:12]
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.closed_after = time.monotonic() - self.started
            return
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err or not head:
            self.closed_after = time.monotonic() - self.started


def turn(name: str, server: Server, requests: list[bytes], hold: float, sample: float) -> None:
    pid = server.workers[0]
    before = rss_mb(pid)
    clients = [NonReader(server.port, r) for r in requests]
    peak, t0 = before, time.monotonic()
    while time.monotonic() - t0 < 3:
        peak = max(peak, rss_mb(pid))
        for c in clients:
            c.peek()
        time.sleep(0.05)
    samples = []
    next_sample = t0
    while time.monotonic() - t0 < hold:
        for c in clients:
            c.peek()
        if time.monotonic() >= next_sample:
            samples.append((time.monotonic() - t0, rss_mb(pid), sum(c.closed_after is None for c in clients)))
            next_sample += sample
        time.sleep(0.1)
    statuses = ", ".join(sorted({s.decode() or "none" for s in (c.status for c in clients)}))
    print(f"{name}: {len(clients)} clients reading nothing (answers {statuses}); worker RSS before {before:.0f} MB, "
          f"peak in the first 3 s {peak:.0f} MB (+{peak - before:.0f} MB)")
    print("  " + "; ".join(f"{t:.0f} s: {mb:.0f} MB, {open_} open" for t, mb, open_ in samples))
    cut = sorted(c.closed_after for c in clients if c.closed_after is not None)
    print(f"  closed by the server: {len(cut)} of {len(clients)}" +
          (f", after {cut[0]:.1f}-{cut[-1]:.1f} s" if cut else ""))
    for c in clients:
        c.sock.close()
    time.sleep(1)


def fast(server: Server, n: int, size: int) -> None:
    import aiohttp

    async def go() -> float:
        async with aiohttp.ClientSession() as session:
            t = time.perf_counter()
            for _ in range(n):
                async with session.get(server.url + "/crl/default.crl") as resp:
                    assert len(await resp.read()) == size
            return time.perf_counter() - t

    wall = asyncio.run(go())
    print(f"fast: {n} downloads by a client that reads, {n * size / wall / 1e6:.0f} MB/s ({wall / n * 1000:.0f} ms "
          f"each); worker RSS after {rss_mb(server.workers[0]):.0f} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000, help="entries of the CRL served")
    ap.add_argument("--clients", type=int, default=6, help="clients that read nothing, per turn")
    ap.add_argument("--hold", type=float, default=45.0, help="seconds each turn watches them")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--fast", type=int, default=10, help="downloads by a client that reads")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="scep-bench-slow-"))
    try:
        size = record_crl(tmp / "data", args.entries)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, 1 worker; CRL of {args.entries:,} entries, "
              f"{size / 1e6:.1f} MB")
        server = Server(tmp / "data", None, 1, tmp / "server.log")
        try:
            from scep_server.scep import client

            for _ in range(100):  # the worker adopts the recorded CRL as it starts: 503 until then
                try:
                    if len(server.get("/crl/default.crl")) == size:
                        break
                except urllib.error.HTTPError as exc:
                    if exc.code != 503:
                        raise
                time.sleep(0.2)
            ra_der, ca_der = client.certs_in_order(server.get("/scep/default?operation=GetCACert"))[:2]
            get = b"GET /crl/default.crl HTTP/1.1\r\nHost: x\r\n\r\n"
            turn("crl", server, [get] * args.clients, args.hold, args.sample)
            bodies = getcrl_bodies(args.clients, ra_der, ca_der)
            posts = [b"POST /scep/default?operation=PKIOperation HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % len(b) + b for b in bodies]
            turn("getcrl", server, posts, args.hold, args.sample)
            fast(server, args.fast, size)
        finally:
            server.stop()
        cuts = sum(1 for line in (tmp / "server.log").read_text(errors="replace").splitlines()
                   if "http.send_timeout" in line)
        print(f"http.send_timeout lines in the server's log: {cuts}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
