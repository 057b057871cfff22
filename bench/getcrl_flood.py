"""SCEP enrolments with and without a concurrent flood of SCEP GetCRLs against a large CRL (`serve --workers 2`, SQLite).

    PYTHONPATH=. .venv/bin/python bench/getcrl_flood.py                      # 100,000-entry CRL, 2 rounds
    PYTHONPATH=. .venv/bin/python bench/getcrl_flood.py --entries 1000000 --rounds 1

A GetCRL answer costs in proportion to the CRL (the CRL in a degenerate PKCS#7, encrypted to the requester, its
digest signed by the RA), and anyone can send one (a self-signed signer is enough). This measures what such a flood
does to enrolments: per round, one turn of PKCSReqs alone and one with the flood running, the order alternating.

- Before the server starts, a CRL of `--entries` entries signed by the CA is recorded in the data directory's
  database; the server adopts it and serves it (GET /crl/default.crl is checked to be that CRL).
- Enrolments come from one client process (bench/scep_enroll.py's: PKCSReq bodies built before timing,
  `--concurrency` in flight, every reply verified afterwards: a CertRep SUCCESS for the request's key).
- The flood is another process: `--flood` loops, each posting GetCRLs signed by a self-signed signer of its own
  (prebuilt, one body per loop) one after the other, from before the enrolment turn starts until it ends (at most
  `--flood-seconds`). It counts answers 200 (each a CertRep of the CRL's size, not parsed), 503 and other.
- Printed per mode: enrolments/s, enrolment p50 and p99 latency, failures; for the flood, GetCRLs answered per
  second, 503s and other answers. Traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scep_enroll import Server, make_keys, pct, prepare, run_turn  # noqa: E402  (bench/scep_enroll.py)

UTC = timezone.utc


# ---------------------------------------------------------------- the large CRL, recorded before the server starts

def record_crl(data_dir: Path, entries: int) -> int:
    """Initialise the data directory and record a CRL of `entries` entries signed by its CA (the server adopts it).
    Returns the CRL's size in bytes."""
    import random

    from crl.build import Issuer, build_crl
    from crl.store import CrlStateStore
    from scep_server.config import load_settings
    from scep_server.crlwiring.service import key_ops_signer
    from scep_server.runtime import initialise, load_cas
    from trustkit.db import create_engine
    from trustkit.der import utc_seconds

    settings = load_settings(None, data_dir=str(data_dir), ca={"key_size": 2048}, log={"level": "warning"})

    async def go() -> int:
        await initialise(settings)
        ca = next(iter(load_cas(settings).values()))
        engine = create_engine(settings.database_url())
        try:
            store = CrlStateStore(engine, ca.name)
            number, this_update = await store.allocate(utc_seconds(datetime.now(UTC)))
            this_update = utc_seconds(this_update)
            next_update = this_update + timedelta(days=7)
            rnd = random.Random(entries)
            start = this_update - timedelta(days=365)
            rows = [(rnd.getrandbits(126) | 1 << 126, start + timedelta(seconds=rnd.randrange(365 * 86400)),
                     rnd.choice([None, 1, 4, 5]), None) for _ in range(entries)]
            der = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=key_ops_signer(ca), number=number,
                            this_update=this_update, next_update=next_update, entries=rows)
            assert await store.save(number=number, this_update=this_update, next_update=next_update, der=der,
                                    sha256=hashlib.sha256(der).hexdigest(), entries=entries, published_at=this_update,
                                    published_by="bench")
            return len(der)
        finally:
            await engine.dispose()
    return asyncio.run(go())


# ---------------------------------------------------------------- the GetCRL flood (its own process)

