"""Serve the OTP routes from a process of their own (race tests and benchmarks).

    .venv/bin/python -m tests.otp.serve_otp --db URL --port P --kek-file FILE [--reuse-port]

Prints `READY <port>` once listening; stops cleanly (queued counter updates committed) on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from aiohttp import web

from otp.config import OtpSettings
from otp.kek import read_kek_file
from otp.service import OtpService
from otp.web import add_routes
from scep_server.store.db import create_engine


async def serve(args: argparse.Namespace) -> None:
    settings = OtpSettings(**json.loads(args.settings)) if args.settings else OtpSettings()
    engine = create_engine(args.db, pool_size=args.pool_size)
    service = OtpService(engine, settings, read_kek_file(args.kek_file))
    app = web.Application()
    add_routes(app, service)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_port=args.reuse_port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await service.aclose()
    await engine.dispose()
    c = service._committer  # noqa: SLF001 - figures for the benchmark
    print(f"STATS batches={c.batches} updates={c.items}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.otp.serve_otp")
    p.add_argument("--db", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--kek-file", required=True)
    p.add_argument("--reuse-port", action="store_true")
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--settings", help="OtpSettings as JSON")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--profile", help="write cProfile statistics of the serving process to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    if args.profile:
        import cProfile

        with cProfile.Profile() as prof:
            asyncio.run(serve(args))
        prof.dump_stats(args.profile)
        return
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
