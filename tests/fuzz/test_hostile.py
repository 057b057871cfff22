"""Hostile DER, one attack at a time: each ends in the codec's own error (HTTP 400, a FAILURE CertRep, a
CrlFormatError), quickly, never in another exception or an HTTP 500."""
from __future__ import annotations

import time

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from crl.parse import CrlFormatError, parse_crl
from scep_server.scep import (Digest, FailInfo, MalformedMessage, PKIStatus, SCEPFailure, client, cms, oids,
                              parse_pki_message)
from scep_server.web.scep import MAX_MESSAGE_BYTES
from tests.server import start_app
from trustkit import der
from trustkit.der import encode_time, tlv

from .corpus import NOW, elements, replace_element, seeds

BUDGET = 0.05  # CPU seconds: a normal request parses in well under a millisecond


def cpu(fn, *args):
    """(result or exception, thread CPU seconds) of fn(*args)."""
    t = time.thread_time()
    try:
        out = fn(*args)
    except Exception as exc:  # noqa: BLE001 - returned for the caller to judge
        out = exc
    return out, time.thread_time() - t


def with_outer_oid(message: bytes, oid_body: bytes) -> bytes:
    """``message`` with the ContentInfo's contentType replaced, the outer length re-encoded."""
    nodes = elements(message)
    i = next(i for i, (el, _) in enumerate(nodes) if el[0] == der.OID)
    return replace_element(message, nodes, i, der.tlv(der.OID, oid_body))


def huge_oid(n: int) -> bytes:
    return b"\x2a" + b"\xff" * n + b"\x01"


def request_with_signing_time(time_tlv: bytes) -> bytes:
    """A correctly signed PKCSReq whose signingTime attribute holds ``time_tlv``."""
    s = seeds()
    env = cms.parse_signed_data(s.scep[0]).econtent
    signer = client.make_self_signed_signer(s.key, cn="fuzz-device")
    attrs = [cms.attribute(oids.MESSAGE_TYPE_DER, der.printable("19")),
             cms.attribute(oids.TRANSACTION_ID_DER, der.printable("TID-TIME")),
             cms.attribute(oids.SENDER_NONCE_DER, der.octet_string(b"n" * 16)),
             cms.attribute(oids.SIGNING_TIME_DER, time_tlv)]
    return cms.build_signed_data(econtent=env, signer_cert_der=signer, sign=client.rsa_signer(s.key),
                                 digest=Digest.SHA256, extra_attrs=attrs)


# ---------------------------------------------------------------- codec

@pytest.mark.parametrize("n", [4096, 200_000])
def test_an_oversized_oid_in_the_outer_signed_data_is_malformed_and_cheap(n):
    hostile = with_outer_oid(seeds().scep[0], huge_oid(n))
    out, spent = cpu(parse_pki_message, hostile)
    assert isinstance(out, MalformedMessage), repr(out)
    assert spent < BUDGET, f"{spent:.3f} s of CPU for a {len(hostile)}-byte message"


def test_oid_decoding_is_bounded_before_any_arithmetic():
    out, spent = cpu(der.decode_oid, huge_oid(200_000))
    assert isinstance(out, der.DERError)
    assert spent < 0.005
    with pytest.raises(der.DERError):
        der.decode_oid(b"\x2a" + b"\x01" * 40)           # 41 arcs in 41 octets
    assert der.decode_oid(der.oid("2.25.329800735698586629295641978511506172918")[2:]) == \
        "2.25.329800735698586629295641978511506172918"  # a UUID OID: 20 octets


@pytest.mark.parametrize("time_tlv", [
    der.tlv(der.UTC_TIME, b"\xff\xfe250601120000Z"),           # not ASCII
    der.tlv(der.GENERALIZED_TIME, b"20250601120000.xZ"),       # fraction that is not a number
    der.tlv(der.GENERALIZED_TIME, b"20250601120000.\xd9\xa3Z"),  # non-ASCII fraction
    der.tlv(der.UTC_TIME, b"-1-1-1-1-1-1Z"),
    der.tlv(der.UTC_TIME, b"250631120000Z"),                   # 31 June
    der.tlv(der.GENERALIZED_TIME, b"20250601120000." + b"9" * 5000 + b"Z"),
], ids=["non-ascii", "bad-fraction", "non-ascii-fraction", "signs", "impossible-date", "long-fraction"])
def test_a_malformed_signing_time_is_a_bad_message_check_failure(time_tlv):
    out, spent = cpu(parse_pki_message, request_with_signing_time(time_tlv))
    assert isinstance(out, SCEPFailure), repr(out)
    assert out.fail_info is FailInfo.BAD_MESSAGE_CHECK and out.message is not None
    assert "time" in out.text
    assert spent < BUDGET


