"""SCEP GetCRL answers are built in a lane of their own: a flood of GetCRLs (anyone can make a signer, and each
answer costs in proportion to the CRL) neither holds the threads that serve enrolments nor queues without bound.

Each GetCRL answer is held in the middle of being built (its CertRep) until the test lets it go, so nothing here
depends on timing.
"""
from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from scep_server.ca import inventory
from scep_server.enrolment import ScepService
from scep_server.profiles import ProfileStore
from scep_server.scep import MessageType, PKIStatus, client
from scep_server.scep import cms
from scep_server.scep import message as codec
from trustkit.db import writer
from tests.factories import NOW
from tests.scep.test_decryption_stage import SECRET, _contents, _request, ca, device_key  # noqa: F401 - fixtures

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
GUARD = 30  # seconds: only bounds a test that fails; a passing one never waits for it

CRL = b"\x30\x82\x01\x00" + bytes(256)  # stands in for a CRL: the codec does not interpret it


class HeldGetCrls:
    """Holds every GetCRL's CertRep in the middle of being built (in whatever thread builds it) until released."""

    def __init__(self, monkeypatch):
        self.held = threading.Event()
        self.release = threading.Event()
        self.built = 0
        build = codec.build_cert_rep

        def held(*, request, **kwargs):
            if request.message_type is MessageType.GET_CRL and kwargs.get("status") is PKIStatus.SUCCESS:
                self.held.set()
                self.release.wait(GUARD)
                self.built += 1
            return build(request=request, **kwargs)

        monkeypatch.setattr(codec, "build_cert_rep", held)

    async def wait_held(self) -> None:
        assert await asyncio.to_thread(self.held.wait, GUARD), "no GetCRL answer was being built"


async def _service(engine, ca, crl_source, **kwargs) -> ScepService:
    async with writer(engine).begin() as conn:
        await inventory.register_ca(conn, ca, NOW)
    store = ProfileStore(engine)
    await store.create("p", ca=ca.name, challenge_kind="static", static_secret=SECRET, now=NOW)
    return ScepService(engine=engine, cas={ca.name: ca}, profiles=store, clock=lambda: NOW + timedelta(hours=1),
                       crl_source=crl_source, **kwargs)


