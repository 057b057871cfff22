"""The CRL through the full application, with OpenSSL and pkilint as relying parties and real SCEP enrolments."""
from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.ca.inventory import Reason, serial_hex
from tests.server import run

from .conftest import (
    ca_pem_path,
    cdp_of,
    crl_serials,
    enrol_with_codec,
    enrol_with_scepclient,
    fetch,
    get_crl_over_scep,
    openssl_verify,
    publisher,
    wait_for,
)

# the bound this configuration promises for a change made in the serving process: coalesce_delay (0.1 s)
# plus one re-sign; asserted with room for a loaded CI machine
IN_PROCESS_BOUND = 2.0

CRL_ALGORITHM = {"rsa": x509.SignatureAlgorithmOID.RSA_WITH_SHA256,
                 "ec-p256": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256,
                 "ec-p384": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384}


@pytest.mark.parametrize("ca_key_type", ["rsa", "ec-p256", "ec-p384"])
async def test_revoke_hold_release_seen_by_openssl_through_the_cdp(server, scepclient, openssl, lint_crl, tmp_path,
                                                                    ca_key_type):
    recipient = server.scepclient_recipient()
    good = await enrol_with_scepclient(scepclient, server.url, server.challenge(), tmp_path / "good", "good-device",
                                       extra=recipient)
    bad = await enrol_with_scepclient(scepclient, server.url, server.challenge(), tmp_path / "bad", "bad-device",
                                      extra=recipient)
    ca_pem = ca_pem_path(server)
    url = cdp_of(bad)
    assert url == f"{server.url}/crl/default.crl"  # the CDP of every issued certificate is this server

    async with aiohttp.ClientSession() as session:
        # the CRL found at the certificate's CDP verifies under the CA and lists nobody yet
        der = await fetch(session, url)
        (tmp_path / "crl.der").write_bytes(der)
        rc, out, err = await run(openssl, "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-noout",
                                 "-verify", "-CAfile", str(ca_pem))
        assert rc == 0 and "verify OK" in out + err, out + err
        assert x509.load_der_x509_crl(der).signature_algorithm_oid == CRL_ALGORITHM[ca_key_type]
        assert crl_serials(der) == {}
        for cert in (good, bad):
            rc, out = await openssl_verify(openssl, ca_pem, der, cert, tmp_path / "v0")
            assert rc == 0 and ": OK" in out, out

        # revoked: on the served CRL within the bound, OpenSSL refuses the certificate
        before = publisher(server).current.number
        started = time.monotonic()
        await server.runtime.revocation.revoke(serial_hex(bad.serial_number), Reason.KEY_COMPROMISE, actor="test")

        async def listed():
            body = await fetch(session, url)
            return body if bad.serial_number in crl_serials(body) else None

        der, _ = await wait_for(listed, timeout=10)
        latency = time.monotonic() - started
        print(f"revoke -> on the served CRL (same process): {latency * 1000:.0f} ms")
        assert latency < IN_PROCESS_BOUND
        assert x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number \
            > before
        assert crl_serials(der)[bad.serial_number] == x509.ReasonFlags.key_compromise
        rc, out = await openssl_verify(openssl, ca_pem, der, bad, tmp_path / "v1")
        assert rc != 0 and "certificate revoked" in out, out
        rc, out = await openssl_verify(openssl, ca_pem, der, good, tmp_path / "v1")
        assert rc == 0 and ": OK" in out, out

        # on hold: revoked for OpenSSL, with reason certificateHold
        await server.runtime.revocation.hold(serial_hex(good.serial_number), actor="test")

        async def held():
            body = await fetch(session, url)
            return body if good.serial_number in crl_serials(body) else None

        der, _ = await wait_for(held, timeout=10)
        assert crl_serials(der)[good.serial_number] == x509.ReasonFlags.certificate_hold
        rc, out = await openssl_verify(openssl, ca_pem, der, good, tmp_path / "v2")
        assert rc != 0 and "certificate revoked" in out, out

        # pkilint's PKIX profile finds nothing on the served CRL (two entries, one of them a hold)
        (tmp_path / "served.der").write_bytes(der)
        rc, out, err = await run(lint_crl, "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING",
                                 str(tmp_path / "served.der"))
        assert rc == 0 and not out.strip(), out + err

        # released: gone from the next CRL, OpenSSL says OK again; the revoked one stays listed
        await server.runtime.revocation.release(serial_hex(good.serial_number), actor="test")

        async def released():
            body = await fetch(session, url)
            return body if good.serial_number not in crl_serials(body) else None

        der, _ = await wait_for(released, timeout=10)
        assert bad.serial_number in crl_serials(der)
        rc, out = await openssl_verify(openssl, ca_pem, der, good, tmp_path / "v3")
        assert rc == 0 and ": OK" in out, out
        rc, out = await openssl_verify(openssl, ca_pem, der, bad, tmp_path / "v3")
        assert rc != 0 and "certificate revoked" in out, out
        (tmp_path / "final.der").write_bytes(der)
        rc, out, err = await run(openssl, "crl", "-inform", "DER", "-in", str(tmp_path / "final.der"), "-noout",
                                 "-verify", "-CAfile", str(ca_pem))
        assert rc == 0 and "verify OK" in out + err, out + err


