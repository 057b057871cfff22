"""A generic delegated validator (in the style of step-ca's SCEPCHALLENGE webhooks).

Every request is JSON signed with HMAC-SHA256 over the exact body, sent in ``X-Signature`` as
``sha256=<hex>``; the receiver answers a validation with ``{"allow": true|false, "error": {"message": ...}}``.
After issuance a ``scep.success`` notification is sent, after a later failure ``scep.failure``. One call, with
all its retries, ends within ``deadline_seconds`` (or ``timeout_seconds`` where that is longer).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from datetime import datetime, timezone
from typing import Any

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .config import WebhookSettings
from .http import ResponseTooLarge, json_object
from .store import csr_sans, san_strings

log = structlog.get_logger("challenge.webhook")

SIGNATURE_HEADER = "X-Signature"
ID_HEADER = "X-Webhook-Id"


class WebhookDenied(Exception):
    """The receiver answered allow=false."""


class WebhookUnavailable(Exception):
    """The receiver could not be reached or answered something else than the protocol."""


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """For receivers: constant-time check of ``X-Signature``."""
    return bool(header) and hmac.compare_digest(sign(secret, body), header)


def describe_csr(csr: x509.CertificateSigningRequest, csr_der: bytes, names=None) -> dict[str, Any]:
    """The request as a receiver sees it. ``names`` (ca.policy.Vetted): the subject and SANs the certificate gets
    as the profile's policy computed them; ``subject``, ``commonName`` and ``sans`` are those (the e-mail SAN the
    policy adds for each subject emailAddress included), the CSR's own only when there are none (``raw`` is the
    CSR as sent)."""
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        alg, size = "RSA", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        alg, size = "EC", key.curve.key_size
    else:
        alg, size = type(key).__name__, None
    subject, sans = (names[0], san_strings(names[1])) if names is not None else (csr.subject, csr_sans(csr))
    cns = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"subject": subject.rfc4514_string(), "commonName": str(cns[0].value) if cns else None,
            "sans": sans, "publicKeyAlgorithm": alg, "publicKeySize": size,
            "publicKeySha256": hashlib.sha256(spki).hexdigest(),
            "signatureAlgorithm": csr.signature_algorithm_oid.dotted_string,
            "raw": base64.b64encode(csr_der).decode()}


class WebhookClient:
    def __init__(self, settings: WebhookSettings, session: aiohttp.ClientSession):
        self.settings = settings
        self.session = session

    async def _post(self, url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.settings.secret.read(), body),
                   ID_HEADER: str(uuid.uuid4())}
        # never shorter than one attempt's own time-out: a profile whose timeout_seconds is longer (up to 120) had
        # each attempt wait that long, and a slow but answering receiver is asked as it was
        deadline = max(self.settings.deadline_seconds, self.settings.timeout_seconds)
        tried: list[str] = []
        try:
            async with asyncio.timeout(deadline):
                return await self._attempts(url, payload, body, headers, tried)
        except TimeoutError:  # the deadline's (an attempt's own time-out is retried, then WebhookUnavailable)
            last = f"; the last attempt: {tried[-1]}" if tried else ""
            raise WebhookUnavailable(f"the validation webhook failed: no answer within the deadline of {deadline:g}s "
                                     f"(retries included){last}") from None

    async def _attempts(self, url: str, payload: dict[str, Any], body: bytes, headers: dict[str, str],
                        tried: list[str]) -> tuple[int, dict[str, Any]]:
        """The attempts of one call (`tried`: why each failed one failed)."""
        attempts = self.settings.retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
                async with self.session.post(url, data=body, headers=headers, allow_redirects=False,
                                             timeout=timeout) as resp:
                    try:
                        data = await json_object(resp, self.settings.max_response_bytes)
                    except ResponseTooLarge as exc:
                        raise WebhookUnavailable(f"the validation webhook's answer is too large: {exc}") from None
                    if resp.status >= 500 or resp.status == 429:
                        last = f"HTTP {resp.status}"
                    else:
                        return resp.status, data if isinstance(data, dict) else {}
            except asyncio.TimeoutError:
                last = f"timed out after {self.settings.timeout_seconds:g}s"
            except aiohttp.ClientError as exc:
                last = str(exc) or type(exc).__name__
            tried.append(last)
            log.warning("webhook.retry", url=url, type=payload.get("type"), attempt=attempt + 1, of=attempts,
                        error=last)
            if attempt + 1 < attempts:
                await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))
        raise WebhookUnavailable(f"the validation webhook failed: {last}")

    @staticmethod
    def _base(kind: str, profile: str, transaction_id: str) -> dict[str, Any]:
        return {"type": kind, "timestamp": datetime.now(timezone.utc).isoformat(), "profile": profile,
                "transactionId": transaction_id}

    async def validate(self, *, profile: str, transaction_id: str, challenge: str | None,
                       csr: x509.CertificateSigningRequest, csr_der: bytes, names=None) -> None:
        payload = self._base("scep.challenge", profile, transaction_id)
        payload.update(challenge=challenge, x509CertificateRequest=describe_csr(csr, csr_der, names))
        status, data = await self._post(self.settings.url, payload)
        if status != 200:
            raise WebhookUnavailable(f"the validation webhook answered HTTP {status}")
        if not isinstance(data.get("allow"), bool):
            raise WebhookUnavailable("the validation webhook's answer has no boolean 'allow'")
        if not data["allow"]:
            err = data.get("error") if isinstance(data.get("error"), dict) else {}
            raise WebhookDenied(str(err.get("message") or "the validation webhook did not allow this enrolment")[:300])

    async def success(self, *, profile: str, transaction_id: str, csr: x509.CertificateSigningRequest,
                      csr_der: bytes, cert: x509.Certificate, names=None) -> None:
        payload = self._base("scep.success", profile, transaction_id)
        der = cert.public_bytes(serialization.Encoding.DER)
        payload.update(x509CertificateRequest=describe_csr(csr, csr_der, names), certificate={
            "serialNumber": f"{cert.serial_number:x}", "subject": cert.subject.rfc4514_string(),
            "notAfter": cert.not_valid_after_utc.isoformat(),
            "sha256Fingerprint": cert.fingerprint(hashes.SHA256()).hex(), "raw": base64.b64encode(der).decode()})
        status, _ = await self._post(self.settings.notify_url or self.settings.url, payload)
        if not 200 <= status < 300:
            raise WebhookUnavailable(f"the success notification was answered with HTTP {status}")

    async def failure(self, *, profile: str, transaction_id: str, csr: x509.CertificateSigningRequest,
                      csr_der: bytes, reason: str, names=None) -> None:
        payload = self._base("scep.failure", profile, transaction_id)
        payload.update(x509CertificateRequest=describe_csr(csr, csr_der, names), error={"message": reason[:500]})
        status, _ = await self._post(self.settings.notify_url or self.settings.url, payload)
        if not 200 <= status < 300:
            raise WebhookUnavailable(f"the failure notification was answered with HTTP {status}")