def getcrl_bodies(n: int, ra_der: bytes, ca_der: bytes) -> list[bytes]:
    """`n` GetCRLs, each signed by a self-signed signer of its own key, naming the CA and a serial."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    from scep_server.scep import client
    from scep_server.scep.types import ContentCipher, Digest, MessageType

    ra_pub = x509.load_der_x509_certificate(ra_der).public_key()
    issuer = x509.load_der_x509_certificate(ca_der).subject
    bodies = []
    for i in range(n):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        bodies.append(client.build_request(
            MessageType.GET_CRL, content=client.issuer_and_serial(issuer, 0x1000 + i),
            signer_cert_der=client.make_self_signed_signer(key, cn=f"flood {i}"), signer_key=key,
            recipient_cert_der=ra_der, recipient_key=ra_pub, transaction_id=f"FLOOD-{i}-{secrets.token_hex(4)}",
            sender_nonce=secrets.token_bytes(16), cipher=ContentCipher.AES128_CBC, digest=Digest.SHA256,
            cek=secrets.token_bytes(16), iv=secrets.token_bytes(16)))
    return bodies


def _flood(url: str, bodies_path: str, seconds: float, started, stop, result_path: str) -> None:
    import aiohttp

    with open(bodies_path, "rb") as fh:
        bodies: list[bytes] = pickle.load(fh)

    async def main() -> dict:
        counts = {"ok": 0, "busy": 0, "other": 0, "bytes": 0}
        deadline = time.monotonic() + seconds
        connector = aiohttp.TCPConnector(limit=len(bodies))
        headers = {"Content-Type": "application/x-pki-message"}
        async with aiohttp.ClientSession(connector=connector) as session:
            async def loop(body: bytes) -> None:
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        async with session.post(url, data=body, headers=headers) as resp:
                            data = await resp.read()
                            status = resp.status
                    except aiohttp.ClientError:
                        status, data = 0, b""
                    if status == 200:
                        counts["ok"] += 1
                        counts["bytes"] += len(data)
                        started.set()
                    elif status == 503:
                        counts["busy"] += 1
                        await asyncio.sleep(0.05)  # what a client told to try again does at the least
                    else:
                        counts["other"] += 1
                        await asyncio.sleep(0.05)

            t0 = time.perf_counter()
            await asyncio.gather(*(loop(b) for b in bodies))
            counts["wall"] = time.perf_counter() - t0
        return counts

    result = asyncio.run(main())
    with open(result_path, "wb") as fh:
        pickle.dump(result, fh)


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=100_000, help="entries of the CRL served")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4, help="enrolments in flight")
    ap.add_argument("--requests", type=int, default=300, help="timed enrolments per turn")
    ap.add_argument("--flood", type=int, default=16, help="GetCRLs in flight during the flood turns")
    ap.add_argument("--flood-seconds", type=float, default=300.0, help="the longest a flood runs")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (quiet, flood), the order alternating")
    ap.add_argument("--keys", type=int, default=16, help="distinct enrolment client keys")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="scep-bench-getcrl-"))
    t0 = time.perf_counter()
    crl_bytes = record_crl(tmp / "data", args.entries)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, SQLite, {args.workers} server workers; CRL of "
          f"{args.entries:,} entries, {crl_bytes / 1e6:.1f} MB, recorded in {time.perf_counter() - t0:.1f} s")
    server = Server(tmp / "data", None, args.workers, tmp / "server.log")
    ctx = mp.get_context("spawn")
    rows: list[dict] = []
    try:
        from scep_server.scep import client

        served = b""
        for _ in range(100):  # each worker adopts the recorded CRL as it starts: 503 until then
            try:
                served = server.get("/crl/default.crl")
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 503:
                    raise
                time.sleep(0.2)
        if len(served) != crl_bytes:
            raise SystemExit(f"the server serves a CRL of {len(served)} bytes, not the recorded one")
        ra_der, ca_der = client.certs_in_order(server.get("/scep/default?operation=GetCACert"))[:2]
        challenge = (tmp / "data" / "default-challenge.txt").read_text().strip()
        url = server.url + "/scep/default?operation=PKIOperation"
        warmup = max(2 * args.concurrency, 8)
        with ctx.Pool(2) as pool:
            keys = make_keys(args.keys, pool)
            turns = []
            for r in range(args.rounds):
                for mode in (("quiet", "flood") if r % 2 == 0 else ("flood", "quiet")):
                    turns.append((r, mode, prepare(warmup + args.requests, keys, ra_der, challenge, pool)))
        flood_path = tmp / "getcrl.pkl"
        flood_path.write_bytes(pickle.dumps(getcrl_bodies(args.flood, ra_der, ca_der)))
        print(f"prepared {len(turns)} turns of {warmup + args.requests} PKCSReqs and {args.flood} GetCRLs (not timed)")

        for n, (r, mode, (bodies, keys_, key_of)) in enumerate(turns):
            flood = None
            if mode == "flood":
                started, stop = ctx.Event(), ctx.Event()
                flood_result = tmp / f"flood-{n}.pkl"
                flood = ctx.Process(target=_flood, args=(url, str(flood_path), args.flood_seconds, started, stop,
                                                         str(flood_result)))
                flood.start()
                if not started.wait(120):
                    stop.set()
                    flood.join()
                    raise SystemExit("no GetCRL was answered in 120 s")
            out, server_cpu, checked = run_turn(ctx, tmp, f"{n}", url, server.workers, bodies, keys_, key_of,
                                                ra_der, args.concurrency, warmup)
            row = dict(round=r, mode=mode, wall=out["wall"], server_cpu=server_cpu)
            if flood is not None:
                stop.set()
                flood.join()
                row["flood"] = pickle.loads(flood_result.read_bytes())
            timed = range(warmup, len(bodies))
            bad = {i for i, _, p in checked if p is not None}
            row["ok"] = sum(1 for i in timed if i not in bad)
            row["failures"] = len(timed) - row["ok"]
            row["lat"] = [out["results"][i][1] for i in timed]
            first = next((p for i, _, p in checked if p is not None), None)
            extra = ""
            if "flood" in row:
                f = row["flood"]
                extra = f"; flood: {f['ok']} GetCRLs answered ({f['ok'] / f['wall']:.1f}/s), {f['busy']} 503, " \
                        f"{f['other']} other"
            print(f"  round {r + 1} {mode:<5} {row['ok'] / row['wall']:7.1f} enrolments/s, p50 "
                  f"{statistics.median(row['lat']) * 1000:7.1f} ms, p99 {pct(row['lat'], 0.99) * 1000:7.1f} ms, "
                  f"{row['failures']} failures" + (f" (e.g. {first[:100]})" if first else "") + extra)
            rows.append(row)
    finally:
        server.stop()

    table = {}
    print()
    print(f"{'mode':<6} | {'enrol/s':>8} | {'p50 ms':>8} | {'p99 ms':>8} | {'failures':>8} | GetCRLs answered/s, 503s, "
          "other")
    for mode in ("quiet", "flood"):
        runs = [r for r in rows if r["mode"] == mode]
        lat = [x for r in runs for x in r["lat"]]
        t = table[mode] = dict(enrol_per_s=sum(r["ok"] for r in runs) / sum(r["wall"] for r in runs),
                               p50_ms=statistics.median(lat) * 1000, p99_ms=pct(lat, 0.99) * 1000,
                               failures=sum(r["failures"] for r in runs))
        floods = [r["flood"] for r in runs if "flood" in r]
        flood_text = ""
        if floods:
            t.update(getcrl_per_s=sum(f["ok"] for f in floods) / sum(f["wall"] for f in floods),
                     getcrl_503=sum(f["busy"] for f in floods), getcrl_other=sum(f["other"] for f in floods))
            flood_text = f"{t['getcrl_per_s']:.1f}/s, {t['getcrl_503']}, {t['getcrl_other']}"
        print(f"{mode:<6} | {t['enrol_per_s']:>8.1f} | {t['p50_ms']:>8.1f} | {t['p99_ms']:>8.1f} | "
              f"{t['failures']:>8} | {flood_text}")
    print("RESULT " + json.dumps({"entries": args.entries, "crl_bytes": crl_bytes, "workers": args.workers,
                                  "concurrency": args.concurrency, "flood_in_flight": args.flood, **table}))
    if args.keep:
        print(f"data directory kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(t["failures"] == 0 for t in table.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
