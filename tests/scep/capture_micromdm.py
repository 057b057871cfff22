"""Capture real micromdm scepclient 2.1.0 requests into fixtures/scep/micromdm/ (run once; not a test).

Run from the repository root: .venv/bin/python -m tests.scep.capture_micromdm
See fixtures/README.md for what each file is.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .capture_server import FIXTURES, CaptureCA
from .micromdm import Server, traditional_rsa_key

OUT = FIXTURES / "micromdm"


async def capture() -> None:
    scepclient = shutil.which("scepclient")
    if not scepclient:
        raise SystemExit("scepclient is not installed (Debian package 'scep')")
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("client.key", "client2.key"):
        if not (OUT / name).exists():
            traditional_rsa_key(OUT / name)
    ca = CaptureCA(challenge="secret")
    meta: dict = {"scepclient": "micromdm scepclient 2.1.0 (Debian package scep)", "captures": {}}
    async with Server(ca) as server:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "a"
            work.mkdir()
            shutil.copy(OUT / "client.key", work / "client.key")
            # 1. PKCSReq with the right challenge; our CertRep SUCCESS is accepted and client.pem written.
            run = await server.scepclient(scepclient, work, "-private-key", "client.key", "-challenge", "secret",
                                          "-cn", "dev1")
            assert run.returncode == 0 and (work / "client.pem").exists(), run.output
            (OUT / "pkcsreq.der").write_bytes(run.exchanges[-1].request)
            (OUT / "pkcsreq_certrep.der").write_bytes(run.exchanges[-1].reply)
            issued = x509.load_pem_x509_certificate((work / "client.pem").read_bytes())
            (OUT / "issued.pem").write_bytes(issued.public_bytes(serialization.Encoding.PEM))
            meta["captures"]["pkcsreq.der"] = {"command": "scepclient -private-key client.key -server-url URL "
                                               "-challenge secret -cn dev1", "log": run.output.splitlines()}
            # 2. RenewalReq signed by the issued certificate (scepclient sends 17 when given -certificate).
            (work / "csr.pem").unlink()
            shutil.copy(work / "client.pem", work / "issued.pem")
            run = await server.scepclient(scepclient, work, "-private-key", "client.key", "-certificate",
                                          "issued.pem", "-cn", "dev1")
            assert run.returncode == 0, run.output
            (OUT / "renewalreq.der").write_bytes(run.exchanges[-1].request)
            meta["captures"]["renewalreq.der"] = {"command": "scepclient -private-key client.key -certificate "
                                                  "issued.pem -server-url URL -cn dev1",
                                                  "log": run.output.splitlines()}
            # 3. PKCSReq with a wrong challenge from a second key in a fresh directory.
            work = Path(tmp) / "b"
            work.mkdir()
            shutil.copy(OUT / "client2.key", work / "client2.key")
            run = await server.scepclient(scepclient, work, "-private-key", "client2.key", "-challenge", "wrong",
                                          "-cn", "dev2")
            (OUT / "pkcsreq_wrong_challenge.der").write_bytes(run.exchanges[-1].request)
            meta["captures"]["pkcsreq_wrong_challenge.der"] = {
                "command": "scepclient -private-key client2.key -server-url URL -challenge wrong -cn dev2",
                "log": run.output.splitlines()}
    meta["operations"] = ca.operations
    (OUT / "captures.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {sorted(p.name for p in OUT.iterdir())}")


if __name__ == "__main__":
    asyncio.run(capture())
