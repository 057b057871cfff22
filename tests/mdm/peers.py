"""Local stand-ins for Jamf Pro and Microsoft Graph: the API shapes the sync reads, OAuth client credentials,
paging, and Jamf's webhook posts (sent the way Jamf Pro sends them)."""
from __future__ import annotations

import base64
import itertools
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

CLIENT_ID, CLIENT_SECRET = "client-1", "s3cret-of-the-api-client"


@dataclass
class JamfPeer:
    computers: dict[str, dict] = field(default_factory=dict)  # udid -> {"managed", "serial", "name", "id"}
    mobiles: dict[str, dict] = field(default_factory=dict)
    page_size_seen: list[int] = field(default_factory=list)
    fail_with: int | None = None  # answer inventory pages with this status
    _ids = itertools.count(1)
    _token = "jamf-token"

    def computer(self, udid: str, *, managed: bool = True, serial: str = "C02XYZ") -> None:
        self.computers[udid] = {"id": str(next(self._ids)), "managed": managed, "serial": serial, "name": udid[:8]}

    def mobile(self, udid: str, *, managed: bool = True, serial: str = "DMPXYZ") -> None:
        self.mobiles[udid] = {"id": str(next(self._ids)), "managed": managed, "serial": serial, "name": udid[:8]}

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            form = await request.post()
            if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
                    "client_credentials", CLIENT_ID, CLIENT_SECRET):
                return web.json_response({"error": "invalid_client"}, status=401)
            return web.json_response({"access_token": self._token, "token_type": "Bearer", "expires_in": 60})

        def authorised(request: web.Request) -> bool:
            return request.headers.get("Authorization") == f"Bearer {self._token}"

        def page(request: web.Request, items: list[dict]) -> web.Response:
            if not authorised(request):
                return web.json_response({"httpStatus": 401}, status=401)
            if self.fail_with:
                return web.json_response({"httpStatus": self.fail_with}, status=self.fail_with)
            n, size = int(request.query["page"]), int(request.query["page-size"])
            assert request.query.getall("section") == ["GENERAL", "HARDWARE"]
            self.page_size_seen.append(size)
            return web.json_response({"totalCount": len(items), "results": items[n * size:(n + 1) * size]})

        async def computers(request: web.Request) -> web.Response:
            return page(request, [{"id": c["id"], "udid": udid,
                                   "general": {"name": c["name"], "remoteManagement": {"managed": c["managed"]}},
                                   "hardware": {"serialNumber": c["serial"]}}
                                  for udid, c in self.computers.items()])

        async def mobiles(request: web.Request) -> web.Response:
            return page(request, [{"mobileDeviceId": m["id"], "deviceType": "iOS",
                                   "general": {"udid": udid, "displayName": m["name"], "managed": m["managed"]},
                                   "hardware": {"serialNumber": m["serial"]}}
                                  for udid, m in self.mobiles.items()])

        app = web.Application()
        app.router.add_post("/api/oauth/token", token)
        app.router.add_get("/api/v1/computers-inventory", computers)
        app.router.add_get("/api/v2/mobile-devices/detail", mobiles)
        return app


async def jamf_webhook(session: aiohttp.ClientSession, url: str, event: str, udid: str, *, secret: str | None,
                       header: bool = False, serial: str = "DMPXYZ", at_ms: int | None = None) -> tuple[int, dict]:
    """Post one webhook as Jamf Pro does (Basic authentication, or header authentication), dated now (Jamf's
    clock: the real one, ahead of the tests' settable clocks) unless `at_ms` is given."""
    stamp = at_ms if at_ms is not None else int(time.time() * 1000)
    body = {"webhook": {"id": 7, "name": "device trust", "webhookEvent": event, "eventTimestamp": stamp},
            "event": {"udid": udid, "serialNumber": serial, "jssID": 42, "deviceName": "iPad"}}
    headers = {}
    if secret is not None:
        headers = {"X-Webhook-Secret": secret} if header else {
            "Authorization": "Basic " + base64.b64encode(f"jamf:{secret}".encode()).decode()}
    async with session.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


@dataclass
class GraphPeer:
    """Intune's managedDevices (paged by @odata.nextLink) and Entra ID's devices/delta."""
    tenant: str = "contoso.example"
    managed: dict[str, dict] = field(default_factory=dict)  # Intune device id -> {"aad", "serial", "name"}
    entra: dict[str, bool] = field(default_factory=dict)  # Entra device id -> accountEnabled
    page_size: int = 2
    delta_requests: list[str] = field(default_factory=list)  # "full" | "delta"
    _version: int = 0
    _changes: list[tuple[int, str]] = field(default_factory=list)  # (version, entra id) changed since
    _token = "graph-token"

    def device(self, intune_id: str, aad: str, *, enabled: bool = True) -> None:
        self.managed[intune_id] = {"aad": aad, "serial": f"SN{intune_id[:6]}", "name": f"pc-{intune_id[:4]}"}
        self.set_enabled(aad, enabled)

    def set_enabled(self, aad: str, enabled: bool) -> None:
        self._version += 1
        self.entra[aad] = enabled
        self._changes.append((self._version, aad))

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            form = await request.post()
            if request.match_info["tenant"] != self.tenant or form.get("client_secret") != CLIENT_SECRET or \
                    form.get("scope") != "https://graph.microsoft.com/.default":
                return web.json_response({"error": "invalid_client"}, status=401)
            return web.json_response({"access_token": self._token, "token_type": "Bearer", "expires_in": 3599})

        def authorised(request: web.Request) -> bool:
            return request.headers.get("Authorization") == f"Bearer {self._token}"

        async def managed(request: web.Request) -> web.Response:
            if not authorised(request):
                return web.json_response({"error": {"code": "InvalidAuthenticationToken"}}, status=401)
            skip = int(request.query.get("$skiptoken", "0"))
            items = [{"id": i, "azureADDeviceId": d["aad"], "serialNumber": d["serial"], "deviceName": d["name"]}
                     for i, d in self.managed.items()]
            body: dict = {"value": items[skip:skip + self.page_size]}
            if skip + self.page_size < len(items):
                body["@odata.nextLink"] = (f"{request.url.origin()}/v1.0/deviceManagement/managedDevices"
                                           f"?$skiptoken={skip + self.page_size}")
            return web.json_response(body)

        async def delta(request: web.Request) -> web.Response:
            if not authorised(request):
                return web.json_response({"error": {"code": "InvalidAuthenticationToken"}}, status=401)
            since = request.query.get("$deltatoken")
            if since is None:
                self.delta_requests.append("full")
                value = [{"deviceId": aad, "accountEnabled": on} for aad, on in self.entra.items()]
            else:
                self.delta_requests.append("delta")
                changed = {aad for v, aad in self._changes if v > int(since)}
                value = [{"deviceId": aad, "accountEnabled": self.entra[aad]} for aad in sorted(changed)]
            return web.json_response({"value": value, "@odata.deltaLink":
                                      f"{request.url.origin()}/v1.0/devices/delta?$deltatoken={self._version}"})

        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
        app.router.add_get("/v1.0/deviceManagement/managedDevices", managed)
        app.router.add_get("/v1.0/devices/delta", delta)
        return app
