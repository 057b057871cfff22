"""A tiny SCEP server for tests: answers GetCACaps/GetCACert, records every PKIOperation and answers it with
this codec (issuing with the fixture CA), so real clients can be captured and can check our replies."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID

from scep_server.scep import (FailInfo, MalformedMessage, MessageType, PKIStatus, SCEPFailure, build_cert_rep,
                              build_degenerate, decode_get_message, decrypt_envelope, parse_pki_message, rsa_padding)
from scep_server.scep.client import rsa_signer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "scep"
CAPS = "Renewal\nSHA-1\nSHA-256\nAES\nDES3\nSCEPStandard\nPOSTPKIOperation"


def load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def load_cert_der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


@dataclass
class Exchange:
    """One PKIOperation: the request as received and our reply."""

    method: str
    request: bytes
    reply: bytes
    status: int


@dataclass
class CaptureCA:
    """The fixture CA and RA (made with OpenSSL, see fixtures/README.md) and what was exchanged."""

    challenge: str = "secret"
    ca_key: rsa.RSAPrivateKey = field(default_factory=lambda: load_key(FIXTURES / "ca.key"))
    ra_key: rsa.RSAPrivateKey = field(default_factory=lambda: load_key(FIXTURES / "ra.key"))
    ca_der: bytes = field(default_factory=lambda: load_cert_der(FIXTURES / "ca.pem"))
    ra_der: bytes = field(default_factory=lambda: load_cert_der(FIXTURES / "ra.pem"))
    exchanges: list[Exchange] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    issued: list[x509.Certificate] = field(default_factory=list)

    def issue(self, csr: x509.CertificateSigningRequest, now: datetime) -> x509.Certificate:
        ca = x509.load_der_x509_certificate(self.ca_der)
        cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
                .sign(self.ca_key, hashes.SHA256()))
        self.issued.append(cert)
        return cert

    def respond(self, body: bytes) -> tuple[int, bytes]:
        """What a minimal static-challenge SCEP CA would answer (RFC 8894 §3.3)."""
        now = datetime.now(timezone.utc)
        common = dict(ra_cert_der=self.ra_der, sign=rsa_signer(self.ra_key), sender_nonce=os.urandom(16),
                      signing_time=now)
        try:
            msg = parse_pki_message(body)
            content, _ = decrypt_envelope(msg, lambda ek, s: self.ra_key.decrypt(ek, rsa_padding(s)),
                                          recipient_cert_der=self.ra_der)
            if msg.message_type not in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
                raise SCEPFailure(FailInfo.BAD_REQUEST, "only enrolment here", msg)
            csr = x509.load_der_x509_csr(content)
            if msg.message_type == MessageType.PKCS_REQ:
                try:
                    pw = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
                except x509.AttributeNotFound:
                    pw = b""
                pw = pw.decode() if isinstance(pw, bytes) else pw
                if pw != self.challenge:
                    raise SCEPFailure(FailInfo.BAD_REQUEST, "wrong challenge password", msg)
            cert = self.issue(csr, now)
            reply = build_cert_rep(request=msg, status=PKIStatus.SUCCESS,
                                   content=build_degenerate([cert.public_bytes(serialization.Encoding.DER)]),
                                   cek=os.urandom(32), iv=os.urandom(16), **common)
        except MalformedMessage as exc:
            return 400, str(exc).encode()
        except SCEPFailure as f:
            assert f.message is not None
            reply = build_cert_rep(request=f.message, status=PKIStatus.FAILURE, fail_info=f.fail_info,
                                   fail_text=f.text, **common)
        return 200, reply

    async def handle(self, request: web.Request) -> web.Response:
        op = request.query.get("operation", "")
        self.operations.append(op)
        if op == "GetCACaps":
            return web.Response(text=CAPS)
        if op == "GetCACert":
            return web.Response(body=build_degenerate([self.ra_der, self.ca_der]),
                                content_type="application/x-x509-ca-ra-cert")
        if op == "PKIOperation":
            if request.method == "POST":
                body = await request.read()
            else:
                try:
                    body = decode_get_message(request.query.get("message", ""))
                except MalformedMessage as exc:
                    return web.Response(status=400, text=str(exc))
            status, reply = self.respond(body)
            self.exchanges.append(Exchange(request.method, body, reply, status))
            if status != 200:
                return web.Response(status=status, body=reply)
            return web.Response(body=reply, content_type="application/x-pki-message")
        return web.Response(status=400, text="unknown operation")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/scep", self.handle)
        app.router.add_route("*", "/scep/{tail:.*}", self.handle)
        return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
