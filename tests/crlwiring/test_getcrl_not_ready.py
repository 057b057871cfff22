"""SCEP GetCRL at a moment this process has no CRL to give for the CA: the CA was just picked up (a rollover
activated by another process) and its publisher is not made yet, or the first CRL cannot be signed. The client is
told to try again (503 with Retry-After), as for a CA not loaded yet; it was an internal error (500)."""
from __future__ import annotations

import aiohttp
from cryptography.hazmat.primitives import serialization

from crl.publish import PublishError
from scep_server.scep import MessageType
from scep_server.scep.client import issuer_and_serial

from .conftest import _request, enrol_with_codec, ra_and_ca, service


async def _get_crl(session, server, key, cert):
    ra_der, _ = await ra_and_ca(session, server.url)
    body = _request(key, ra_der, MessageType.GET_CRL, issuer_and_serial(cert.issuer, cert.serial_number),
                    cert.public_bytes(serialization.Encoding.DER))
    async with session.post(f"{server.url}/scep/default?operation=PKIOperation", data=body) as resp:
        return resp.status, resp.headers.get("Retry-After"), await resp.read()


async def test_get_crl_while_the_cas_publisher_is_not_made_yet_is_try_again(server):
    async with aiohttp.ClientSession() as session:
        key, cert = await enrol_with_codec(session, server.url, server.challenge(), "getcrl-early")
        publishers = service(server).publishers
        publisher = publishers.pop("default")  # picked up, its listener not run yet
        try:
            status, retry_after, _ = await _get_crl(session, server, key, cert)
        finally:
            publishers["default"] = publisher
        assert status == 503 and retry_after
        status, _, _ = await _get_crl(session, server, key, cert)
        assert status == 200


async def test_get_crl_when_the_first_crl_cannot_be_signed_is_try_again(server, monkeypatch):
    async with aiohttp.ClientSession() as session:
        key, cert = await enrol_with_codec(session, server.url, server.challenge(), "getcrl-unsigned")
        publisher = service(server).publishers["default"]

        async def fails():
            raise PublishError("the CA key cannot sign")

        async def nothing_recorded():
            return None

        monkeypatch.setattr(publisher, "_current", None)
        monkeypatch.setattr(publisher, "refresh_from_store", nothing_recorded)
        monkeypatch.setattr(publisher, "publish_now", fails)
        status, retry_after, _ = await _get_crl(session, server, key, cert)
        assert status == 503 and retry_after
