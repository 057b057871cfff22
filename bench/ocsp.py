"""OCSP benchmark, all in one run on 127.0.0.1:

- cached: GET /ocsp/{ca}/{request} without nonce (a pre-signed response) vs a bare aiohttp handler returning
  the same bytes from a plain route of the same application (wrk, interleaved, best of the rounds): the ratio;
- fresh: the same request with a nonce (signed for each request) vs the RSA ceiling (RSA-2048 PKCS#1 v1.5
  signatures per second of one process, the server being one process);
- `openssl ocsp -index ... -port` (which signs every answer) on the same certificates and request;
- revoke -> revoked: an administrator's revoke through the API, then GETs until the answer is revoked (same
  instance), and a revoke written by another process (this one) on the same database (another instance).

    PYTHONPATH=. .venv/bin/python bench/ocsp.py                   # 3 s per wrk run, 2 rounds (about 45 s)
    PYTHONPATH=. .venv/bin/python bench/ocsp.py --seconds 2 --rounds 1
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from measure import free_port  # noqa: E402  (bench/measure.py)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.x509 import ocsp  # noqa: E402

CERTS = 20


def _settings(data_dir: str, port: int):
    from scep_server.config import load_settings

    return load_settings(None, data_dir=data_dir, server={"listen": f"127.0.0.1:{port}"}, ca={"key_size": 2048},
                         log={"level": "warning"})


async def _prepare(settings) -> dict:
    """A data directory with its CA, CERTS certificates in the inventory and an admin token."""
    from scep_server.ca.authority import load_ca, random_serial
    from scep_server.ca.inventory import certificate_row, public_key_sha256
    from scep_server.ca.keys import load_or_create_passphrase
    from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
    from scep_server.runtime import initialise
    from scep_server.store.tables import certificates
    from scep_server.tokens import TokenStore
    from trustkit.clock import utcnow
    from trustkit.db import create_engine, writer

    await initialise(settings)
    passphrase = load_or_create_passphrase(settings.ca.passphrase_env, settings.passphrase_path())
    ca = load_ca(settings.ca_dir(), name=settings.ca.name, passphrase=passphrase,
                 base_url=settings.server.public_base_url())
    engine = create_engine(settings.database_url())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name.from_rfc4514_string("CN=bench")).sign(key, hashes.SHA256())
    now = utcnow()
    pems = []
    try:
        async with writer(engine).begin() as conn:
            for i in range(CERTS):
                cert = ca.issue(csr, IssuancePolicy(CertificateTemplate()), serial=random_serial(),
                                now=now - timedelta(minutes=1))
                der = cert.public_bytes(serialization.Encoding.DER)
                await conn.execute(certificates.insert().values(certificate_row(
                    cert, der, ca.name, "default", f"bench-{i}", public_key_sha256(cert.public_key()), now)))
                pems.append(cert.public_bytes(serialization.Encoding.PEM).decode())
        tokens = TokenStore(engine)
        _id, token = await tokens.create(scope="admin", name="bench", now=now)
        await tokens.close()
    finally:
        await engine.dispose()
    return {"certs": pems, "token": token}


def serve(port: int, data_dir: str, bare_path: str) -> None:
    """The server's own application plus a bare handler returning the bytes in `bare_path`."""
    from aiohttp import web

    from scep_server.app import create_app

    body = Path(bare_path).read_bytes()

    async def bare(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/ocsp-response")

    app = create_app(_settings(data_dir, port))
    app.router.add_get("/bare/ocsp", bare)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wrk(url: str, seconds: float, connections: int = 16) -> float:
    import re

    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", url],
                         check=True, capture_output=True, text=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} failed answers")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def closing_client(url: str, seconds: float, threads: int = 4) -> float:
    """Answers per second to `threads` clients each opening a connection per request (what `openssl ocsp
    -port` serves: one HTTP/1.0 exchange per connection, which wrk cannot drive)."""
    from concurrent.futures import ThreadPoolExecutor

    def worker() -> int:
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Connection": "close"}), timeout=5) as r:
                r.read()
            n += 1
        return n

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: worker(), range(threads)))
    return total / (time.perf_counter() - started)


def rsa_ceiling(seconds: float) -> float:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"x" * 300
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        n += 1
    return n / (time.perf_counter() - started)