@pytest.fixture(scope="module")
def requesters():
    """Signers of GetCRLs: anyone can make one (a self-signed certificate of their own key)."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=1024) for _ in range(4)]


def _get_crl(ca, key, n: int) -> bytes:
    return _request(ca, key, MessageType.GET_CRL, _contents(ca, key)[MessageType.GET_CRL],
                    transaction_id=f"get-crl-{n}")


async def _crl_of(service: ScepService, ca, key, body: bytes) -> bytes:
    rep = client.parse_cert_rep(await service.pki_operation("p", body), key, ra_cert_der=ca.ra_cert_der)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    assert len(rep.crls) == 1
    return rep.crls[0]


@SQLITE
async def test_an_enrolment_is_answered_while_getcrl_answers_are_being_built(engine, ca, device_key, requesters,
                                                                             monkeypatch):
    """One SCEP thread, GetCRLs being built and waiting: an enrolment sent meanwhile is issued before any of them
    is answered. It used to wait behind them: the GetCRL answers were built on the SCEP threads."""
    async def crl_source(name: str) -> bytes:
        return CRL

    service = await _service(engine, ca, crl_source, threads=1)
    getcrls = HeldGetCrls(monkeypatch)
    try:
        flood = [asyncio.create_task(_crl_of(service, ca, key, _get_crl(ca, key, n)))
                 for n, key in enumerate(requesters[:3])]
        await getcrls.wait_held()
        enrolment = asyncio.create_task(service.pki_operation(
            "p", _request(ca, device_key, MessageType.PKCS_REQ, _contents(ca, device_key)[MessageType.PKCS_REQ])))
        done, _ = await asyncio.wait({enrolment}, timeout=GUARD)
        answered_first = enrolment in done and getcrls.built == 0
        getcrls.release.set()
        assert await asyncio.gather(*flood) == [CRL] * 3  # and the GetCRLs are answered once let go
        assert answered_first, "the enrolment waited for the GetCRL answers"
        rep = client.parse_cert_rep(await enrolment, device_key, ra_cert_der=ca.ra_cert_der)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    finally:
        getcrls.release.set()
        await service.close()


def _busy_count(ca: str) -> float:
    """scep_getcrl_busy_total{ca} of this process (recording turned on)."""
    from scep_server import metrics

    metrics.activate()
    metrics.flush()
    return metrics._active.own.get_sample_value("scep_getcrl_busy_total", {"ca": ca}) or 0.0


@SQLITE
async def test_a_getcrl_beyond_the_lane_is_told_to_try_again(engine, ca, requesters, monkeypatch):
    """With `getcrl_queue` answers being built or waiting, one more GetCRL is refused at once: 503 getcrl_busy with
    Retry-After (the client tries again), not queued without bound. Once the lane has room, GetCRL is answered."""
    from scep_server.enrolment.getcrl import GetCrlBusy

    entered = 0
    two_in = asyncio.Event()

    async def crl_source(name: str) -> bytes:
        nonlocal entered
        entered += 1
        if entered == 2:
            two_in.set()
        return CRL

    service = await _service(engine, ca, crl_source, getcrl_queue=2)
    getcrls = HeldGetCrls(monkeypatch)
    try:
        first = asyncio.create_task(_crl_of(service, ca, requesters[0], _get_crl(ca, requesters[0], 0)))
        await getcrls.wait_held()  # being built
        second = asyncio.create_task(_crl_of(service, ca, requesters[1], _get_crl(ca, requesters[1], 1)))
        await asyncio.wait_for(two_in.wait(), GUARD)  # waiting in the lane
        busy_before = _busy_count(ca.name)
        with pytest.raises(GetCrlBusy) as refused:
            await service.pki_operation("p", _get_crl(ca, requesters[2], 2))
        assert _busy_count(ca.name) == busy_before + 1  # scep_getcrl_busy_total{ca}: an operator sees the refusals
        answer = refused.value.response()
        assert answer.status == 503 and answer.content_type == "application/problem+json"
        assert refused.value.code == "getcrl_busy" and int(answer.headers["Retry-After"]) > 0
        getcrls.release.set()
        assert await asyncio.gather(first, second) == [CRL, CRL]
        key = requesters[3]
        assert await _crl_of(service, ca, key, _get_crl(ca, key, 3)) == CRL  # room again
    finally:
        getcrls.release.set()
        await service.close()


@SQLITE
async def test_the_degenerate_pkcs7_holding_a_crl_is_built_once_per_crl_version(engine, ca, requesters, monkeypatch):
    """Every GetCRL answer encrypts the same degenerate PKCS#7 of the same CRL: it is built once per CRL (a new CRL
    is a new one), not for each request."""
    crls = {"now": CRL}

    async def crl_source(name: str) -> bytes:
        return crls["now"]

    service = await _service(engine, ca, crl_source)
    built: list[bytes] = []
    degenerate = codec.build_degenerate

    def counted(certs, crls=()):
        built.extend(crls)
        return degenerate(certs, crls)

    monkeypatch.setattr(codec, "build_degenerate", counted)
    monkeypatch.setattr(cms, "build_degenerate", counted)
    try:
        for n, key in enumerate(requesters[:3]):
            assert await _crl_of(service, ca, key, _get_crl(ca, key, n)) == CRL
        assert built == [CRL]
        crls["now"] = newer = b"\x30\x82\x01\x00" + bytes([1]) * 256  # the next CRL
        for n, key in enumerate(requesters[:2]):
            assert await _crl_of(service, ca, key, _get_crl(ca, key, 10 + n)) == newer
        assert built == [CRL, newer]
    finally:
        await service.close()
