"""A running server whose token goes away and comes back: /readyz and the token metric follow it, an enrolment
meanwhile is a 503 (never a hang nor a 500), and the same request succeeds once the token is back."""
from __future__ import annotations

import asyncio
import shutil
import subprocess

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from scep_server.ca.pkcs11 import _call_lock
from scep_server.ca.tokencheck import TokenCheck
from scep_server.scep import MessageType, PKIStatus, client
from tests.crlwiring.conftest import _request, enrol_with_codec, ra_and_ca, scep_operation, wait_for
from tests.server import start_app


async def readyz(session: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with session.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


def token_ready(session: aiohttp.ClientSession, url: str):
    """A probe for wait_for: /readyz answers 200 with its ca.token check ok."""
    async def ready() -> bool:
        status, body = await readyz(session, url)
        return status == 200 and body["checks"]["ca.token"] == "ok"
    return ready


async def token_metric(session: aiohttp.ClientSession, url: str, label: str) -> str | None:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    prefix = f'ca_pkcs11_token_available{{token="{label}"}} '
    return next((line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)), None)


async def test_readiness_and_enrolment_follow_the_token(aiohttp_server, tmp_path, db_url, softhsm):
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(key_type="ec-p256"))
    runtime = server.runtime
    pool = runtime.cas["default"].key.pool
    assert runtime.cas["default"].ra_key.pool is pool
    pool.backoff = (0.2, 0.2)
    check = runtime.readiness["ca.token"]
    assert isinstance(check, TokenCheck)
    check.ttl = 0.1
    url = server.url
    async with aiohttp.ClientSession() as session:
        ready = token_ready(session, url)
        await wait_for(ready, timeout=10, interval=0.1)  # the first CRL signed (in the token), the token probed
        assert await token_metric(session, url, softhsm.label) == "1.0"
        await enrol_with_codec(session, url, server.challenge(), "before")

        # the token is removed (its directory kept aside, as a restarted HSM keeps its keys)
        tokens, saved = softhsm.directory / "tokens", softhsm.directory / "saved"
        shutil.copytree(tokens, saved)
        env = {"SOFTHSM2_CONF": str(softhsm.directory / "softhsm2.conf"), "PATH": "/usr/bin:/bin"}
        with _call_lock(softhsm.module):
            subprocess.run(["softhsm2-util", "--delete-token", "--token", softhsm.label], check=True,
                           capture_output=True, env=env)

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ra_der, _ = await ra_and_ca(session, url)  # GetCACert needs no key: still served
        request = _request(key, ra_der, MessageType.PKCS_REQ, client.make_csr(key, "during", server.challenge()),
                           client.make_self_signed_signer(key))
        async with session.post(f"{url}/scep/default?operation=PKIOperation", data=request) as resp:
            assert resp.status == 503, await resp.text()
            problem = await resp.json(content_type=None)
            assert problem["code"] == "token_unavailable" and softhsm.label in problem["detail"]
            assert resp.headers["Retry-After"]
        await asyncio.sleep(0.15)
        status, body = await readyz(session, url)
        assert status == 503 and body["checks"]["ca.token"] == "failed", body
        assert await token_metric(session, url, softhsm.label) == "0.0"

        # the token is back: a probe reopens the sessions, readiness returns without an enrolment first
        shutil.rmtree(tokens)
        shutil.copytree(saved, tokens)

        await wait_for(ready, timeout=10, interval=0.1)
        assert pool.reconnects == 1
        assert await token_metric(session, url, softhsm.label) == "1.0"
        # the request refused meanwhile succeeds now (its failure was not remembered), and so does a new one
        rep = await scep_operation(session, url, request, key, ra_der)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        await enrol_with_codec(session, url, server.challenge(), "after")


async def test_the_token_check_probes_at_most_once_per_ttl_and_bounds_a_slow_probe():
    class Pool:
        def __init__(self, answer: str, delay: float = 0.0):
            self.answer, self.delay, self.probes = answer, delay, 0

        def probe(self, timeout: float) -> str:
            import time

            self.probes += 1
            time.sleep(self.delay)
            return self.answer

    now = [0.0]
    fine, away = Pool("ok"), Pool("error: PKCS#11 token 't' is unavailable")
    check = TokenCheck(lambda: [fine], ttl=5.0, clock=lambda: now[0])
    assert check.available is None
    assert await asyncio.gather(*(check() for _ in range(5))) == ["ok"] * 5
    assert fine.probes == 1 and check.available is True
    now[0] = 4.9
    assert await check() == "ok" and fine.probes == 1
    now[0] = 5.0
    assert await check() == "ok" and fine.probes == 2

    both = TokenCheck(lambda: [fine, away], clock=lambda: now[0])
    assert await both() == "error: PKCS#11 token 't' is unavailable" and both.available is False

    slow = TokenCheck(lambda: [Pool("ok", delay=0.8)], timeout=0.1, clock=lambda: now[0])
    assert (await slow()).startswith("error: the PKCS#11 token did not answer within")


