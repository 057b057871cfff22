"""The responder over HTTP, checked with cryptography's OCSP parser: answers, signer, nonce, caching, freshness."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from scep_server.ca.inventory import Reason, serial_hex
from scep_server.ca.policy import CertificateTemplate, IssuancePolicy
from tests.factories import csr
from scep_server.app import create_app
from tests.server import free_port

from .conftest import ca_of, get, issue, post, request_der


def load(body: bytes) -> ocsp.OCSPResponse:
    return ocsp.load_der_ocsp_response(body)


def check_signed_by_delegate(resp: ocsp.OCSPResponse, ca_cert: x509.Certificate) -> x509.Certificate:
    """The response carries the delegated signer's certificate, issued by the CA, and is signed by its key."""
    assert len(resp.certificates) == 1
    signer = resp.certificates[0]
    signer.verify_directly_issued_by(ca_cert)
    assert resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(signer.public_key()).digest
    signer.public_key().verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(),
                               resp.signature_hash_algorithm)
    eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert signer.extensions.get_extension_for_class(x509.OCSPNoCheck)
    ku = signer.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    lifetime = signer.not_valid_after_utc - signer.not_valid_before_utc
    assert lifetime.days <= 7
    return signer


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=["sha1", "sha256"])
async def test_good_revoked_held_unknown(server, device_key, algorithm):
    ca = ca_of(server)
    good, revoked, held = [await issue(server, device_key, f"d{i}") for i in range(3)]
    rt = server.runtime
    await rt.revocation.revoke(serial_hex(revoked.serial_number), Reason.KEY_COMPROMISE, actor="test")
    await rt.revocation.hold(serial_hex(held.serial_number), actor="test")
    # signed by the CA but never recorded in its inventory: a serial never issued
    never = ca.issue(csr(device_key, "x"), IssuancePolicy(CertificateTemplate()), serial=12345, now=rt.clock())

    expected = {good.serial_number: (ocsp.OCSPCertStatus.GOOD, None),
                revoked.serial_number: (ocsp.OCSPCertStatus.REVOKED, x509.ReasonFlags.key_compromise),
                held.serial_number: (ocsp.OCSPCertStatus.REVOKED, x509.ReasonFlags.certificate_hold),
                never.serial_number: (ocsp.OCSPCertStatus.UNKNOWN, None)}
    for cert in (good, revoked, held, never):
        for send in (post, get):
            http, body = await send(server.url, request_der(cert, ca.cert, algorithm=algorithm))
            assert http.status == 200
            assert http.headers["Content-Type"] == "application/ocsp-response"
            resp = load(body)
            assert resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
            check_signed_by_delegate(resp, ca.cert)
            assert resp.serial_number == cert.serial_number
            assert type(resp.hash_algorithm) is type(algorithm)
            status, reason = expected[cert.serial_number]
            assert resp.certificate_status is status
            if status is ocsp.OCSPCertStatus.REVOKED:
                assert resp.revocation_reason is reason
                assert abs((resp.revocation_time_utc - rt.clock()).total_seconds()) < 60
            assert resp.next_update_utc - resp.this_update_utc == rt.settings.ocsp.response_validity


async def test_nonce_is_echoed_and_signed_fresh(server, device_key):
    ca = ca_of(server)
    cert = await issue(server, device_key)
    bodies = []
    for nonce in (b"a" * 16, b"b" * 32):
        http, body = await post(server.url, request_der(cert, ca.cert, nonce=nonce))
        resp = load(body)
        assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        bodies.append(body)
    assert bodies[0] != bodies[1]
    # without nonce: no nonce extension
    http, body = await post(server.url, request_der(cert, ca.cert))
    with pytest.raises(x509.ExtensionNotFound):
        load(body).extensions.get_extension_for_class(x509.OCSPNonce)


async def test_nonce_longer_than_32_octets_is_malformed(server, device_key):
    cert = await issue(server, device_key)
    http, body = await post(server.url, request_der(cert, ca_of(server).cert, nonce=b"n" * 33))
    assert http.status == 200
    assert load(body).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