def test_a_well_formed_signing_time_still_parses():
    msg = parse_pki_message(request_with_signing_time(der.encode_time(NOW)))
    assert msg.signing_time == NOW


def _crl_with(extensions=(), version: bytes | None = None) -> bytes:
    """A CRL signed by the seed RA key with extra raw extensions and optionally a raw version INTEGER."""
    s = seeds()
    base = x509.load_der_x509_crl(s.crl)
    tbs = der.seq(
        version if version is not None else der.integer(1),
        der.seq(der.oid("1.2.840.113549.1.1.11"), der.NULL_DER), base.issuer.public_bytes(),
        encode_time(NOW), der.tlv(der.ctx(0), der.seq(*extensions)) if extensions else b"")
    sig = s.ra_key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return der.seq(tbs, der.seq(der.oid("1.2.840.113549.1.1.11"), der.NULL_DER), tlv(0x03, b"\x00" + sig))


def _ext(oid_body: bytes, value: bytes, critical: bool = False) -> bytes:
    return der.seq(der.tlv(der.OID, oid_body), *([b"\x01\x01\xff"] if critical else []), der.octet_string(value))


@pytest.mark.parametrize("crl", [
    pytest.param(lambda: _crl_with([_ext(huge_oid(100_000), b"\x05\x00", critical=True)]), id="oversized-oid"),
    pytest.param(lambda: _crl_with(version=der.tlv(der.INTEGER, b"\x7f" + b"\xff" * 5000)), id="huge-version"),
    pytest.param(lambda: _crl_with([_ext(b"\x55\x1d\x1b", der.tlv(der.INTEGER, b"\x7f" + b"\xff" * 5000))]),
                 id="huge-delta-base"),
    pytest.param(lambda: _crl_with([_ext(b"\x55\x1d\x1c", der.seq(der.tlv(0xA0, der.tlv(0xA0, (
        der.tlv(0x86, b"http://x/") * 20000)))), critical=True)]), id="huge-idp"),
])
def test_hostile_crls_raise_only_crl_format_error_and_stay_cheap(crl):
    data = crl()
    def parse_all():
        p = parse_crl(data)
        p.index()
        return p.summary()
    out, spent = cpu(parse_all)
    assert isinstance(out, CrlFormatError), repr(out)
    assert spent < BUDGET, f"{spent:.3f} s"


def test_the_crl_seed_parses():
    assert parse_crl(seeds().crl).summary()["entries"] == 4


def _indefinite(tag: int, body: bytes) -> bytes:
    return bytes((tag, 0x80)) + body + b"\x00\x00"


def with_econtent(econtent_tlv: bytes) -> bytes:
    """The PKCSReq seed, every level down to its eContent in BER indefinite lengths, the eContent replaced."""
    data = seeds().scep[0]
    ci = der.children(data, der.read_one(data))
    sd = der.children(data, der.children(data, ci[1])[0])
    eci = der.children(data, sd[2])
    eci_ber = _indefinite(der.SEQUENCE, der.raw(data, eci[0]) + _indefinite(0xA0, econtent_tlv))
    body = der.raw(data, sd[0]) + der.raw(data, sd[1]) + eci_ber + b"".join(der.raw(data, el) for el in sd[3:])
    return _indefinite(der.SEQUENCE, der.raw(data, ci[0]) + _indefinite(0xA0, _indefinite(der.SEQUENCE, body)))


def nested_segments(depth: int, count: int) -> bytes:
    """A constructed OCTET STRING of ``count`` empty segments, ``depth`` indefinite levels deep."""
    inner = der.octet_string(b"") * count
    for _ in range(depth):
        inner = _indefinite(0x24, inner)
    return inner


