"""kill -9 of `scep-server serve` under SCEP enrolment and OTP sign-in load, many cycles, on SQLite.

    .venv/bin/python bench/crash.py --cycles 20 --load-seconds 2

Each cycle starts the server on the same data directory, retries what the previous kill interrupted (the
same SCEP transactions, the same OTPs) and replays accepted OTPs, runs enrolments and verifications at
once, and sends SIGKILL in the middle. A last clean start answers every outstanding retry and replays every
accepted OTP. Prints one line: "N cycles, N certificates delivered, 0 lost, 0 duplicate serials, 0 OTP
accepted twice" (and the detail); exits 1 when a figure that must be 0 is not. The load itself is
tests/adversarial/crashrun.py, which the test suite runs for three short cycles.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.adversarial.crashrun import CrashRun, summary  # noqa: E402
from tests.scep_load.conftest import distinct_keys  # noqa: E402
from tests.server import free_port  # noqa: E402


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--load-seconds", type=float, default=2.0, help="load before each kill (60-100%% of it)")
    parser.add_argument("--keys", type=int, default=1000, help="RSA keys available for enrolments")
    parser.add_argument("--yubikeys", type=int, default=8, help="YubiKeys verifying OTPs in parallel")
    parser.add_argument("--enrolers", type=int, default=4, help="parallel enrolment clients")
    args = parser.parse_args()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crash-") as tmp:
        run = CrashRun(Path(tmp) / "data", free_port(), distinct_keys(args.keys), yubikeys=args.yubikeys)
        await run.prepare()
        for n in range(args.cycles):
            await run.cycle(load_seconds=args.load_seconds, enrolers=args.enrolers)
            print(f"cycle {n + 1}: {len(run.tally.delivered)} certificates, {len(run.tally.otp_accepted)} OTPs "
                  f"accepted so far", file=sys.stderr)
        await run.finish()
        figures = await run.check()
    print(summary(figures))
    print(f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    bad = (figures["lost"] + figures["duplicate_serials"] + figures["otp_accepted_twice"]
           + figures["otp_counter_behind"] + figures["violations"])
    for violation in run.tally.violations[:20]:
        print(violation, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
