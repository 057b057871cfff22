"""CRL benchmark: build+sign vs `openssl ca -gencrl` on the same entries, checker parse and lookups, and
serving throughput of the server's /crl/{ca}.crl (its own application) vs a bare aiohttp handler in that application
(both measured with wrk in one run).

    .venv/bin/python bench/crl.py                      # 10k, 100k, 1M entries + serving (about 2 minutes)
    .venv/bin/python bench/crl.py --sizes 10000 --wrk-seconds 2
    .venv/bin/python bench/crl.py --partitioned 1000000 --partitions 100 --revocations 100   # partitioned CRLs

--partitioned N: N revoked certificates spread over --partitions partitions in a server database (SQLite), then
one partition's re-sign against the full CRL's, --revocations revocations each timed until its partition's served
CRL lists it (p50/p99), and the peak RSS of the process publishing the partitions (the full CRL is measured in a
process of its own; targets: p99 < 1 s, a partition's re-sign < 1/50 of the full CRL's, peak < 1 GB).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from measure import free_port  # noqa: E402  (bench/measure.py)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from crl.build import EntryEncoder, Issuer, build_crl  # noqa: E402
from crl.parse import parse_crl  # noqa: E402
from crl.signing import CrlSigner  # noqa: E402

UTC = timezone.utc
THIS_UPDATE = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
NEXT_UPDATE = THIS_UPDATE + timedelta(days=7)
# reasons OpenSSL's `ca` can write too (it has no privilegeWithdrawn); a hold needs a hold instruction there
REASONS = [None, 1, 4, 5, 6]
OPENSSL_REASON = {1: "keyCompromise", 4: "superseded", 5: "cessationOfOperation",
                  6: "certificateHold,holdInstructionReject"}


def entries_for(n: int) -> list[tuple]:
    """n revoked entries: random 127-bit serials, revocation times over the past year, mixed reasons."""
    rnd = random.Random(n)
    start = THIS_UPDATE - timedelta(days=365)
    return [(rnd.getrandbits(126) | 1 << 126, start + timedelta(seconds=rnd.randrange(365 * 86400)),
             rnd.choice(REASONS), None) for _ in range(n)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_ca(directory: Path):
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    return cert, key


# ---------------------------------------------------------------- child: one build, its own peak memory

def child_build(n: int, directory: Path) -> None:
    cert, key = load_ca(directory)
    issuer, signer = Issuer.from_certificate(cert), CrlSigner.for_private_key(key)
    entries = entries_for(n)
    input_rss = rss_mb()
    started = time.perf_counter()
    der = build_crl(issuer=issuer, signer=signer, number=1000, this_update=THIS_UPDATE, next_update=NEXT_UPDATE,
                    entries=entries)
    build_s = time.perf_counter() - started
    peak_rss = rss_mb()
    (directory / f"ours-{n}.der").write_bytes(der)
    # a re-sign after one more revocation, with every other entry's DER kept from the previous build
    encoder = EntryEncoder()
    encoder.encode(entries)
    entries.append((12345, THIS_UPDATE, 1, None))
    started = time.perf_counter()
    build_crl(issuer=issuer, signer=signer, number=1001, this_update=THIS_UPDATE, next_update=NEXT_UPDATE,
              entries=entries, encoder=encoder)
    resign_s = time.perf_counter() - started
    entries.pop()
    with open(directory / f"index-{n}.txt", "w") as fh:
        for serial, at, reason, _ in entries:
            rev = at.strftime("%y%m%d%H%M%SZ") + ("," + OPENSSL_REASON[reason] if reason else "")
            fh.write(f"R\t491231235959Z\t{rev}\t{serial:X}\tunknown\t/CN=d\n")
    print(json.dumps({"build_s": build_s, "der_bytes": len(der), "input_rss_mb": input_rss,
                      "peak_rss_mb": peak_rss, "resign_s": resign_s, "resign_peak_rss_mb": rss_mb()}))


# ---------------------------------------------------------------- partitioned CRLs (child processes: own peak RSS)

def child_partitioned(stage: str, n: int, partitions: int, revocations: int, directory: Path) -> None:
    print(json.dumps(asyncio.run(_partitioned(stage, n, partitions, revocations, directory))))


def _bench_settings(directory: Path):
    from scep_server.config import load_settings

    return load_settings(None, data_dir=str(directory / "data"), ca={"key_size": 2048}, log={"level": "warning"})


def _fill(settings, n: int, partitions: int, revocations: int) -> list[int]:
    """n revoked certificates and `revocations` + 5 valid ones of the CA, spread over the partitions; the valid
    serials. Straight through sqlite3 (SQLAlchemy's own storage format for DateTime on SQLite), one transaction."""
    import sqlite3

    import sqlalchemy as sa

    ca = settings.ca.name
    now = datetime.now(UTC).replace(microsecond=0)
    rnd = random.Random(n)

    def row(serial: int, status: str) -> tuple:
        at = now - timedelta(seconds=rnd.randrange(1, 300 * 86400)) - timedelta(days=1)
        values = dict(serial=format(serial, "x"), ca=ca, subject="CN=bench", sans="[]", not_before=at,
                      not_after=now + timedelta(days=365), status=status,
                      revocation_reason=rnd.choice([None, 1, 4, 5]) if status == "revoked" else None,
                      revoked_at=at if status == "revoked" else None, fingerprint_sha256=f"{serial:064x}",
                      public_key_sha256="0" * 64, der=b"", issued_at=at, updated_at=at,
                      crl_partition=serial % partitions)
        return tuple(v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v for v in values.values())

    columns = ["serial", "ca", "subject", "sans", "not_before", "not_after", "status", "revocation_reason",
               "revoked_at", "fingerprint_sha256", "public_key_sha256", "der", "issued_at", "updated_at",
               "crl_partition"]
    db = sqlite3.connect(sa.make_url(settings.database_url()).database)
    # a scratch database: the rollback journal in memory, a large page cache, rows in serial order (the primary
    # key and the fingerprint index then grow at their end), the other indexes built once after the load
    db.execute("PRAGMA journal_mode=MEMORY")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-262144")
    insert = f"INSERT INTO certificates ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    revoked = sorted(rnd.getrandbits(126) | 1 << 126 for _ in range(n))
    valid = [rnd.getrandbits(126) | 1 << 126 for _ in range(revocations + 5)]
    db.execute("BEGIN")
    indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'certificates' "
                         "AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        db.execute(f"DROP INDEX {name}")
    for start in range(0, n, 100_000):
        db.executemany(insert, [row(serial, "revoked") for serial in revoked[start:start + 100_000]])
    db.executemany(insert, [row(serial, "valid") for serial in valid])
    for _, sql in indexes:
        db.execute(sql)
    db.commit()
    db.execute("ANALYZE")
    db.close()
    return valid


async def _partitioned(stage: str, n: int, partitions: int, revocations: int, directory: Path) -> dict:
    """One stage in its own process: "fill" the database, the "full" CRL, the "partitions"."""
    from crl.config import CrlSettings
    from crl.partitions import PartitionSet
    from crl.publish import Publisher
    from scep_server.ca import inventory
    from scep_server.ca.authority import partition_cdp_url
    from scep_server.ca.revocation import RevocationService
    from scep_server.crlwiring.service import key_ops_signer
    from scep_server.runtime import initialise, load_cas
    from trustkit.clock import utcnow
    from trustkit.db import create_engine

    settings = _bench_settings(directory)
    if stage == "fill":
        started = time.perf_counter()
        await initialise(settings)
        valid = _fill(settings, n, partitions, revocations)
        (directory / "valid.json").write_text(json.dumps(valid))
        return {"fill_s": time.perf_counter() - started}
    ca = next(iter(load_cas(settings).values()))
    engine = create_engine(settings.database_url())
    crl_settings = CrlSettings(coalesce_delay=timedelta(0), poll_interval=timedelta(seconds=60))
    signer = key_ops_signer(ca)
    issuer = Issuer.from_certificate(ca.cert)
    try:
        if stage == "full":
            async def full_source(at):
                async with engine.connect() as conn:
                    return await inventory.revoked_entries(conn, ca.name, now=at)

            full = Publisher(ca.name, issuer=issuer, signer=signer, source=full_source, engine=engine,
                             settings=crl_settings)
            started = time.perf_counter()
            first = await full.publish_now()
            full_s = time.perf_counter() - started
            started = time.perf_counter()
            await full.publish_now()  # the entry cache is warm: what a re-sign after a change costs
            return {"full_s": full_s, "full_warm_s": time.perf_counter() - started, "full_bytes": len(first.der),
                    "full_entries": first.entries, "full_peak_rss_mb": rss_mb()}

        async def source(partition, at):
            async with engine.connect() as conn:
                return await inventory.revoked_entries(conn, ca.name, now=at, partition=partition)

        async def changed(since):
            async with engine.connect() as conn:
                return await inventory.partition_changes(conn, ca.name, since=since)

        async def listed(serials, at):
            async with engine.connect() as conn:
                return await inventory.listed_entries(conn, ca.name, serials, now=at)

        valid = json.loads((directory / "valid.json").read_text())
        parts = PartitionSet(ca.name, partitions, url_for=lambda p: partition_cdp_url("http://bench", ca.name, p),
                             issuer=issuer, signer=signer, source=source, changed=changed, engine=engine,
                             settings=crl_settings, clock=utcnow, listed=listed)
        revocation = RevocationService(engine, on_status_change=lambda _ca: parts.notify_changed())
        started = time.perf_counter()
        await parts.publish_due()
        all_parts_s = time.perf_counter() - started
        # a revocation, then the partition set's look for changes: only that partition is re-signed, from its CRL
        # signed here and the changed certificate's row
        await parts.publish_changed()  # the first look (nothing to do)
        samples = []
        for _ in range(5):  # the median of five
            await revocation.revoke(format(valid.pop(), "x"), actor="bench")
            started = time.perf_counter()
            signed = await parts.publish_changed()
            samples.append(time.perf_counter() - started)
            assert len(signed) == 1, signed
        full_samples = []
        for _ in range(3):  # and one partition read and encoded in full, as the schedule re-signs it
            started = time.perf_counter()
            await parts.publishers[0].publish_now()
            full_samples.append(time.perf_counter() - started)
        # revocations one after another, each timed from the call until its partition's served CRL (what
        # /crl/{ca}/{p}.crl sends) lists it, with the partition set's own loop doing the work; the time is taken
        # when the CRL is served, before this script parses it to see whether it lists the serial
        await parts.start()
        latencies = []
        for serial in valid[:revocations]:
            pub = parts.publishers[serial % partitions]
            before = pub.current.number
            started = time.perf_counter()
            await revocation.revoke(format(serial, "x"), actor="bench")
            while True:
                crl = await pub.wait_newer(before, timeout=60)
                served = time.perf_counter()
                if crl.entries and serial in parse_crl(crl.der).index(offsets=False).codes:
                    break
                before = crl.number
            latencies.append(served - started)
        await parts.stop()
    finally:
        await engine.dispose()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    sizes = [pub.current.entries for pub in parts.publishers.values()]
    return {"all_partitions_s": all_parts_s, "partition_resign_s": sorted(samples)[2],
            "partition_full_resign_s": sorted(full_samples)[1],
            "partition_entries": [min(sizes), max(sizes)], "partition_bytes": len(parts.publishers[0].current.der),
            "revocations": len(latencies), "p50_s": pct(0.50), "p99_s": pct(0.99),
            "max_s": latencies[-1] if latencies else None, "peak_rss_mb": rss_mb()}


def partitioned_table(n: int, partitions: int, revocations: int) -> dict:
    r = {"entries": n, "partitions": partitions}
    with tempfile.TemporaryDirectory(prefix="crl-bench-parts-") as tmp:
        for stage in ("fill", "partitions", "full"):
            out = subprocess.run([sys.executable, __file__, "--child-partitioned", stage, str(n), str(partitions),
                                  str(revocations), tmp], check=True, capture_output=True, text=True).stdout
            r.update(json.loads(out.strip().splitlines()[-1]))
    print(f"Partitioned CRLs: {n:,} revoked certificates over {partitions} partitions "
          f"({r['partition_entries'][0]:,}-{r['partition_entries'][1]:,} entries each), SQLite, RSA-2048 CA; "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)")
    print(f"  database fill: {r['fill_s']:.1f} s")
    print(f"  partitions (one process): every partition once {r['all_partitions_s']:.2f} s; one partition re-signed "
          f"after a revocation (look for changes, read the changed row, splice, sign, self-check, record; median of "
          f"5): {r['partition_resign_s'] * 1000:.0f} ms; read and encoded in full, as scheduled (median of 3): "
          f"{r['partition_full_resign_s'] * 1000:.0f} ms; {r['partition_bytes']:,} bytes")
    print(f"  revocation -> its partition's served CRL, {r['revocations']} revocations one after another: "
          f"p50 {r['p50_s'] * 1000:.0f} ms, p99 {r['p99_s'] * 1000:.0f} ms, max {r['max_s'] * 1000:.0f} ms; "
          f"peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"  full CRL (another process): first publication {r['full_s']:.2f} s, re-sign with a warm entry cache "
          f"{r['full_warm_s']:.2f} s, {r['full_bytes']:,} bytes; peak RSS {r['full_peak_rss_mb']:.0f} MB")
    ratio = r["partition_resign_s"] / min(r["full_s"], r["full_warm_s"])
    full_ratio = r["partition_full_resign_s"] / min(r["full_s"], r["full_warm_s"])
    print(f"  targets: p99 < 1 s: {'met' if r['p99_s'] < 1 else 'MISSED'}; partition re-sign < 1/50 of the full "
          f"CRL's (best of its two): {ratio:.4f} {'met' if ratio < 1 / 50 else 'MISSED'} (read in full: "
          f"{full_ratio:.4f} {'met' if full_ratio < 1 / 50 else 'MISSED'}); partitions' peak < 1 GB: "
          f"{'met' if r['peak_rss_mb'] < 1024 else 'MISSED'}")
    print("RESULT " + json.dumps({"partitioned": r}))
    return r


# ---------------------------------------------------------------- parent

def make_ca(directory: Path) -> None:
    cnf = directory / "ca.cnf"
    cnf.write_text("[req]\ndistinguished_name=dn\nprompt=no\nx509_extensions=v3\n[dn]\nCN=Bench Device CA\n"
                   "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                   "subjectKeyIdentifier=hash\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                    "-config", "ca.cnf", "-days", "3650"], cwd=directory, check=True, capture_output=True)