async def test_get_is_cached_with_rfc5019_headers_and_revocation_is_seen_at_once(server, device_key):
    ca = ca_of(server)
    cert = await issue(server, device_key)
    der = request_der(cert, ca.cert)
    http, first = await get(server.url, der)
    assert load(first).certificate_status is ocsp.OCSPCertStatus.GOOD
    h = http.headers
    max_age = int(h["Cache-Control"].split("max-age=")[1].split(",")[0])
    assert 0 < max_age <= 300
    assert "public" in h["Cache-Control"] and "no-transform" in h["Cache-Control"]
    resp = load(first)
    assert h["Last-Modified"] == resp.this_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
    expires = datetime.strptime(h["Expires"], "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=timezone.utc)
    assert expires <= resp.next_update_utc
    etag = h["ETag"]
    # pre-signed: the same bytes again (no new signature), and a 304 for the validator
    http, again = await get(server.url, der)
    assert again == first
    http, _ = await get(server.url, der, headers={"If-None-Match": etag})
    assert http.status == 304
    # POST answers carry no caching headers
    http, _ = await post(server.url, der)
    assert http.headers["Cache-Control"] == "no-store"

    started = time.monotonic()
    await server.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.SUPERSEDED, actor="test")
    http, after = await get(server.url, der)
    elapsed = time.monotonic() - started
    resp = load(after)
    assert resp.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason is x509.ReasonFlags.superseded
    assert elapsed < 1.0
    # a hold and its release on a fresh certificate: revoked (certificateHold), then good again
    other = await issue(server, device_key, "d2")
    der2 = request_der(other, ca.cert, algorithm=hashes.SHA256())
    assert load((await get(server.url, der2))[1]).certificate_status is ocsp.OCSPCertStatus.GOOD
    await server.runtime.revocation.hold(serial_hex(other.serial_number), actor="test")
    assert load((await get(server.url, der2))[1]).revocation_reason is x509.ReasonFlags.certificate_hold
    await server.runtime.revocation.release(serial_hex(other.serial_number), actor="test")
    assert load((await get(server.url, der2))[1]).certificate_status is ocsp.OCSPCertStatus.GOOD


async def test_hostile_requests_never_end_in_a_500(server, device_key):
    ca = ca_of(server)
    cert = await issue(server, device_key)
    good = request_der(cert, ca.cert)
    malformed = [b"", b"\x00", b"garbage" * 10, good[:-3], good + b"\x00", b"\x30\x84\xff\xff\xff\xff",
                 b"\x30" + b"\x80" * 50, good[:10] + b"\xff" * 40 + good[50:]]
    for body in malformed:
        http, answer = await post(server.url, body)
        assert http.status == 200, body
        assert load(answer).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST, body
    # oversized: announced (413) or streamed in chunks (malformedRequest)
    http, _ = await post(server.url, b"\x30" * 5000)
    assert http.status == 413

    async def chunks():
        for _ in range(10):
            yield b"\x30" * 1000

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/ocsp/default", data=chunks()) as resp:
            assert resp.status == 200
            assert load(await resp.read()).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        for path in ("not-base64!!", "%ZZ", "A" * 20000, "%00%01", "MA==", "////"):
            async with session.get(f"{server.url}/ocsp/default/{path}") as resp:
                assert resp.status in (200, 400, 404, 414), path
                if resp.status == 200:
                    assert load(await resp.read()).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    # more CertIDs than answered in one request
    from asn1crypto import ocsp as a_ocsp

    parsed = a_ocsp.OCSPRequest.load(good)
    one = parsed["tbs_request"]["request_list"][0]
    many = a_ocsp.OCSPRequest({"tbs_request": {"request_list": [one] * 9}}).dump()
    http, answer = await post(server.url, many)
    assert load(answer).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