@pytest.mark.parametrize("depth", [1, 30])
def test_an_econtent_of_thousands_of_tiny_segments_is_malformed_before_any_check(depth):
    hostile = with_econtent(nested_segments(depth, 25_000))
    assert len(hostile) <= MAX_MESSAGE_BYTES
    with pytest.raises(MalformedMessage, match="more than 1024"):
        parse_pki_message(hostile)


def test_an_econtent_in_1000_octet_ber_segments_parses():
    envelope = cms.parse_signed_data(seeds().scep[0]).econtent
    segments = b"".join(der.octet_string(envelope[i:i + 1000]) for i in range(0, len(envelope), 1000))
    assert parse_pki_message(with_econtent(_indefinite(0x24, segments))).envelope == envelope


# ---------------------------------------------------------------- HTTP

@pytest.fixture
async def server(aiohttp_server, tmp_path):
    return await start_app(aiohttp_server, tmp_path)


async def _post(url: str, body, headers=None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/scep/default?operation=PKIOperation", data=body, headers=headers) as r:
            return r.status, await r.read()


async def test_http_an_oversized_oid_is_a_400_with_a_reason(server):
    status, body = await _post(server.url, with_outer_oid(seeds().scep[0], huge_oid(40_000)))
    assert status == 400, body[:300]
    assert b"not a signed SCEP message" in body



async def test_http_an_econtent_of_thousands_of_tiny_segments_is_a_400(server):
    status, body = await _post(server.url, with_econtent(nested_segments(30, 25_000)))
    assert status == 400, body[:300]
    assert b"more than 1024" in body

async def test_http_a_malformed_signing_time_is_a_signed_failure(server):
    status, body = await _post(server.url, request_with_signing_time(der.tlv(der.UTC_TIME, b"\xff" * 13)))
    assert status == 200, body[:300]
    rep = client.parse_cert_rep(body, seeds().key)
    assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_MESSAGE_CHECK


async def test_http_a_body_over_the_cap_is_413_with_or_without_a_content_length(server):
    big = bytes(MAX_MESSAGE_BYTES + 1)
    status, body = await _post(server.url, big)
    assert status == 413, body[:300]

    async def chunks():
        for _ in range(20):
            yield bytes(8192)
    status, body = await _post(server.url, chunks())  # chunked: no Content-Length
    assert status == 413, body[:300]
    status, _ = await _post(server.url, bytes(MAX_MESSAGE_BYTES))  # at the cap: read, then refused as DER
    assert status == 400


async def test_http_a_get_message_over_the_cap_is_refused_with_a_4xx(server):
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/scep/default?operation=PKIOperation&message={'A' * 200_000}"
        async with session.get(url) as r:
            assert 400 <= r.status < 500


def test_a_signer_certificate_with_an_invalid_version_is_malformed():
    seed = seeds().scep[0]
    at = seed.index(b"\xa0\x03\x02\x01\x02")  # the signer certificate's [0] version v3
    hostile = seed[:at + 4] + b"\x0a" + seed[at + 5:]
    out, _ = cpu(parse_pki_message, hostile)
    assert isinstance(out, MalformedMessage), repr(out)


@pytest.mark.parametrize("child", [b"\x30\x00", b"\x02\x01\x00"])
def test_thousands_of_certificates_cost_no_more_than_a_normal_request(child):
    seed = seeds().scep[0]
    nodes = elements(seed)
    certs = next(i for i, (el, parent) in enumerate(nodes) if el[0] == der.ctx(0) and parent == 3)  # SignedData [0]
    hostile = replace_element(seed, nodes, certs, der.tlv(der.ctx(0), child * 20_000))
    assert len(hostile) <= MAX_MESSAGE_BYTES
    normal = min(cpu(parse_pki_message, seed)[1] for _ in range(3))
    out, spent = cpu(parse_pki_message, hostile)
    assert isinstance(out, MalformedMessage), repr(out)
    assert spent < max(5 * normal, 0.002), f"{spent * 1000:.1f} ms against {normal * 1000:.2f} ms for a normal request"