def openssl_gencrl(n: int, directory: Path) -> tuple[float, bytes]:
    shutil.copy(directory / f"index-{n}.txt", directory / "index.txt")
    (directory / "crlnumber").write_text("03E8\n")
    (directory / "openssl-ca.cnf").write_text(
        "[ca]\ndefault_ca=d\n[d]\ndir=.\ndatabase=$dir/index.txt\ncrlnumber=$dir/crlnumber\ncertificate=$dir/ca.pem\n"
        "private_key=$dir/ca.key\ndefault_md=sha256\ncrl_extensions=ext\nunique_subject=no\n"
        "[ext]\nauthorityKeyIdentifier=keyid:always\n")
    started = time.perf_counter()
    subprocess.run(["openssl", "ca", "-gencrl", "-config", "openssl-ca.cnf", "-crl_lastupdate",
                    THIS_UPDATE.strftime("%y%m%d%H%M%SZ"), "-crl_nextupdate", NEXT_UPDATE.strftime("%y%m%d%H%M%SZ"),
                    "-out", "openssl.pem", "-batch"], cwd=directory, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    der = subprocess.run(["openssl", "crl", "-in", "openssl.pem", "-outform", "DER"], cwd=directory, check=True,
                         capture_output=True).stdout
    return seconds, der


def same_entries(ours: bytes, theirs: bytes) -> bool:
    """Both CRLs list the same serials with the same reasonCodes (order and hold instructions aside)."""
    a, b = parse_crl(ours).index().codes, parse_crl(theirs).index().codes
    return a.keys() == b.keys() and all((a[s] & 0xF) == (b[s] & 0xF) for s in a)


def checker_figures(der: bytes, cert_pem: bytes, n: int) -> dict:
    from crl.check import CrlChecker

    async def run() -> dict:
        checker = CrlChecker(logger=_Quiet())
        checker.add_ca(cert_pem, name="bench", require_cdp=False)
        started = time.perf_counter()
        outcome = await checker.install("bench", "http://127.0.0.1/bench.crl", der)
        parse_s = time.perf_counter() - started
        assert outcome.ok, outcome
        listed = list(parse_crl(der).index().serials())[: min(n, 500_000)]
        rnd = random.Random(1)
        probes = listed + [rnd.getrandbits(127) for _ in range(len(listed))]
        rnd.shuffle(probes)
        check = checker.check_serial
        best = float("inf")
        for _ in range(3):  # best of three passes: the machine is shared
            started = time.perf_counter()
            for s in probes:
                check("bench", s)
            best = min(best, time.perf_counter() - started)
        codes = parse_crl(der).index(offsets=False).codes
        started = time.perf_counter()
        for s in probes:
            codes.get(s)
        raw = len(probes) / (time.perf_counter() - started)
        return {"parse_s": parse_s, "lookups_per_s": len(probes) / best, "raw_lookups_per_s": raw}

    return asyncio.run(run())


class _Quiet:
    def info(self, *a, **k): ...

    def warning(self, *a, **k): ...

    def error(self, *a, **k): ...


def cryptography_lookup_ms(der: bytes) -> float:
    crl = x509.load_der_x509_crl(der)
    started = time.perf_counter()
    for s in (1, 2, 3):
        crl.get_revoked_certificate_by_serial_number(s)
    return (time.perf_counter() - started) / 3 * 1000


def build_table(sizes: list[int], directory: Path) -> list[dict]:
    cert_pem = (directory / "ca.pem").read_bytes()
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--child-build", str(n), str(directory)], check=True,
                             capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["entries"] = n
        row["openssl_s"], theirs = openssl_gencrl(n, directory)
        ours = (directory / f"ours-{n}.der").read_bytes()
        row["openssl_bytes"] = len(theirs)
        row["same_entries"] = same_entries(ours, theirs)
        row.update(checker_figures(ours, cert_pem, n))
        row["crypto_lookup_ms"] = cryptography_lookup_ms(ours)
        rows.append(row)
        print(f"  {n:>9,} entries measured", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------- serving

async def _record_crl(settings, n: int) -> bytes:
    """Initialise a server data directory (SQLite) and record a CRL of `n` entries signed by its CA, the way a
    publisher records one: the server adopts it at start-up and serves it."""
    from trustkit.der import utc_seconds
    from crl.store import CrlStateStore
    from scep_server.crlwiring.service import key_ops_signer
    from scep_server.runtime import initialise, load_cas
    from trustkit.db import create_engine

    await initialise(settings)
    ca = next(iter(load_cas(settings).values()))
    engine = create_engine(settings.database_url())
    try:
        store = CrlStateStore(engine, ca.name)
        number, this_update = await store.allocate(utc_seconds(datetime.now(UTC)))
        this_update = utc_seconds(this_update)
        next_update = this_update + timedelta(days=7)
        der = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=key_ops_signer(ca), number=number,
                        this_update=this_update, next_update=next_update, entries=entries_for(n))
        assert await store.save(number=number, this_update=this_update, next_update=next_update, der=der,
                                sha256=hashlib.sha256(der).hexdigest(), entries=n, published_at=this_update,
                                published_by="bench")
    finally:
        await engine.dispose()
    return der


def serve(port: int, data_dir: str, n: int) -> None:
    """The server's own application (create_app: its middlewares, the CRL feature's /crl/{ca}.crl over the
    running publishers) on a data directory whose recorded CRL has `n` entries, plus a bare handler returning
    the same bytes from a plain route of the same application."""
    from aiohttp import web

    from scep_server.app import create_app
    from scep_server.config import load_settings

    settings = load_settings(None, data_dir=data_dir, server={"listen": f"127.0.0.1:{port}"},
                             ca={"key_size": 2048}, log={"level": "warning"})
    der = asyncio.run(_record_crl(settings, n))

    async def bare(request: web.Request) -> web.Response:
        return web.Response(body=der, content_type="application/pkix-crl")

    app = create_app(settings)
    app.router.add_get("/bare/default.crl", bare)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def wrk(url: str, seconds: float, connections: int = 32) -> float:
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", url], check=True,
                         capture_output=True, text=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def serving_table(directory: Path, seconds: float) -> list[dict]:
    if shutil.which("wrk") is None:
        print("wrk is not installed: serving comparison skipped", file=sys.stderr)
        return []
    rows = []
    for n in (100, 20_000):
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(directory / f"server-{n}"),
                                 str(n)])
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/crl/default.crl", timeout=1) as resp:
                        der = resp.read()
                    if len(x509.load_der_x509_crl(der)) == n:
                        break
                except (OSError, ValueError):
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not serve the {n}-entry CRL")
                time.sleep(0.1)
            base = f"http://127.0.0.1:{port}"
            wrk(base + "/crl/default.crl", 1)  # warm-up
            bare, ours = [], []
            for _ in range(3):  # interleaved, best of three, so drift and neighbours hit both alike
                bare.append(wrk(base + "/bare/default.crl", seconds))
                ours.append(wrk(base + "/crl/default.crl", seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        rows.append({"entries": n, "bytes": len(der), "bare": max(bare), "ours": max(ours)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--wrk-seconds", type=float, default=3.0)
    ap.add_argument("--no-serving", action="store_true")
    ap.add_argument("--child-build", nargs=2, metavar=("N", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--serve", nargs=3, metavar=("PORT", "DATA_DIR", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--partitioned", type=int, metavar="N", help="partitioned CRLs with N revoked certificates")
    ap.add_argument("--partitions", type=int, default=100)
    ap.add_argument("--revocations", type=int, default=100)
    ap.add_argument("--child-partitioned", nargs=5, metavar=("STAGE", "N", "PARTITIONS", "REVOCATIONS", "DIR"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_partitioned:
        stage, n, parts, revs, where = args.child_partitioned
        return child_partitioned(stage, int(n), int(parts), int(revs), Path(where))
    if args.partitioned:
        partitioned_table(args.partitioned, args.partitions, args.revocations)
        return
    if args.child_build:
        return child_build(int(args.child_build[0]), Path(args.child_build[1]))
    if args.serve:
        return serve(int(args.serve[0]), args.serve[1], int(args.serve[2]))

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="crl-bench-") as tmp:
        directory = Path(tmp)
        make_ca(directory)
        print(f"CRL benchmark: RSA-2048 CA, sha256WithRSAEncryption; Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPU(s); reasons mixed none/keyCompromise/superseded/cessationOfOperation/"
              f"certificateHold")
        rows = build_table(sizes, directory)
        print()
        print(f"{'entries':>9} | {'build+sign s':>12} | {'DER bytes':>11} | {'peak RSS MB':>11} | {'input MB':>8} | "
              f"{'openssl ca s':>12} | {'ours/openssl':>12} | {'same':>4} | {'re-sign s':>9} | {'re-sign MB':>10} | "
              f"{'checker parse s':>15} | {'lookups/s':>10} | {'dict get/s':>10} | {'crypto miss ms':>14}")
        for r in rows:
            print(f"{r['entries']:>9,} | {r['build_s']:>12.3f} | {r['der_bytes']:>11,} | {r['peak_rss_mb']:>11.0f} | "
                  f"{r['input_rss_mb']:>8.0f} | {r['openssl_s']:>12.3f} | {r['build_s'] / r['openssl_s']:>12.3f} | "
                  f"{'yes' if r['same_entries'] else 'NO':>4} | {r['resign_s']:>9.3f} | {r['resign_peak_rss_mb']:>10.0f} | "
                  f"{r['parse_s']:>15.3f} | "
                  f"{r['lookups_per_s']:>10,.0f} | {r['raw_lookups_per_s']:>10,.0f} | {r['crypto_lookup_ms']:>14.1f}")
        print("  build+sign: entries -> signed DER (cold, no entry cache); peak RSS: whole process incl. the input "
              "list; re-sign: one more revocation with the entry cache warm (re-sign MB: peak RSS with the cache); checker parse: parse + signature check "
              "+ index (CrlChecker.install); lookups: CrlChecker.check_serial, half hits, best of 3 passes; dict get: the bare index lookup; crypto miss: cryptography's "
              "get_revoked_certificate_by_serial_number for an absent serial; same: identical serials and reasons "
              "in both CRLs")
        big = [r for r in rows if r["entries"] >= 1_000_000]
        for r in big:
            print(f"  targets at {r['entries']:,}: build+sign <= 0.5 x openssl: "
                  f"{'met' if r['build_s'] <= 0.5 * r['openssl_s'] else 'MISSED'}; peak < 1 GB: "
                  f"{'met' if r['peak_rss_mb'] < 1024 else 'MISSED'}; parse+index < 2 s: "
                  f"{'met' if r['parse_s'] < 2 else 'MISSED'}; lookups > 1M/s: "
                  f"{'met' if r['lookups_per_s'] > 1e6 else 'MISSED'}")
        serving = []
        if not args.no_serving:
            print()
            serving = serving_table(directory, args.wrk_seconds)
            if serving:
                print(f"Serving (wrk -t1 -c32 -d{args.wrk_seconds:g}s, best of 3 interleaved, server and wrk on the same host)")
                print(f"{'entries':>9} | {'bytes':>9} | {'bare handler req/s':>18} | {'/crl/{ca}.crl req/s':>19} | "
                      f"{'ratio':>6}")
                for r in serving:
                    print(f"{r['entries']:>9,} | {r['bytes']:>9,} | {r['bare']:>18,.0f} | {r['ours']:>19,.0f} | "
                          f"{r['ours'] / r['bare']:>6.2f}")
                print("  target: ratio >= 0.80 ("
                      + ("met" if all(r["ours"] >= 0.8 * r["bare"] for r in serving) else "MISSED") + ")")
        # the figures above in one line for tools (bench/compare.py)
        print("RESULT " + json.dumps({"build": rows, "serving": serving}))


if __name__ == "__main__":
    main()