async def test_a_serial_number_no_certificate_has_is_malformed_and_nothing_is_kept(server, device_key):
    """A CertID's serial of thousands of octets (echoed in the response, kept with it in the cache) is a
    malformedRequest: 50 of them leave the cache as it was."""
    from asn1crypto import ocsp as a_ocsp

    ca = ca_of(server)
    one = a_ocsp.OCSPRequest.load(request_der(await issue(server, device_key), ca.cert))["tbs_request"]
    cid = one["request_list"][0]["req_cert"].native
    held = len(server.runtime.ocsp.cache.entries)
    for i in range(50):
        hostile = a_ocsp.OCSPRequest({"tbs_request": {"request_list": [
            {"req_cert": dict(cid, serial_number=(i + 1) << 30_000)}]}}).dump()
        http, answer = await post(server.url, hostile)
        assert http.status == 200
        assert load(answer).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert len(server.runtime.ocsp.cache.entries) == held

async def test_several_cert_ids_are_answered_in_order(server, device_key):
    from asn1crypto import ocsp as a_ocsp

    ca = ca_of(server)
    a, b = await issue(server, device_key, "a"), await issue(server, device_key, "b")
    await server.runtime.revocation.revoke(serial_hex(b.serial_number), Reason.KEY_COMPROMISE, actor="test")
    ids = [a_ocsp.OCSPRequest.load(request_der(c, ca.cert))["tbs_request"]["request_list"][0] for c in (a, b)]
    http, body = await post(server.url, a_ocsp.OCSPRequest({"tbs_request": {"request_list": ids}}).dump())
    responses = list(load(body).responses)
    assert [r.serial_number for r in responses] == [a.serial_number, b.serial_number]
    assert [r.certificate_status for r in responses] == [ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED]


async def test_unknown_issuer_and_unknown_ca_are_unauthorized(server, device_key, tmp_path):
    from tests.factories import make_ca

    other = make_ca(tmp_path / "other-ca")
    cert = await issue(server, device_key)
    # a CertID naming another issuer (same serial)
    http, body = await post(server.url, request_der(cert, other.cert))
    assert load(body).response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
    http, body = await post(server.url, request_der(cert, ca_of(server).cert), ca="nope")
    assert http.status == 200
    assert load(body).response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.parametrize("settings", [{"signer": "ca"}, {"unknown_as_revoked": True}], ids=["ca-signer", "unknown-revoked"])
async def test_ca_signer_and_unknown_as_revoked(aiohttp_server, tmp_path, db_url, device_key, settings):
    from tests.server import start_app

    srv = await start_app(aiohttp_server, tmp_path, db_url, ocsp=settings)
    ca = ca_of(srv)
    cert = await issue(srv, device_key)
    resp = load((await post(srv.url, request_der(cert, ca.cert)))[1])
    if settings.get("signer") == "ca":
        assert resp.certificates == []
        ca.cert.public_key().verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), hashes.SHA256())
        assert resp.certificate_status is ocsp.OCSPCertStatus.GOOD
        return
    from asn1crypto import ocsp as a_ocsp

    parsed = a_ocsp.OCSPRequest.load(request_der(cert, ca.cert))
    one = parsed["tbs_request"]["request_list"][0]
    one["req_cert"]["serial_number"] = 777
    resp = load((await post(srv.url, a_ocsp.OCSPRequest({"tbs_request": {"request_list": [one]}}).dump()))[1])
    assert resp.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason is x509.ReasonFlags.certificate_hold
    assert resp.revocation_time_utc == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert resp.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.48.1.9"))


async def test_a_change_made_by_another_instance_is_answered_within_a_second(server, aiohttp_server, device_key):
    """Two instances on one database and data directory: a revocation made on the first reaches the cache of
    the second through the change feed."""
    other_port = free_port()
    settings = server.settings.model_copy(update={"server": server.settings.server.model_copy(
        update={"listen": f"127.0.0.1:{other_port}"})})
    other = create_app(settings)
    await aiohttp_server(other, host="127.0.0.1", port=other_port)
    other_url = f"http://127.0.0.1:{other_port}"
    ca = ca_of(server)
    cert = await issue(server, device_key)
    der = request_der(cert, ca.cert)
    assert load((await get(other_url, der))[1]).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert load((await get(other_url, der))[1]).certificate_status is ocsp.OCSPCertStatus.GOOD  # cached there
    await server.runtime.revocation.revoke(serial_hex(cert.serial_number), Reason.KEY_COMPROMISE, actor="test")
    started = time.monotonic()
    while True:
        status = load((await get(other_url, der))[1]).certificate_status
        if status is ocsp.OCSPCertStatus.REVOKED:
            break
        assert time.monotonic() - started < 1.0, "the other instance still answers good"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("key_type,digest,oid_name", [("ec-p256", hashes.SHA256, "ecdsa-with-SHA256"),
                                                      ("ec-p384", hashes.SHA384, "ecdsa-with-SHA384")])
