"""docs/okta.md's HTTP exchanges, sent as shown to a server: a device enrolled over SCEP attests with its
certificate, a YubiKey OTP enrols and is refused when replayed, the CRL is served; each answer has the status,
content type and fields the document shows, and the same codes."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scep_server.scep import PKIStatus
from tests.binding.conftest import sign, tokens, trust_default_profile
from tests.challenge.conftest import enrol
from tests.factories import rsa_key
from tests.guides.guide import blocks
from tests.otp.conftest import key_h, secrets_file
from tests.server import start_app

DOC = "okta.md"
# fields whose value the answer must repeat (the others: their type); a nested field by its dotted path
EXACT = {"managed", "reason", "status", "code", "result", "enrolled", "device_id", "device_status", "user", "public_id",
         "serial", "title", "expires_in", "certificate.ca", "certificate.external", "certificate.subject",
         "certificate.issuer"}


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: object
    status: int
    answer_headers: dict[str, str]
    answer: object


def _parse(block: str) -> tuple[str, dict[str, str], object]:
    head, _, body = block.partition("\n\n")
    first, *lines = head.strip().splitlines()
    headers = dict(line.split(": ", 1) for line in lines)
    return first, headers, json.loads(body) if body.strip() else None


def exchanges() -> list[Exchange]:
    """The document's request blocks, each with the answer block after it."""
    found = blocks(DOC, "http")
    assert len(found) % 2 == 0, "every request is followed by its answer"
    out = []
    for request, answer in zip(found[::2], found[1::2]):
        first, headers, body = _parse(request)
        method, path, version = first.split()
        status_line, answer_headers, answer_body = _parse(answer)
        assert version == "HTTP/1.1" and status_line.startswith("HTTP/1.1 "), (first, status_line)
        out.append(Exchange(method, path, headers, body, int(status_line.split()[1]), answer_headers, answer_body))
    return out


def fill(value, values: dict[str, str]):
    """The request body with each placeholder value (`"<nonce>"`) replaced by the test's."""
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, str) and re.fullmatch(r"<[^>]+>", value):
        return values[value]
    return value


def shape_problems(shown, got, where: str = "answer", path: str = "") -> list[str]:
    """Where the answer differs from the one shown: other fields, other types, other codes."""
    if isinstance(shown, dict):
        if not isinstance(got, dict):
            return [f"{where}: an object is shown, {type(got).__name__} answered"]
        out = [] if set(shown) == set(got) else [f"{where}: fields {sorted(shown)} shown, {sorted(got)} answered"]
        for key in set(shown) & set(got):
            out += shape_problems(shown[key], got[key], f"{where}.{key}", f"{path}{key}.")
            if f"{path}{key}" in EXACT and shown[key] != got[key]:
                out.append(f"{where}.{key}: {shown[key]!r} shown, {got[key]!r} answered")
        return out
    if type(shown) is not type(got):
        return [f"{where}: {type(shown).__name__} shown, {type(got).__name__} answered"]
    return []


def test_the_document_shows_each_call():
    calls = [(e.method, e.path, e.status) for e in exchanges()]
    assert calls == [("GET", "/crl/default.crl", 200), ("POST", "/api/v1/attestation/challenge", 200),
                     ("POST", "/api/v1/attestation/verify", 200), ("POST", "/api/v1/attestation/verify", 200),
                     ("POST", "/api/v1/otp/verify", 200), ("POST", "/api/v1/otp/verify", 403)]


def test_the_shape_check_finds_differences():
    shown = {"managed": True, "reason": "managed", "detail": "x", "certificate": {"serial": "1"}}
    assert shape_problems(shown, {**shown, "detail": "other words"}) == []
    assert shape_problems(shown, {**shown, "reason": "nonce_reused"}) != []
    assert shape_problems(shown, {**shown, "extra": 1}) != []
    assert shape_problems(shown, {**shown, "certificate": {"serial": 1}}) != []
    assert shape_problems(shown, {**shown, "certificate": {"serial": "2"}}) == []  # a certificate's own serial
    assert shape_problems({"serial": "1"}, {"serial": "2"}) != []  # a YubiKey's serial


async def test_the_documented_calls_against_a_server(aiohttp_server, tmp_path):
    server = await start_app(aiohttp_server, tmp_path)
    await trust_default_profile(server.runtime)
    signin, admin = await tokens(server.runtime)
    as_admin = {"Authorization": f"Bearer {admin}"}
    device = next(e for e in exchanges() if e.path == "/api/v1/attestation/challenge").body["device_id"]
    key = rsa_key()
    yubikey = key_h()
    async with aiohttp.ClientSession() as session:
        # an administrator's part: the YubiKey imported, the device registered and enrolled over SCEP
        async with session.post(f"{server.url}/api/v1/yubikeys/import", data=secrets_file([yubikey]),
                                headers=as_admin) as resp:
            assert resp.status == 201, await resp.text()
        async with session.post(f"{server.url}/api/v1/devices", json={"id": device}, headers=as_admin) as resp:
            assert resp.status == 201, await resp.text()
        rep = await enrol(session, server, "default", key, server.challenge(), cn=device)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        cert_pem = x509.load_der_x509_certificate(rep.certs[0]).public_bytes(serialization.Encoding.PEM).decode()

        values = {"<sign-in token>": signin, "<client certificate, PEM>": cert_pem, "<otp>": yubikey.otp()}
        # the guide's calls are made once the server serves its CRLs: until the first one is signed (soon after
        # the start, later on a loaded machine), /crl/{ca}.crl is a fair 503 with Retry-After
        for publisher in server.runtime.crl.publishers.values():
            await publisher.wait_newer(None, timeout=120)
        for e in exchanges():
            headers = {k: v.replace("<sign-in token>", signin) for k, v in e.headers.items() if k != "Host"}
            body = fill(e.body, values) if e.body is not None else None
            async with session.request(e.method, server.url + e.path, headers=headers,
                                       data=json.dumps(body) if body is not None else None) as resp:
                assert resp.status == e.status, (e.path, resp.status, await resp.text())
                shown_type = e.answer_headers["Content-Type"].split(";")[0]
                assert resp.content_type == shown_type, (e.path, resp.content_type)
                if e.answer is None:
                    continue
                got = await resp.json(content_type=None)
            assert shape_problems(e.answer, got, e.path) == [], json.dumps(got)
            if e.path == "/api/v1/attestation/challenge":
                values["<nonce>"] = got["nonce"]
                values["<signature, base64>"] = sign(key, got["nonce"], device)
