"""Real HTTP peers on loopback ports: Microsoft's token endpoint, Graph service discovery and Intune's
ScepActions (as documented in "Use APIs to add third-party CAs for SCEP to Intune" and Microsoft's
Intune-Resource-Access sample), and a generic validation webhook receiver."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from tests.server import free_port

INTUNE_APP_ID = "0000000a-0000-0000-c000-000000000000"
TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "entra-app-secret"
GRAPH_SCOPE = "{base}/.default"
INTUNE_RESOURCE = "https://api.manage.microsoft.com/"
INTUNE_SCOPE = INTUNE_RESOURCE + "/.default"


class Peer:
    """An aiohttp application on a free loopback port for the duration of ``async with``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def __aenter__(self):
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()


@dataclass
class FakeIntune(Peer):
    """Entra token endpoint + Graph discovery + Intune ScepActions in one server."""

    token_lifetime: int = 3600
    codes: dict[str, str] = field(default_factory=lambda: {"validateRequest": "Success",
                                                             "successNotification": "Success",
                                                             "failureNotification": "Success"})
    delays: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, dict, dict]] = field(default_factory=list)
    token_requests: list[str] = field(default_factory=list)
    discovery_requests: int = 0
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (scope, expiry)
    padding: int = 0  # bytes of filler in every ScepActions answer
    chunked: bool = False  # answer without Content-Length
    service_uri: str | None = None  # the endpoint discovery names (default: this server)

    def __post_init__(self) -> None:
        Peer.__init__(self)

    @property
    def graph_scope(self) -> str:
        return f"{self.url}/.default"

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def _check(self, request: web.Request, scope: str) -> web.Response | None:
        kind, _, token = request.headers.get("Authorization", "").partition(" ")
        hit = self.tokens.get(token) if kind == "Bearer" else None
        if hit is None or hit[0] != scope or hit[1] <= time.monotonic():
            return web.json_response({"error": {"code": "InvalidAuthenticationToken"}}, status=401)
        return None

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.match_info["tenant"] != TENANT:
            return web.json_response({"error": "invalid_tenant"}, status=400)
        if (form.get("grant_type") != "client_credentials" or form.get("client_id") != CLIENT_ID
                or form.get("client_secret") != CLIENT_SECRET):
            return web.json_response({"error": "invalid_client", "error_description": "AADSTS7000215"}, status=401)
        scope = form.get("scope")
        if scope not in (INTUNE_SCOPE, self.graph_scope):
            return web.json_response({"error": "invalid_scope"}, status=400)
        self.token_requests.append(scope)
        token = secrets.token_urlsafe(24)
        self.tokens[token] = (scope, time.monotonic() + self.token_lifetime)
        return web.json_response({"token_type": "Bearer", "expires_in": self.token_lifetime,
                                  "ext_expires_in": self.token_lifetime, "access_token": token})

    async def endpoints(self, request: web.Request) -> web.Response:
        if (denied := self._check(request, self.graph_scope)) is not None:
            return denied
        self.discovery_requests += 1
        return web.json_response({"@odata.context": "...", "value": [
            {"id": str(uuid.uuid4()), "capability": "Other", "providerId": None, "providerName": "RACerts",
             "providerResourceId": None, "uri": f"{self.url}/other"},
            {"id": str(uuid.uuid4()), "capability": "ScepRequestValidationFEService", "providerId": None,
             "providerName": "ScepRequestValidationFEService", "providerResourceId": None,
             "uri": self.service_uri or f"{self.url}/ScepRequestValidationFEService/"}]})

    async def action(self, request: web.Request) -> web.Response:
        name = request.match_info["action"]
        if (denied := self._check(request, INTUNE_SCOPE)) is not None:
            return denied
        if request.headers.get("api-version") != "2018-02-20" or not request.headers.get("client-request-id"):
            return web.json_response({"code": "BadRequest"}, status=400)
        body = await request.json()
        self.calls.append((name, body, dict(request.headers)))
        if name in self.delays:
            await asyncio.sleep(self.delays[name])
        code = self.codes.get(name, "Success")
        if code.startswith("HTTP"):
            return web.Response(status=int(code[4:]), text="unavailable")
        answer = {"code": code, "errorDescription": "" if code == "Success" else f"{code} (test)"}
        if self.padding:
            answer["padding"] = "x" * self.padding
        return await _answer(request, answer, self.chunked)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)
        app.router.add_get(f"/v1.0/servicePrincipals/appId={INTUNE_APP_ID}/endpoints", self.endpoints)
        app.router.add_post("/ScepRequestValidationFEService/ScepActions/{action}", self.action)
        return app

    def actions(self) -> list[str]:
        return [c[0] for c in self.calls]


WEBHOOK_SECRET = "webhook-hmac-secret"


@dataclass
class WebhookReceiver(Peer):
    """Allows challenges listed in ``allowed``; checks the HMAC signature of every request."""

    allowed: set[str] = field(default_factory=set)
    delay: float = 0.0
    notify_status: int = 200
    received: list[dict] = field(default_factory=list)
    bad_signatures: int = 0
    padding: int = 0  # bytes of filler in every answer
    chunked: bool = False  # answer without Content-Length

    def __post_init__(self) -> None:
        Peer.__init__(self)

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        want = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, request.headers.get("X-Signature", "")):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        payload = json.loads(body)
        self.received.append(payload)
        if self.delay:
            await asyncio.sleep(self.delay)
        if payload["type"] != "scep.challenge":
            return web.json_response({}, status=self.notify_status)
        csr = payload["x509CertificateRequest"]
        assert base64.b64decode(csr["raw"])
        if payload["challenge"] in self.allowed:
            if self.padding:
                return await _answer(request, {"allow": True, "padding": "x" * self.padding}, self.chunked)
            return web.json_response({"allow": True})
        return web.json_response({"allow": False, "error": {"message": f"device {csr['commonName']} is unknown"}})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        return app

    def types(self) -> list[str]:
        return [r["type"] for r in self.received]


async def _answer(request: web.Request, payload: dict, chunked: bool) -> web.StreamResponse:
    body = json.dumps(payload).encode()
    if not chunked:
        return web.Response(body=body, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(0, len(body), 8192):
        await resp.write(body[i:i + 8192])
    await resp.write_eof()
    return resp
