"""A SCEP PKIOperation over GET carries its whole pkiMessage, base64 and %-escaped, in the request line. aiohttp
refused a request line over 8190 bytes before the route saw it (a text/plain 400): a PKCSReq with an RSA-4096 key
is about 5.9 KB of request line, but the renewal of a certificate with twenty SANs, signed by that certificate,
is 8.6 to 9 KB. The server reads request lines up to 16 KiB (scep_server.web.protocol.MAX_REQUEST_LINE); longer ones
are a 414 problem document, the client's cue to POST (GetCACaps offers POSTPKIOperation)."""
from __future__ import annotations

import base64
import os
from urllib.parse import quote

import aiohttp
import pytest
from cryptography import x509
from yarl import URL

from scep_server.scep import MessageType, PKIStatus, client
from scep_server.web.protocol import MAX_REQUEST_LINE
from tests.factories import rsa_key

from .conftest import pkcs_req, ra_and_ca, renew_any_time

KEY = rsa_key(4096)
PATH = "/scep/default/cgi-bin/pkiclient.exe"


def get_target(body: bytes) -> str:
    return f"{PATH}?operation=PKIOperation&message={quote(base64.b64encode(body).decode(), safe='')}"


async def over_get(session, url: str, body: bytes, key, ra_der: bytes) -> client.CertRepResult:
    async with session.get(URL(url + get_target(body), encoded=True)) as resp:
        assert resp.status == 200, await resp.text()
        return client.parse_cert_rep(await resp.read(), key, ra_cert_der=ra_der)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_4096_bit_requests_over_get_enrol_and_renew_past_8190_bytes_of_request_line(server):
    rt = server.runtime
    current = await rt.profiles.get("default")
    await rt.profiles.update("default", now=rt.clock(), settings=current.settings.model_copy(update={
        "template": current.settings.template.model_copy(update={"san_types": ["dns"]})}))
    await renew_any_time(server)
    sans = [f"host-{i:02d}.building-7.site-amsterdam.devices.example.com" for i in range(20)]  # the profile's most
    async with aiohttp.ClientSession() as session:
        ra_der, _ = await ra_and_ca(session, f"{server.url}/scep/default")
        first = pkcs_req(KEY, ra_der, challenge=None,
                         content=client.make_csr(KEY, "device-4096.devices.example.com", server.challenge(), sans))
        assert 5000 < len(f"GET {get_target(first)} HTTP/1.1") < 8190
        rep = await over_get(session, server.url, first, KEY, ra_der)
        assert rep.status == PKIStatus.SUCCESS, rep.fail_text
        issued = x509.load_der_x509_certificate(rep.certs[0])
        assert issued.public_key().key_size == 4096
        assert len(issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) >= len(sans)

        new_key = rsa_key(4096)  # the renewal: signed by the certificate it renews, which names every SAN again
        renewal = client.build_request(
            MessageType.RENEWAL_REQ, content=client.make_csr(new_key, "device-4096.devices.example.com", None, sans),
            signer_cert_der=rep.certs[0], signer_key=KEY, recipient_cert_der=ra_der,
            transaction_id=client.transaction_id_for(new_key.public_key()), sender_nonce=os.urandom(16),
            cek=os.urandom(16), iv=os.urandom(16))
        assert 8190 < len(f"GET {get_target(renewal)} HTTP/1.1") < MAX_REQUEST_LINE
        renewed = await over_get(session, server.url, renewal, KEY, ra_der)
    assert renewed.status == PKIStatus.SUCCESS, renewed.fail_text
    assert x509.load_der_x509_certificate(renewed.certs[0]).serial_number != issued.serial_number
