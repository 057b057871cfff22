"""SCEP GetCRL over HTTP while the worker's GetCRL lane is full: 503 problem+json `getcrl_busy` with Retry-After,
as a CRL not ready yet is answered; once the lane has room the same request is answered with the CRL."""
from __future__ import annotations

import asyncio
import threading

import aiohttp
from cryptography.hazmat.primitives import serialization

from scep_server.scep import MessageType, PKIStatus
from scep_server.scep import message as codec
from scep_server.scep.client import issuer_and_serial

from .conftest import _request, enrol_with_codec, get_crl_over_scep, ra_and_ca

GUARD = 30  # seconds: only bounds a test that fails


async def test_get_crl_while_the_lane_is_full_is_try_again(server, monkeypatch):
    scep = server.runtime.scep
    monkeypatch.setattr(scep.getcrl, "limit", 1)
    held, release = threading.Event(), threading.Event()
    build = codec.build_cert_rep

    def held_getcrl(*, request, **kwargs):
        if request.message_type is MessageType.GET_CRL and kwargs.get("status") is PKIStatus.SUCCESS:
            held.set()
            release.wait(GUARD)
        return build(request=request, **kwargs)

    monkeypatch.setattr(codec, "build_cert_rep", held_getcrl)
    async with aiohttp.ClientSession() as session:
        try:
            key, cert = await enrol_with_codec(session, server.url, server.challenge(), "getcrl-busy")
            first = asyncio.create_task(get_crl_over_scep(session, server.url, key, cert))
            assert await asyncio.to_thread(held.wait, GUARD)
            ra_der, _ = await ra_and_ca(session, server.url)
            body = _request(key, ra_der, MessageType.GET_CRL, issuer_and_serial(cert.issuer, cert.serial_number),
                            cert.public_bytes(serialization.Encoding.DER))
            async with session.post(f"{server.url}/scep/default?operation=PKIOperation", data=body) as resp:
                assert resp.status == 503
                assert resp.content_type == "application/problem+json"
                assert int(resp.headers["Retry-After"]) > 0
                problem = await resp.json(content_type=None)
            assert problem["code"] == "getcrl_busy" and problem["status"] == 503
            release.set()
            crl = await first
            assert crl == await get_crl_over_scep(session, server.url, key, cert)  # room again
        finally:
            release.set()