async def test_an_ec_ca_key_signs_responses_under_ecdsa(aiohttp_server, tmp_path, db_url, device_key, key_type,
                                                        digest, oid_name):
    """With ``ocsp.signer = "ca"`` an EC CA key signs the responses: the signatureAlgorithm names ECDSA with
    the hash the key signs with, so relying parties verify the response against the CA certificate."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.server import start_app

    srv = await start_app(aiohttp_server, tmp_path, db_url, ocsp={"signer": "ca"}, ca={"key_type": key_type})
    ca = ca_of(srv)
    cert = await issue(srv, device_key)
    for nonce in (None, b"0123456789abcdef"):  # pre-signed and signed fresh
        resp = load((await post(srv.url, request_der(cert, ca.cert, nonce=nonce)))[1])
        assert resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert resp.certificate_status is ocsp.OCSPCertStatus.GOOD
        assert resp.signature_algorithm_oid._name == oid_name
        assert isinstance(resp.signature_hash_algorithm, digest)
        ca.cert.public_key().verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(digest()))


def _padded(der: bytes, pad: bytes) -> bytes:
    """The same request with an ignored, non-critical request extension carrying ``pad``."""
    from asn1crypto import ocsp as a_ocsp

    one = a_ocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]
    return a_ocsp.OCSPRequest({"tbs_request": {"request_list": [one], "request_extensions": [
        {"extn_id": "1.2.3.4.5", "critical": False, "extn_value": pad}]}}).dump()


async def test_padded_variants_of_one_request_neither_fill_nor_evict_the_cache(aiohttp_server, tmp_path, db_url,
                                                                               device_key, monkeypatch):
    """1,000 variants of one request (an ignored extension with random bytes) cost one signature and leave
    the cache holding a few small entries; another certificate's pre-signed response stays cached, and a
    repeated request is answered from the cache."""
    import dataclasses
    import os

    from tests.server import start_app

    srv = await start_app(aiohttp_server, tmp_path, db_url, ocsp={"cache_entries": 1000})
    service = srv.runtime.ocsp
    ca = ca_of(srv)
    signed = []
    original = service.signers["default"]
    service.signers["default"] = dataclasses.replace(original, sign=lambda tbs: signed.append(1) or original.sign(tbs))
    target, other = await issue(srv, device_key, "target"), await issue(srv, device_key, "other")
    other_der = request_der(other, ca.cert)
    assert load((await post(srv.url, other_der))[1]).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert len(signed) == 1
    der = request_der(target, ca.cert)
    async with aiohttp.ClientSession() as session:
        for _ in range(1000):
            async with session.post(f"{srv.url}/ocsp/default", data=_padded(der, os.urandom(3900)),
                                    headers={"Content-Type": "application/ocsp-request"}) as resp:
                assert resp.status == 200
                assert load(await resp.read()).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert len(signed) == 2  # the first variant only
    assert len(service.cache.entries) <= 8
    held = sum(len(part) for key in service.cache.entries for part in key if isinstance(part, bytes))
    assert held < 4096
    assert load((await post(srv.url, other_der))[1]).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert load((await post(srv.url, der))[1]).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert len(signed) == 2  # still cached: neither evicted nor signed again
    # a repeated request is answered by its digest, without parsing it again
    import scep_server.ocspwiring.service as service_module

    calls = []
    real_parse = service_module.parse_request
    monkeypatch.setattr(service_module, "parse_request", lambda *a, **k: calls.append(1) or real_parse(*a, **k))
    for body in (other_der, der):
        assert load((await post(srv.url, body))[1]).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert calls == [] and len(signed) == 2
