"""Microsoft Intune SCEP request validation for third-party CAs.

OAuth2 client credentials (Entra app with ``scep_challenge_provider``), service discovery through
Microsoft Graph (``ScepRequestValidationFEService``), then ``ScepActions/validateRequest``,
``successNotification`` and ``failureNotification``. Tokens and the discovered URL are cached; every
call has a timeout and a bounded number of retries; a 401 drops the token and retries once. One ScepActions call,
with the token and discovery requests it needs and all their retries, ends within ``deadline_seconds``.
"""
from __future__ import annotations

import asyncio
import base64
import time
import uuid
from datetime import timezone
from typing import Any

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .config import IntuneSettings, outbound_url
from .http import ResponseTooLarge, header_safe, json_object

log = structlog.get_logger("challenge.intune")

CALLER = "scep-server"
E_FAIL = 0x80004005  # HRESULT reported with failureNotification


class IntuneRejected(Exception):
    """Intune answered with a code other than Success."""

    def __init__(self, code: str, description: str):
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description


class IntuneUnavailable(Exception):
    """Intune (or its token or discovery endpoint) could not be reached or answered nonsense."""


class _Retryable(Exception):
    pass


class IntuneClient:
    def __init__(self, settings: IntuneSettings, session: aiohttp.ClientSession):
        self.settings = settings
        self.session = session
        self._tokens: dict[str, tuple[str, float]] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}
        self._service: tuple[str, float] | None = None
        self._discovery_lock = asyncio.Lock()
        self.token_requests = 0
        self.discovery_requests = 0

    # ------------------------------------------------------------------ token and discovery

    async def _json(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        """The answer's JSON object ({} if it is none), read up to `max_response_bytes`."""
        try:
            return await json_object(resp, self.settings.max_response_bytes) or {}
        except ResponseTooLarge as exc:
            raise IntuneUnavailable(f"{resp.url.host}: {exc}") from None

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.settings.timeout_seconds)

    async def _token(self, scope: str) -> str:
        hit = self._tokens.get(scope)
        if hit and hit[1] > time.monotonic():
            return hit[0]
        async with self._token_locks.setdefault(scope, asyncio.Lock()):
            hit = self._tokens.get(scope)
            if hit and hit[1] > time.monotonic():
                return hit[0]
            s = self.settings
            url = f"{s.authority_url.rstrip('/')}/{s.tenant}/oauth2/v2.0/token"
            form = {"grant_type": "client_credentials", "client_id": s.client_id,
                    "client_secret": s.client_secret.read(), "scope": scope}

            async def once() -> dict[str, Any]:
                # never a redirect (every call here): the form holds the client secret, the calls the token
                async with self.session.post(url, data=form, timeout=self._timeout(),
                                             allow_redirects=False) as resp:
                    body = await self._json(resp)
                    if resp.status >= 500:
                        raise _Retryable(f"token endpoint answered HTTP {resp.status}")
                    if resp.status != 200 or "access_token" not in body:
                        raise IntuneUnavailable(f"token request refused (HTTP {resp.status}): "
                                                f"{body.get('error')}: {body.get('error_description', '')}"[:300])
                    if not header_safe(body["access_token"]):
                        raise IntuneUnavailable("token request: an access_token that cannot go in a header")
                    return body

            self.token_requests += 1
            body = await self._retrying("token", once)
            try:
                lifetime = min(max(float(body.get("expires_in", 3600)), 0.0), 86400.0)
            except (TypeError, ValueError, OverflowError):  # OverflowError: an integer of hundreds of digits
                lifetime = 0.0  # an unreadable lifetime: use the token once
            # refresh a little before the expiry (a tenth of the lifetime, at most a minute)
            self._tokens[scope] = (body["access_token"], time.monotonic() + lifetime - min(60.0, lifetime / 10))
            return body["access_token"]

    def _drop_token(self, scope: str) -> None:
        self._tokens.pop(scope, None)

    async def service_uri(self) -> str:
        hit = self._service
        if hit and hit[1] > time.monotonic():
            return hit[0]
        async with self._discovery_lock:
            hit = self._service
            if hit and hit[1] > time.monotonic():
                return hit[0]
            s = self.settings
            scope = s.graph_url.rstrip("/") + "/.default"
            url = f"{s.graph_url.rstrip('/')}/v1.0/servicePrincipals/appId={s.intune_app_id}/endpoints"

            async def once() -> dict[str, Any]:
                token = await self._token(scope)
                async with self.session.get(url, headers={"Authorization": f"Bearer {token}"},
                                            timeout=self._timeout(), allow_redirects=False) as resp:
                    body = await self._json(resp)
                    if resp.status == 401:
                        self._drop_token(scope)
                        raise _Retryable("Graph refused the token (HTTP 401)")
                    if resp.status >= 500:
                        raise _Retryable(f"Graph answered HTTP {resp.status}")
                    if resp.status != 200:
                        raise IntuneUnavailable(f"service discovery failed (HTTP {resp.status})")
                    return body

            self.discovery_requests += 1
            body = await self._retrying("discovery", once)
            endpoints = body.get("value")
            for ep in endpoints if isinstance(endpoints, list) else ():
                if not isinstance(ep, dict) or not isinstance(ep.get("uri"), str):
                    continue
                if s.service_name in (ep.get("providerName"), ep.get("serviceName")) and ep.get("uri"):
                    try:  # a bearer token and the device's CSR go there
                        uri = outbound_url(ep["uri"], "the discovered service endpoint")
                    except ValueError as exc:
                        raise IntuneUnavailable(f"service discovery: {exc}") from None
                    self._service = (uri, time.monotonic() + s.discovery_cache_seconds)
                    return uri
            raise IntuneUnavailable(f"service discovery did not list {s.service_name}")

    # ------------------------------------------------------------------ ScepActions

    async def _action(self, action: str, payload: dict[str, Any], transaction_id: str) -> dict[str, Any]:
        s = self.settings
        # the resource URI keeps its trailing slash: "https://api.manage.microsoft.com//.default"
        scope = s.intune_resource + "/.default"

        async def once() -> dict[str, Any]:
            base = await self.service_uri()
            token = await self._token(scope)
            headers = {"Authorization": f"Bearer {token}", "api-version": s.api_version,
                       "client-request-id": str(uuid.uuid4()), "Content-Type": "application/json"}
            try:
                async with self.session.post(f"{base}/ScepActions/{action}", json=payload, headers=headers,
                                             timeout=self._timeout(), allow_redirects=False) as resp:
                    body = await self._json(resp)
                    if resp.status == 401:
                        self._drop_token(scope)
                        raise _Retryable(f"{action}: the token was refused (HTTP 401)")
                    if resp.status == 404:
                        self._service = None  # rediscover: the service may have moved
                        raise _Retryable(f"{action}: HTTP 404 at the discovered endpoint")
                    if resp.status >= 500 or resp.status == 429:
                        raise _Retryable(f"{action}: HTTP {resp.status}")
                    if resp.status != 200:
                        raise IntuneUnavailable(f"{action}: HTTP {resp.status}")
                    return body
            except aiohttp.ClientConnectionError:
                self._service = None
                raise

        # never shorter than one call's own time-out: a profile whose timeout_seconds is longer (up to 120) had each
        # call wait that long, and a slow but answering Intune enrols as it did
        deadline = max(s.deadline_seconds, s.timeout_seconds)
        try:
            async with asyncio.timeout(deadline):
                body = await self._retrying(action, once)
        except TimeoutError:  # the deadline's (a call's own time-out is retried, then IntuneUnavailable)
            raise IntuneUnavailable(f"{action}: no answer within the deadline of {deadline:g}s (token, "
                                    f"service discovery and retries included)") from None
        code = str(body.get("code", ""))[:100]
        # the peer's value as bounded text: a structure nested deep enough cannot be rendered into the log line
        description = str(body.get("errorDescription") or "")[:300]
        log.info("intune.action", action=action, transaction_id=transaction_id, code=code or None,
                 description=description or None)
        if code != "Success":
            raise IntuneRejected(code or "NoCode", description)
        return body

    async def _retrying(self, what: str, once):
        attempts = self.settings.retries + 1
        last: str = ""
        for attempt in range(attempts):
            try:
                return await once()
            except (_Retryable, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                last = str(exc) or type(exc).__name__
                if isinstance(exc, asyncio.TimeoutError):
                    last = f"timed out after {self.settings.timeout_seconds:g}s"
                log.warning("intune.retry", what=what, attempt=attempt + 1, of=attempts, error=last)
                if attempt + 1 < attempts:
                    await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))
        raise IntuneUnavailable(f"{what}: {last} ({attempts} attempt{'s' if attempts > 1 else ''})")

    async def validate(self, transaction_id: str, csr_der: bytes) -> None:
        await self._action("validateRequest", {"request": {
            "transactionId": transaction_id, "certificateRequest": base64.b64encode(csr_der).decode(),
            "callerInfo": CALLER}}, transaction_id)

    async def success(self, transaction_id: str, csr_der: bytes, cert: x509.Certificate, issuer: str,
                      ca_name: str) -> None:
        await self._action("successNotification", {"notification": {
            "transactionId": transaction_id, "certificateRequest": base64.b64encode(csr_der).decode(),
            "certificateThumbprint": cert.fingerprint(hashes.SHA1()).hex().upper(),
            "certificateSerialNumber": f"{cert.serial_number:x}",
            "certificateExpirationDateUtc": cert.not_valid_after_utc.astimezone(timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.0000000Z"),
            "issuingCertificateAuthority": issuer, "callerInfo": CALLER,
            "caConfiguration": ca_name, "certificateAuthority": ca_name}}, transaction_id)

    async def failure(self, transaction_id: str, csr_der: bytes, description: str, hresult: int = E_FAIL) -> None:
        await self._action("failureNotification", {"notification": {
            "transactionId": transaction_id, "certificateRequest": base64.b64encode(csr_der).decode(),
            "hResult": hresult, "errorDescription": description[:255], "callerInfo": CALLER}}, transaction_id)