async def test_a_token_that_answers_an_error_to_a_signature_is_a_503_and_not_ready_until_it_signs(
        aiohttp_server, tmp_path, db_url, softhsm, monkeypatch):
    """The token is there but answers CKR_GENERAL_ERROR to the CA key's signatures: an enrolment is a 503
    `ca_key_failed` (never a 500), logged and counted, readiness fails; once the key signs again a probe clears
    it and the same request succeeds."""
    import pkcs11
    import structlog

    from scep_server.ca.pkcs11 import SessionPool

    failing = {"on": False}

    class Erring:
        def __init__(self, key):
            self._key = key

        def sign(self, *args, **kwargs):
            if failing["on"]:
                raise pkcs11.GeneralError()
            return self._key.sign(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._key, name)

    real = SessionPool._private_key
    ca_label = "scep-ca"

    def private_key(self, state, session, label, key_class=None):
        key = real(self, state, session, label, key_class)
        return Erring(key) if label == ca_label else key

    monkeypatch.setattr(SessionPool, "_private_key", private_key)
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(ca_key_label=ca_label))
    runtime = server.runtime
    check = runtime.readiness["ca.token"]
    check.ttl = 0.1
    url = server.url
    async with aiohttp.ClientSession() as session:
        ready = token_ready(session, url)
        await wait_for(ready, timeout=10, interval=0.1)
        failing["on"] = True
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ra_der, _ = await ra_and_ca(session, url)
        request = _request(key, ra_der, MessageType.PKCS_REQ, client.make_csr(key, "erring", server.challenge()),
                           client.make_self_signed_signer(key))
        with structlog.testing.capture_logs() as logs:
            async with session.post(f"{url}/scep/default?operation=PKIOperation", data=request) as resp:
                assert resp.status == 503, await resp.text()
                problem = await resp.json(content_type=None)
                assert problem["code"] == "ca_key_failed" and resp.headers["Retry-After"]
                assert "GeneralError" not in problem["detail"]
        failed = [e for e in logs if e["event"] == "ca.key.sign_failed"]
        assert failed and failed[0]["backend"] == "pkcs11" and failed[0]["key"] == ca_label
        assert "GeneralError" in failed[0]["error"]
        async with session.get(f"{url}/metrics") as resp:
            assert 'ca_key_sign_failures_total{backend="pkcs11"}' in await resp.text()
        await asyncio.sleep(0.15)
        status, body = await readyz(session, url)
        assert status == 503 and body["checks"]["ca.token"] == "failed", body

        failing["on"] = False  # the token signs again: a probe's signature clears the failure
        await wait_for(ready, timeout=10, interval=0.1)
        rep = await scep_operation(session, url, request, key, ra_der)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text


async def test_an_ocsp_answer_waiting_on_a_hung_token_does_not_hold_the_event_loop(aiohttp_server, tmp_path,
                                                                                  softhsm):
    """The CA key in the token signs OCSP responses in a thread: while the token hangs, other requests are
    answered at once and the OCSP client gets tryLater after the token's timeout, then a signed answer."""
    import time

    from cryptography.x509 import ocsp

    from tests.factories import rsa_key
    from tests.ocsp.conftest import OCSP_REQUEST, issue, request_der

    server = await start_app(aiohttp_server, tmp_path, ca=softhsm.ca_settings(key_type="ec-p256"))
    ca = server.runtime.cas["default"]
    der = request_der(await issue(server, rsa_key(), "ocsp-device"), ca.cert, nonce=b"n" * 16)
    ca.key.pool.timeout = 2.0
    async with aiohttp.ClientSession() as session:
        async def ask() -> ocsp.OCSPResponse:
            async with session.post(f"{server.url}/ocsp/default", data=der,
                                    headers={"Content-Type": OCSP_REQUEST}) as resp:
                return ocsp.load_der_ocsp_response(await resp.read())

        with _call_lock(softhsm.module):  # another call holds the module and does not return
            started = time.monotonic()
            answer = asyncio.create_task(ask())
            await asyncio.sleep(0.1)
            async with session.get(f"{server.url}/healthz") as resp:
                assert resp.status == 200
            assert time.monotonic() - started < 1.0  # not after the token's 2 s
            assert (await answer).response_status is ocsp.OCSPResponseStatus.TRY_LATER
        assert (await ask()).response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