async def test_http_validators_head_and_pem(server):
    url = f"{server.url}/crl/default.crl"
    cur = publisher(server).current
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/pkix-crl"
            body = await resp.read()
            etag, last_modified = resp.headers["ETag"], resp.headers["Last-Modified"]
            cache_control, expires = resp.headers["Cache-Control"], resp.headers["Expires"]
        assert body == cur.der
        assert parsedate_to_datetime(last_modified) == cur.this_update
        assert "max-age=" in cache_control
        max_age = int(cache_control.split("max-age=")[1].split(",")[0])
        assert 0 < max_age <= 300  # crl.http_max_age default, never beyond nextUpdate
        assert parsedate_to_datetime(expires) <= cur.next_update

        async with session.head(url) as resp:
            assert resp.status == 200
            assert resp.headers["ETag"] == etag
            assert int(resp.headers["Content-Length"]) == len(body)
            assert await resp.read() == b""

        async with session.get(url, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
            assert await resp.read() == b""
            assert resp.headers["ETag"] == etag
        async with session.get(url, headers={"If-Modified-Since": last_modified}) as resp:
            assert resp.status == 304
        async with session.get(url, headers={"If-None-Match": '"something-else"'}) as resp:
            assert resp.status == 200 and await resp.read() == body

        async with session.get(f"{server.url}/crl/default.pem") as resp:
            assert resp.status == 200
            pem = await resp.read()
        assert x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER) == body

        async with session.get(f"{server.url}/crl/nosuchca.crl") as resp:
            assert resp.status == 404
        async with session.get(f"{server.url}/crl/default.txt") as resp:
            assert resp.status == 404

        # a new CRL changes the validators: the old ETag no longer matches
        await server.runtime.crl.publisher("default").publish_now()
        async with session.get(url, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 200
            assert resp.headers["ETag"] != etag


async def test_scep_getcrl_returns_the_served_crl(server):
    async with aiohttp.ClientSession() as session:
        key, cert = await enrol_with_codec(session, server.url, server.challenge(), "getcrl-device")
        await server.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.SUPERSEDED, actor="test")
        pub = publisher(server)

        async def listed():
            cur = pub.current
            return cur if cur is not None and cert.serial_number in crl_serials(cur.der) else None

        await wait_for(listed, timeout=10)
        # the revoked certificate may still sign its GetCRL (RFC 8894 §3.3.4 names a certificate, any status)
        via_scep = await get_crl_over_scep(session, server.url, key, cert)
        served = await fetch(session, f"{server.url}/crl/default.crl")
    assert via_scep == served == pub.current.der


async def test_readiness_reports_the_crl(server):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/readyz") as resp:
            body = await resp.json()
    assert body["checks"]["crl"] == "ok"
    assert resp.status == 200
