"""The DER fuzzer of tests/fuzz, run long: N mutated inputs through the SCEP codec, the CRL parser and HTTP.

    .venv/bin/python bench/fuzz.py                     # 100,000 codec + 100,000 CRL + 5,000 HTTP inputs
    .venv/bin/python bench/fuzz.py --codec 20000 --crl 20000 --http 2000 --seed 1

Inputs are mutated valid messages (a PKCSReq, a CertPoll, a GetCRL, a CRL with entries and extensions):
bit flips, truncations, length changes, splices, oversized OIDs, indefinite lengths, deep nesting, many
children, bad tags, times and INTEGERs. Codec and CRL inputs are timed in thread CPU time; HTTP inputs in
process CPU time (the server runs in the same process, on its own event loop, so this includes the client).
Prints, per target: inputs, unexpected exceptions or 5xx, the largest CPU time per input and its size
(codec inputs over the 64 KiB cap are checked for exceptions but not timed: HTTP refuses them unread).
Exits non-zero if any input ended in something other than the codec's own error or took over 50 ms.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzz import harness  # noqa: E402
from tests.fuzz.corpus import elements, mutate, seeds  # noqa: E402


def run(name: str, n: int, bases: list[bytes], fn, rng: random.Random) -> bool:
    if n <= 0:
        return True
    nodes = [elements(b) for b in bases]
    unexpected, worst, worst_len, total = 0, 0.0, 0, 0.0
    over = over_cap = 0
    suspects: list[bytes] = []
    started = time.perf_counter()
    for i in range(n):
        k = rng.randrange(len(bases))
        data = mutate(bases[k], random.Random(rng.getrandbits(64)), nodes[k])
        try:
            spent = fn(data)
        except harness.Unexpected as exc:
            unexpected += 1
            if unexpected <= 5:
                print(f"  {name}: {exc}", file=sys.stderr)
            continue
        if isinstance(spent, tuple):
            spent = spent[1]
        total += spent
        if name == "codec" and len(data) > harness.MAX_MESSAGE_BYTES:
            over_cap += 1  # never reaches the codec: HTTP answers 413 first
            continue
        if spent > harness.CPU_BUDGET:
            over += 1
            if len(suspects) < 50:
                suspects.append(data)
        if spent > worst:
            worst, worst_len = spent, len(data)
    wall = time.perf_counter() - started
    confirmed = [d for d in suspects if harness.retimed(fn, d) > harness.CPU_BUDGET]
    label = "5xx" if name == "http" else "unexpected exceptions"
    print(f"{name:6} {n:>8,} inputs, {unexpected} {label}, {len(confirmed)} over 50 ms"
          + (f" ({over} at first, not on re-timing)" if over and not confirmed else "")
          + f", max CPU per input {worst * 1000:.2f} ms ({worst_len:,} bytes), "
          f"mean {total / max(n - over_cap, 1) * 1000:.3f} ms, {wall:.0f} s"
          + (f" ({over_cap:,} over the 64 KiB cap: HTTP 413, not counted)" if over_cap else ""))
    return unexpected == 0 and not confirmed and over <= len(suspects)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", type=int, default=100_000)
    ap.add_argument("--crl", type=int, default=100_000)
    ap.add_argument("--http", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from scep_server.logs import configure
    configure("error", "console")  # one log line per FAILURE would drown the figures
    s = seeds()
    rng = random.Random(args.seed)
    ok = run("codec", args.codec, list(s.scep), harness.codec, rng)
    ok &= run("crl", args.crl, [s.crl], harness.crl, rng)
    if args.http:
        with tempfile.TemporaryDirectory() as tmp:
            server = harness.Server(Path(tmp) / "data").start()
            try:
                server.http(s.scep[0])
                ok &= run("http", args.http, list(s.scep), server.http, rng)
            finally:
                server.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
