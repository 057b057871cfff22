"""Reading an MDM's device inventory: Jamf Pro API and Microsoft Graph (Intune managed devices, Entra ID devices).

Both authenticate with OAuth 2.0 client credentials; every answer is read up to a cap and every fault (refused
token, HTTP error, unreadable page, more pages than allowed) is an :class:`MdmUnavailable`, so that a sync that
could not read the whole inventory changes nothing.

Jamf Pro (API roles and clients: "Read Computers", "Read Mobile Devices"):

    POST {url}/api/oauth/token  (client_id, client_secret, grant_type=client_credentials)
    GET  {url}/api/v1/computers-inventory?section=GENERAL&section=HARDWARE&page=N&page-size=P
         results[]: id, udid, general.name, general.remoteManagement.managed, hardware.serialNumber
    GET  {url}/api/v2/mobile-devices/detail?section=GENERAL&section=HARDWARE&page=N&page-size=P
         results[]: mobileDeviceId, general.udid, general.displayName, general.managed, hardware.serialNumber

Microsoft Graph (application permissions DeviceManagementManagedDevices.Read.All and Device.Read.All):

    POST {authority}/{tenant}/oauth2/v2.0/token  (scope https://graph.microsoft.com/.default)
    GET  {graph}/v1.0/deviceManagement/managedDevices?$select=id,azureADDeviceId,serialNumber,deviceName
         value[], @odata.nextLink
    GET  {graph}/v1.0/devices/delta?$select=deviceId,accountEnabled   value[] (@removed), @odata.nextLink,
         @odata.deltaLink (kept: the next sync reads only what changed in Entra ID)
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp

from ..challenge.http import ResponseTooLarge, json_object
from .plan import MdmState, Record

MAX_RESPONSE = 8 * 1024 * 1024  # one page of an inventory
MAX_PAGES = 10_000  # 1,000,000 devices at 100 per page
PAGE_SIZE = 100


class MdmUnavailable(Exception):
    """The MDM could not be read (in full); nothing is changed."""


@dataclass
class Credentials:
    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None


class _OAuthClient:
    def __init__(self, session: aiohttp.ClientSession, credentials: Credentials, *, timeout: float = 30.0):
        self.session = session
        self.credentials = credentials
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._token: tuple[str, float] | None = None
        self.requests = 0

    async def _read(self, resp: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
        try:
            body = await json_object(resp, MAX_RESPONSE)
        except ResponseTooLarge as exc:
            raise MdmUnavailable(f"{what}: {exc}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # TimeoutError: the total timeout
            raise MdmUnavailable(f"{what}: {type(exc).__name__}") from None
        if resp.status != 200 or body is None:
            raise MdmUnavailable(f"{what}: HTTP {resp.status}" + ("" if body is not None else " (not a JSON object)"))
        return body

    async def token(self) -> str:
        if self._token and self._token[1] > time.monotonic():
            return self._token[0]
        c = self.credentials
        form = {"grant_type": "client_credentials", "client_id": c.client_id, "client_secret": c.client_secret}
        if c.scope:
            form["scope"] = c.scope
        try:
            async with self.session.post(c.token_url, data=form, timeout=self.timeout) as resp:
                body = await self._read(resp, "token request")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # TimeoutError: the total timeout
            raise MdmUnavailable(f"token request: {type(exc).__name__}") from None
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise MdmUnavailable("token request: no access_token in the answer")
        try:
            lifetime = min(max(float(body.get("expires_in", 300)), 0.0), 86400.0)
        except (TypeError, ValueError):
            lifetime = 0.0
        self._token = (token, time.monotonic() + lifetime - min(30.0, lifetime / 10))
        return token

    async def get(self, url: str, params: Any = None) -> dict[str, Any]:
        self.requests += 1
        headers = {"Authorization": f"Bearer {await self.token()}", "Accept": "application/json"}
        try:
            async with self.session.get(url, params=params, headers=headers, timeout=self.timeout,
                                        allow_redirects=False) as resp:
                return await self._read(resp, f"GET {url.split('?')[0]}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # TimeoutError: the total timeout
            raise MdmUnavailable(f"GET {url.split('?')[0]}: {type(exc).__name__}") from None


def _text(value: Any, limit: int = 255) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _dig(item: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(item, dict):
            return None
        item = item.get(key)
    return item


class JamfClient(_OAuthClient):
    """Computers and mobile devices of a Jamf Pro server; `id_field` is `udid` or `serial_number`."""

    def __init__(self, session: aiohttp.ClientSession, url: str, client_id: str, client_secret: str, *,
                 id_field: str = "udid", timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.id_field = id_field
        super().__init__(session, Credentials(f"{self.url}/api/oauth/token", client_id, client_secret),
                         timeout=timeout)

    async def _pages(self, path: str) -> AsyncIterator[dict]:
        seen = 0
        for page in range(MAX_PAGES):
            body = await self.get(f"{self.url}{path}", params=[("section", "GENERAL"), ("section", "HARDWARE"),
                                                              ("page", str(page)), ("page-size", str(PAGE_SIZE))])
            results = body.get("results")
            total = body.get("totalCount")
            if not isinstance(results, list) or not isinstance(total, int):
                raise MdmUnavailable(f"{path}: an answer without results and totalCount")
            for item in results:
                if isinstance(item, dict):
                    yield item
            seen += len(results)
            if seen >= total:
                return
            if not results:  # a listing that stops short: the devices it leaves out must not look gone
                raise MdmUnavailable(f"{path}: an empty page after {seen} of {total} devices")
        raise MdmUnavailable(f"{path}: more than {MAX_PAGES} pages")

    def _record(self, mdm_id: Any, udid: Any, serial: Any, name: Any, managed: Any) -> Record | None:
        key = udid if self.id_field == "udid" else serial
        if not isinstance(key, str) or not key:
            return None
        state = MdmState.MANAGED if managed is True else MdmState.UNMANAGED
        return Record(device_id=key, mdm_id=_text(str(mdm_id) if mdm_id is not None else ""), state=state,
                      name=_text(name))

    async def inventory(self) -> list[Record]:
        records: list[Record] = []
        async for c in self._pages("/api/v1/computers-inventory"):
            r = self._record(c.get("id"), c.get("udid"), _dig(c, "hardware", "serialNumber"),
                             _dig(c, "general", "name"), _dig(c, "general", "remoteManagement", "managed"))
            if r is not None:
                records.append(r)
        async for m in self._pages("/api/v2/mobile-devices/detail"):
            r = self._record(m.get("mobileDeviceId"), _dig(m, "general", "udid"), _dig(m, "hardware", "serialNumber"),
                             _dig(m, "general", "displayName"), _dig(m, "general", "managed"))
            if r is not None:
                records.append(r)
        return records


class GraphClient(_OAuthClient):
    """Intune managed devices and Entra ID devices; `id_field` is `device_id` (Intune's managed device id, the
    `{{DeviceId}}` profile variable), `azure_ad_device_id` (`{{AAD_Device_ID}}`) or `serial_number`."""

    def __init__(self, session: aiohttp.ClientSession, tenant: str, client_id: str, client_secret: str, *,
                 authority_url: str = "https://login.microsoftonline.com",
                 graph_url: str = "https://graph.microsoft.com", id_field: str = "device_id", timeout: float = 30.0):
        self.graph = graph_url.rstrip("/")
        self.id_field = id_field
        super().__init__(session, Credentials(f"{authority_url.rstrip('/')}/{tenant}/oauth2/v2.0/token", client_id,
                                              client_secret, scope="https://graph.microsoft.com/.default"),
                         timeout=timeout)

    async def _follow(self, url: str, params: Any = None) -> AsyncIterator[dict]:
        """Every item of a paged Graph collection; the last page's body is returned through `self.last`."""
        for _ in range(MAX_PAGES):
            body = await self.get(url, params)
            params = None  # a next link carries its query
            value = body.get("value")
            if not isinstance(value, list):
                raise MdmUnavailable(f"{url.split('?')[0]}: an answer without value")
            for item in value:
                if isinstance(item, dict):
                    yield item
            nxt = body.get("@odata.nextLink")
            if not isinstance(nxt, str):
                self.last = body
                return
            if not nxt.startswith(self.graph + "/"):
                raise MdmUnavailable("a next link outside the Graph endpoint")
            url = nxt
        raise MdmUnavailable(f"more than {MAX_PAGES} pages")

    async def managed_devices(self) -> list[dict]:
        url = f"{self.graph}/v1.0/deviceManagement/managedDevices"
        return [d async for d in self._follow(url, {"$select": "id,azureADDeviceId,serialNumber,deviceName"})]

    async def entra_changes(self, delta_link: str | None) -> tuple[dict[str, bool | None], str | None]:
        """Entra device id -> accountEnabled (None: removed) since `delta_link` (everything when None), and the
        delta link to start from next time."""
        if delta_link is not None and not delta_link.startswith(self.graph + "/"):
            delta_link = None
        url = delta_link or f"{self.graph}/v1.0/devices/delta"
        params = None if delta_link else {"$select": "deviceId,accountEnabled"}
        out: dict[str, bool | None] = {}
        async for d in self._follow(url, params):
            device_id = d.get("deviceId")
            if not isinstance(device_id, str):
                continue
            out[device_id] = None if "@removed" in d else d.get("accountEnabled") is not False
        link = self.last.get("@odata.deltaLink")
        return out, link if isinstance(link, str) else None

    def records(self, managed: list[dict], enabled: dict[str, bool]) -> list[Record]:
        """Records of the managed devices; one whose Entra device is disabled is `disabled`."""
        out = []
        for d in managed:
            aad = d.get("azureADDeviceId")
            key = {"device_id": d.get("id"), "azure_ad_device_id": aad, "serial_number": d.get("serialNumber")}[
                self.id_field]
            if not isinstance(key, str) or not key:
                continue
            state = MdmState.DISABLED if isinstance(aad, str) and enabled.get(aad) is False else MdmState.MANAGED
            out.append(Record(device_id=key, mdm_id=_text(d.get("id")), state=state, name=_text(d.get("deviceName"))))
        return out
