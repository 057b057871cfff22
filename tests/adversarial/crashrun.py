"""kill -9 of a `scep-server serve` process under enrolment and OTP load, restarted on the same SQLite file.

Each cycle starts the server, runs SCEP enrolments (fresh keys, each retried with the same transaction
after a lost answer) and sign-in OTP verifications (per key, increasing counters, each OTP whose answer was
lost is sent again, and OTPs already accepted are replayed) at once, and kills the process with SIGKILL in
the middle. Between the kill and the next start the SQLite file itself is audited: every certificate and
every OTP acknowledged so far is durable, and an OTP committed whose answer the kill cut counts as accepted
(so that accepting its retry shows as accepting it twice). After the last cycle a clean server answers the
outstanding retries and replays, and then:

- every certificate a client received is in the inventory, byte for byte;
- no serial was handed out twice (a retried transaction gets its own certificate again, never another);
- no OTP was accepted twice, and every key's stored counter is at least its highest accepted OTP.

Used by tests/adversarial/test_crash.py (a few short cycles) and bench/crash.py (a longer run).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from otp import modhex
from otp.tables import otp_yubikeys
from otp.token import Token, build_otp
from scep_server.scep import ContentCipher, MessageType, PKIStatus, client
from trustkit.db import create_engine
from scep_server.store.tables import certificates

SERVER_ENV = {"SCEP_SERVER_LOG__LEVEL": "warning", "SCEP_SERVER_CA__KEY_SIZE": "2048"}


@dataclass
class Key:
    """A YubiKey emulation: its secrets and the next counter pair."""

    serial: int
    public_id: str
    private_id: bytes
    aes_key: bytes
    usage_ctr: int = 1
    session_use: int = 0

    def line(self) -> str:
        return f"{self.serial},{self.public_id},{self.private_id.hex()},{self.aes_key.hex()},000000000000,,"

    def next_otp(self) -> tuple[str, tuple[int, int]]:
        if self.session_use >= 0xFE:
            self.usage_ctr, self.session_use = self.usage_ctr + 1, 0
        self.session_use += 1
        tok = Token.create(private_id=self.private_id, usage_ctr=self.usage_ctr, timestamp=0x0F8D40 + self.session_use,
                           session_use=self.session_use, random=secrets.randbelow(0x10000))
        return build_otp(self.public_id, tok, self.aes_key), (self.usage_ctr, self.session_use)


@dataclass
class Tally:
    cycles: int = 0
    delivered: dict[str, bytes] = field(default_factory=dict)          # transaction id -> certificate DER
    serials_seen: Counter = field(default_factory=Counter)             # serial -> deliveries to distinct txids
    pending_enrolments: list = field(default_factory=list)             # (key, txid, request) whose answer was lost
    otp_accepted: Counter = field(default_factory=Counter)             # OTP -> times accepted
    otp_pair: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # OTP -> (key serial, ctr, use)
    otp_outstanding: list = field(default_factory=list)                # (user, OTP) whose answer was lost
    requests: int = 0
    lost_answers: int = 0
    committed_unanswered: int = 0                                      # OTPs committed whose answer a kill cut
    violations: list = field(default_factory=list)                     # found by the audits after each kill


class Server:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        cmd = [sys.executable, "-m", "scep_server.cli", "--data-dir", str(self.data_dir), "serve",
               "--listen", f"127.0.0.1:{self.port}", "--workers", "1"]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **SERVER_ENV}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stderr.close()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc.stderr.close()
            self.proc = None


class CrashRun:
    """State of one crash run in `data_dir` (SQLite, the embedded default)."""

    def __init__(self, data_dir: Path, port: int, rsa_keys: list[rsa.RSAPrivateKey], *, yubikeys: int = 4) -> None:
        self.data_dir = data_dir
        self.server = Server(data_dir, port)
        self.rsa_keys = list(rsa_keys)
        self.keys = [Key(serial=900_000 + i, public_id=modhex.encode(b"\xfe\x00" + (900_000 + i).to_bytes(4, "big")),
                         private_id=secrets.token_bytes(6), aes_key=secrets.token_bytes(16)) for i in range(yubikeys)]
        self.tally = Tally()
        self.admin = self.signin = self.challenge = ""
        self.ra_der = b""

    # ---- set-up -------------------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """First start in this process (CA, schema, default profile, KEK), tokens, the YubiKeys imported."""
        from otp.service import OtpService
        from scep_server.config import load_settings
        from scep_server.runtime import initialise, open_runtime

        settings = load_settings(None, data_dir=str(self.data_dir), ca={"key_size": 2048}, log={"level": "warning"})
        await initialise(settings)
        async with open_runtime(settings) as rt:
            now = rt.clock()
            self.admin = (await rt.tokens.create(scope="admin", name="crash-admin", now=now))[1]
            self.signin = (await rt.tokens.create(scope="signin", name="crash-signin", now=now))[1]
            otp: OtpService = rt.otp
            result = await otp.import_secrets(("\n".join(k.line() for k in self.keys) + "\n").encode(), actor="crash")
            assert result.ok, result.to_json()
            self.ra_der = rt.cas["default"].ra_cert_der
        self.challenge = (self.data_dir / "default-challenge.txt").read_text().strip()

    # ---- load ------------------------------------------------------------------------------------------------

    def _request(self, key: rsa.RSAPrivateKey, txid: str) -> bytes:
        return client.build_request(
            MessageType.PKCS_REQ, content=client.make_csr(key, txid, self.challenge),
            signer_cert_der=client.make_self_signed_signer(key, cn=txid), signer_key=key,
            recipient_cert_der=self.ra_der, transaction_id=txid, sender_nonce=os.urandom(16),
            cek=os.urandom(16), iv=os.urandom(16), cipher=ContentCipher.AES128_CBC)

    async def _enrol(self, session: aiohttp.ClientSession, key, txid: str, body: bytes) -> bool:
        """Send one PKCSReq; True when its answer arrived (a certificate is then recorded as delivered)."""
        self.tally.requests += 1
        try:
            async with session.post(self.server.url + "/scep/default?operation=PKIOperation", data=body) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
            self.tally.lost_answers += 1
            return False
        assert status == 200, (status, data[:300])
        rep = await asyncio.to_thread(client.parse_cert_rep, data, key, ra_cert_der=self.ra_der)
        assert rep.status is PKIStatus.SUCCESS, (txid, rep.fail_info, rep.fail_text)
        der = rep.certs[0]
        previous = self.tally.delivered.get(txid)
        if previous is None:
            self.tally.delivered[txid] = der
            self.tally.serials_seen[x509.load_der_x509_certificate(der).serial_number] += 1
        else:
            assert previous == der, f"transaction {txid} answered with two different certificates"
        return True

    async def _verify(self, session: aiohttp.ClientSession, user: str, otp: str) -> bool | None:
        """One sign-in verification: True accepted, False refused, None when the answer was lost."""
        self.tally.requests += 1
        try:
            async with session.post(self.server.url + "/api/v1/otp/verify", json={"user": user, "otp": otp},
                                    headers={"Authorization": "Bearer " + self.signin}) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, json.JSONDecodeError):
            self.tally.lost_answers += 1
            return None
        assert status < 500, (status, body)
        accepted = status == 200 and body.get("status") == "OK"
        if accepted:
            self.tally.otp_accepted[otp] += 1
        return accepted

    async def _enrolment_loop(self, session, stop: asyncio.Event) -> None:
        while not stop.is_set() and self.rsa_keys:
            key = self.rsa_keys.pop()
            txid = f"crash-{secrets.token_hex(6)}"
            body = await asyncio.to_thread(self._request, key, txid)
            if not await self._enrol(session, key, txid, body):
                self.tally.pending_enrolments.append((key, txid, body))
                return

    async def _otp_loop(self, session, key: Key, stop: asyncio.Event) -> None:
        user = f"user-{key.serial}"
        accepted: list[str] = []
        while not stop.is_set():
            otp, pair = key.next_otp()
            self.tally.otp_pair[otp] = (key.serial, *pair)
            result = await self._verify(session, user, otp)
            if result is None:
                self.tally.otp_outstanding.append((user, otp))
                return
            if result:
                accepted.append(otp)
            if accepted and random.random() < 0.1:  # a replay of an accepted OTP, while the server runs
                await self._verify(session, user, random.choice(accepted))

    async def _settle(self, session) -> None:
        """Retry what a kill interrupted: the same enrolments, the same OTPs, then replays of accepted OTPs."""
        pending, self.tally.pending_enrolments = self.tally.pending_enrolments, []
        for key, txid, _lost in pending:
            body = await asyncio.to_thread(self._request, key, txid)  # the same transaction, a fresh senderNonce
            if not await self._enrol(session, key, txid, body):
                self.tally.pending_enrolments.append((key, txid, body))
        outstanding, self.tally.otp_outstanding = self.tally.otp_outstanding, []
        for user, otp in outstanding:
            if await self._verify(session, user, otp) is None:
                self.tally.otp_outstanding.append((user, otp))
        for otp in random.sample(sorted(self.tally.otp_accepted), min(8, len(self.tally.otp_accepted))):
            serial = self.tally.otp_pair[otp][0]
            await self._verify(session, f"user-{serial}", otp)

    async def cycle(self, *, load_seconds: float, enrolers: int = 4) -> None:
        """Start, settle what the last kill left, load, kill -9 in the middle of the load."""
        await asyncio.to_thread(self.server.start)
        stop = asyncio.Event()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await self._settle(session)
            tasks = [asyncio.create_task(self._enrolment_loop(session, stop)) for _ in range(enrolers)]
            tasks += [asyncio.create_task(self._otp_loop(session, key, stop)) for key in self.keys]
            await asyncio.sleep(load_seconds * random.uniform(0.6, 1.0))
            await asyncio.to_thread(self.server.kill9)
            stop.set()
            await asyncio.gather(*tasks)
        await self._audit()
        self.tally.cycles += 1

    async def finish(self) -> None:
        """A clean start that answers every outstanding retry and replay, then a clean stop."""
        await asyncio.to_thread(self.server.start)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                await self._settle(session)
                # every accepted OTP, replayed once more against the restarted server
                for otp in sorted(self.tally.otp_accepted):
                    await self._verify(session, f"user-{self.tally.otp_pair[otp][0]}", otp)
        finally:
            await asyncio.to_thread(self.server.stop)
        assert not self.tally.pending_enrolments and not self.tally.otp_outstanding

    # ---- verdict ---------------------------------------------------------------------------------------------

    async def _read_db(self) -> tuple[dict[str, bytes], dict[int, tuple[int, int]]]:
        """(serial -> certificate DER, YubiKey serial -> stored counter pair), straight from the SQLite file."""
        engine = create_engine(f"sqlite+aiosqlite:///{(self.data_dir / 'scep.db').resolve()}")
        try:
            async with engine.connect() as conn:
                inventory = {r.serial: r.der for r in await conn.execute(sa.select(certificates.c.serial,
                                                                                    certificates.c.der))}
                counters = {r.serial: (r.usage_ctr, r.session_use) for r in await conn.execute(
                    sa.select(otp_yubikeys.c.serial, otp_yubikeys.c.usage_ctr, otp_yubikeys.c.session_use))}
        finally:
            await engine.dispose()
        return inventory, counters

    async def _audit(self) -> None:
        """Between a kill and the next start, on the file itself: every acknowledged certificate and OTP is
        durable; an OTP whose answer was cut but which was committed counts as accepted (its retry must fail)."""
        inventory, counters = await self._read_db()
        t = self.tally
        for txid, der in t.delivered.items():
            if inventory.get(format(x509.load_der_x509_certificate(der).serial_number, "x")) != der:
                t.violations.append(f"certificate of {txid} delivered but not in the inventory after a kill")
        for otp in t.otp_accepted:
            serial, *pair = t.otp_pair[otp]
            if counters[serial] < tuple(pair):
                t.violations.append(f"OTP {otp} accepted but the stored counter {counters[serial]} is below it")
        for _user, otp in t.otp_outstanding:
            serial, *pair = t.otp_pair[otp]
            if counters[serial] >= tuple(pair) and t.otp_accepted[otp] == 0:
                t.otp_accepted[otp] += 1  # committed, unanswered: accepting its retry would accept it twice
                t.committed_unanswered += 1

    async def check(self) -> dict[str, int]:
        inventory, counters = await self._read_db()
        t = self.tally
        lost = [txid for txid, der in t.delivered.items()
                if inventory.get(format(x509.load_der_x509_certificate(der).serial_number, "x")) != der]
        duplicates = [s for s, n in t.serials_seen.items() if n > 1]
        twice = [otp for otp, n in t.otp_accepted.items() if n > 1]
        behind = [otp for otp in t.otp_accepted if counters[t.otp_pair[otp][0]] < t.otp_pair[otp][1:]]
        return {"cycles": t.cycles, "delivered": len(t.delivered), "lost": len(lost), "duplicate_serials": len(duplicates),
                "otp_accepted": len(t.otp_accepted), "otp_accepted_twice": len(twice),
                "otp_counter_behind": len(behind), "requests": t.requests, "lost_answers": t.lost_answers,
                "committed_unanswered": t.committed_unanswered, "violations": len(t.violations)}


def summary(figures: dict[str, int]) -> str:
    return (f"{figures['cycles']} cycles, {figures['delivered']} certificates delivered, {figures['lost']} lost, "
            f"{figures['duplicate_serials']} duplicate serials, {figures['otp_accepted_twice']} OTP accepted twice "
            f"({figures['otp_accepted']} OTPs accepted, {figures['otp_counter_behind']} stored counters behind an "
            f"accepted OTP; {figures['requests']} requests, {figures['lost_answers']} answers cut by a kill, "
            f"{figures['committed_unanswered']} of them OTPs committed before the kill; "
            f"{figures['violations']} violations found between a kill and the next start)")