def _request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bool) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce:
        b = b.add_extension(x509.OCSPNonce(b"0123456789abcdef"), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def _path(der: bytes) -> str:
    return quote(base64.b64encode(der).decode(), safe="")


def _fetch(url: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read()


def _status(url: str) -> ocsp.OCSPCertStatus:
    return ocsp.load_der_ocsp_response(_fetch(url)).certificate_status


def _wait_revoked(url: str, timeout: float = 5.0) -> float:
    started = time.perf_counter()
    while _status(url) is not ocsp.OCSPCertStatus.REVOKED:
        if time.perf_counter() - started > timeout:
            raise RuntimeError("still good after the revocation")
        time.sleep(0.002)
    return time.perf_counter() - started


def openssl_responder(directory: Path, ca_dir: Path, certs: list[x509.Certificate], port: int) -> subprocess.Popen:
    """`openssl ocsp` as a responder over an index of the same certificates, signing with the same delegated
    signer (its key written unencrypted for it)."""
    lines = []
    for i, cert in enumerate(certs):
        expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        serial = f"{cert.serial_number:X}"
        serial = "0" * (len(serial) % 2) + serial
        lines.append(f"V\t{expiry}\t\t{serial}\tunknown\t/CN=bench-{i}\n")  # names unique, as `openssl ca` keeps them
    (directory / "index.txt").write_text("".join(lines))
    return subprocess.Popen(["openssl", "ocsp", "-index", str(directory / "index.txt"), "-port", str(port),
                             "-rsigner", str(ca_dir / "ocsp.crt"), "-rkey", str(directory / "ocsp-plain.key"),
                             "-CA", str(ca_dir / "ca.crt"), "-nmin", "60", "-ignore_err"],
                            stdout=subprocess.DEVNULL, stderr=open(directory / "openssl.log", "wb"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each wrk run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2])
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: wrk)", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="bench-ocsp-"))
    port = free_port()
    data_dir = directory / "data"
    settings = _settings(str(data_dir), port)
    prepared = asyncio.run(_prepare(settings))
    certs = [x509.load_pem_x509_certificate(p.encode()) for p in prepared["certs"]]
    ca_dir = settings.ca_dir()
    issuer = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    base = f"http://127.0.0.1:{port}"
    plain, with_nonce = _request(certs[0], issuer, False), _request(certs[0], issuer, True)
    cached_url, fresh_url = f"{base}/ocsp/default/{_path(plain)}", f"{base}/ocsp/default/{_path(with_nonce)}"
    bare_file = directory / "bare.der"
    bare_file.write_bytes(b"")
    proc = openssl = None
    result: dict = {}
    try:
        # start once to let it issue its delegated signer and pre-sign; then again with the bare bytes in place
        for attempt in range(2):
            proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(data_dir), str(bare_file)])
            deadline = time.monotonic() + 60
            while True:
                try:
                    body = _fetch(cached_url)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the server did not start")
                    time.sleep(0.1)
            if attempt == 0:
                bare_file.write_bytes(body)
                stop(proc)
        for url in (cached_url, fresh_url):  # both answered good (OCSP failures are HTTP 200 too)
            answer = ocsp.load_der_ocsp_response(_fetch(url))
            assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL, (url, answer.response_status)
            assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        wrk(cached_url, 1)  # warm-up
        cached, bare, fresh, ceilings = [], [], [], []
        for _ in range(args.rounds):  # interleaved so that drift and neighbours hit each alike
            bare.append(wrk(f"{base}/bare/ocsp", args.seconds))
            cached.append(wrk(cached_url, args.seconds))
            fresh.append(wrk(fresh_url, args.seconds))
            ceilings.append(rsa_ceiling(args.seconds))
        ceiling = max(ceilings)

        # openssl's responder over the same certificates and signer
        from scep_server.ca.keys import FileKey, load_or_create_passphrase

        key = FileKey.load(ca_dir / "ocsp.key", load_or_create_passphrase(settings.ca.passphrase_env,
                                                                           settings.passphrase_path()))
        (directory / "ocsp-plain.key").write_bytes(key._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        oport = free_port()
        openssl = openssl_responder(directory, ca_dir, certs, oport)
        ourl = f"http://127.0.0.1:{oport}/{_path(plain)}"
        deadline = time.monotonic() + 20
        while True:
            try:
                assert ocsp.load_der_ocsp_response(_fetch(ourl)).certificate_status is ocsp.OCSPCertStatus.GOOD
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("openssl ocsp did not start")
                time.sleep(0.1)
        openssl_rate, ours_closing = [], []
        for _ in range(args.rounds):
            openssl_rate.append(closing_client(ourl, args.seconds))
            ours_closing.append(closing_client(cached_url, args.seconds))

        # revoke -> revoked, same instance (the API) and another process (a direct revoke on the database)
        same, other = [], []
        for cert in certs[1:6]:
            url = f"{base}/ocsp/default/{_path(_request(cert, issuer, False))}"
            assert _status(url) is ocsp.OCSPCertStatus.GOOD and _status(url) is ocsp.OCSPCertStatus.GOOD
            _fetch(f"{base}/api/v1/certificates/{cert.serial_number:x}/revoke", data=b'{"reason": "superseded"}',
                   headers={"Authorization": f"Bearer {prepared['token']}", "Content-Type": "application/json"})
            same.append(_wait_revoked(url))  # from the API's answer (the commit made) to the revoked answer
        for cert in certs[6:11]:
            url = f"{base}/ocsp/default/{_path(_request(cert, issuer, False))}"
            assert _status(url) is ocsp.OCSPCertStatus.GOOD and _status(url) is ocsp.OCSPCertStatus.GOOD
            other.append(asyncio.run(_revoke_elsewhere(settings, cert)) + _wait_revoked(url))
        result = {"bare_rps": max(bare), "cached_rps": max(cached), "cached_ratio": max(cached) / max(bare),
                  "fresh_rps": max(fresh), "rsa_ceiling": ceiling, "fresh_ratio": max(fresh) / ceiling,
                  "openssl_rps": max(openssl_rate), "ours_closing_rps": max(ours_closing), "revoke_same_ms": [round(s * 1000, 1) for s in same],
                  "revoke_other_ms": [round(s * 1000, 1) for s in other]}
    finally:
        for p in (proc, openssl):
            if p is not None:
                stop(p)
        if (directory / "openssl.log").exists():
            sys.stderr.write((directory / "openssl.log").read_text()[-2000:])
        shutil.rmtree(directory, ignore_errors=True)
    print(f"OCSP (wrk -t1 -c16 -d{args.seconds:g}s, best of {args.rounds} interleaved; server, wrk and openssl on one host)")
    print(f"  cached GET        {result['cached_rps']:>9,.0f} req/s   bare handler {result['bare_rps']:>9,.0f} req/s"
          f"   ratio {result['cached_ratio']:.2f}")
    print(f"  fresh (nonce)     {result['fresh_rps']:>9,.0f} req/s   RSA-2048 ceiling {result['rsa_ceiling']:>7,.0f}/s"
          f"   ratio {result['fresh_ratio']:.2f}")
    print(f"  openssl ocsp -index -port {result['openssl_rps']:>7,.0f} req/s   ours (cached GET) "
          f"{result['ours_closing_rps']:>7,.0f} req/s   (4 Python clients, a connection per request; openssl signs "
          "every answer)")
    print(f"  revoke -> revoked same instance (from the API's answer to the first revoked GET): median "
          f"{statistics.median(result['revoke_same_ms']):.1f} ms, max {max(result['revoke_same_ms']):.1f} ms")
    print(f"  revoke -> revoked written by another process: median "
          f"{statistics.median(result['revoke_other_ms']):.1f} ms, max {max(result['revoke_other_ms']):.1f} ms")
    print("RESULT " + json.dumps(result))
    return 0


async def _revoke_elsewhere(settings, cert: x509.Certificate) -> float:
    """Revoke through a RevocationService of this process (as another instance or the CLI would); the time
    the commit took."""
    from scep_server.ca.inventory import Reason
    from scep_server.ca.revocation import RevocationService
    from trustkit.db import create_engine

    engine = create_engine(settings.database_url())
    try:
        started = time.perf_counter()
        await RevocationService(engine).revoke(f"{cert.serial_number:x}", Reason.KEY_COMPROMISE, actor="cli:bench")
        return time.perf_counter() - started
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
