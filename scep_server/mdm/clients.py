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
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import aiohttp

from ..challenge.http import ResponseTooLarge, header_safe, json_object
from .plan import MdmState, Record

MAX_RESPONSE = 8 * 1024 * 1024  # one page of an inventory
MAX_PAGES = 10_000  # 1,000,000 devices at 100 per page
MAX_RECORDS = 1_000_000  # devices of one listing; a peer that lists more is unreadable, not believed
PAGE_SIZE = 100
MANAGED_DEVICE_FIELDS = ("id", "azureADDeviceId", "serialNumber", "deviceName")  # what records are read from
# what a sync holds is bounded by its records, not by the size of the answers: a device id longer than ours (the
# devices table's 64 characters) names no device of ours and is not kept, nor is a longer Jamf id
MAX_ID = 64


class MdmUnavailable(Exception):
    """The MDM could not be read (in full); nothing is changed."""


@dataclass
class Credentials:
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)  # never in a log line, an error or a traceback that shows this object
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
            # never a redirect: the form holds the client secret, which goes to the token URL configured only
            async with self.session.post(c.token_url, data=form, timeout=self.timeout,
                                         allow_redirects=False) as resp:
                body = await self._read(resp, "token request")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # TimeoutError: the total timeout
            raise MdmUnavailable(f"token request: {type(exc).__name__}") from None
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise MdmUnavailable("token request: no access_token in the answer")
        if not header_safe(token):
            raise MdmUnavailable("token request: an access_token that cannot go in a header")
        try:
            lifetime = min(max(float(body.get("expires_in", 300)), 0.0), 86400.0)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer of hundreds of digits
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


def _kept(key: str, value: Any) -> Any:
    """What is kept of a Graph managed device's property: a string cut short (an id cut to one character more
    than ours still names none of our devices; the name to 255 characters), None, or False for anything else (not
    a string either, and no longer held)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return False
    return value[:255] if key == "deviceName" else value[:MAX_ID + 1]


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

    async def _pages(self, path: str, id_key: str) -> AsyncIterator[dict]:
        """Every record of a listing paged by offset. A listing that changes while it is read (records shift
        between pages when one is added or deleted) or repeats itself is unreadable, never a verdict: the
        devices it skipped would look gone. Each record must carry its Jamf id (`id_key`)."""
        ids: set[str] = set()
        first_total = None
        for page in range(MAX_PAGES):
            body = await self.get(f"{self.url}{path}", params=[("section", "GENERAL"), ("section", "HARDWARE"),
                                                              ("page", str(page)), ("page-size", str(PAGE_SIZE))])
            results = body.get("results")
            total = body.get("totalCount")
            if not isinstance(results, list) or not isinstance(total, int) or isinstance(total, bool):
                raise MdmUnavailable(f"{path}: an answer without results and totalCount")
            if total > MAX_RECORDS or len(results) > PAGE_SIZE:
                raise MdmUnavailable(f"{path}: a listing of {total} devices, {len(results)} on a page of "
                                     f"{PAGE_SIZE}")
            if first_total is None:
                first_total = total
            elif total != first_total:
                raise MdmUnavailable(f"{path}: the inventory changed while it was read ({first_total} then "
                                     f"{total} devices); read again at the next sync")
            for item in results:
                jamf_id = item.get(id_key) if isinstance(item, dict) else None
                if not isinstance(jamf_id, (str, int)) or isinstance(jamf_id, bool) or len(str(jamf_id)) > MAX_ID \
                        or str(jamf_id) in ids:
                    raise MdmUnavailable(f"{path}: a record without its {id_key}, one of more than {MAX_ID} "
                                         f"characters, or one listed twice")
                ids.add(str(jamf_id))
                yield item
            # the total only hints where the listing ends: it ends at a page that is not full, and then with
            # exactly the total (a total too small stopped the read early and made the later pages' devices
            # look gone; a listing that stops short leaves out devices that must not look gone either)
            if len(ids) > total:
                raise MdmUnavailable(f"{path}: more records than its total of {total} devices")
            if not results and len(ids) < total:
                raise MdmUnavailable(f"{path}: an empty page after {len(ids)} of {total} devices")
            if len(results) < PAGE_SIZE and len(ids) == total:
                return
        raise MdmUnavailable(f"{path}: more than {MAX_PAGES} pages")

    def _record(self, item: dict, mdm_id: Any, udid: Any, serial: Any, name: Any, managed: Any) -> Record | None:
        """A record's verdict. A record without the section its id or its managed flag is in (a section the API
        role cannot read, a renamed field) makes the listing unreadable: read as a verdict, it would take every
        device down. A record whose section is there but holds no such id names no device we can track."""
        if not isinstance(managed, bool):
            raise MdmUnavailable("a device record without its management state (the GENERAL section)")
        if self.id_field == "serial_number" and not isinstance(item.get("hardware"), dict):
            raise MdmUnavailable("a device record without its serial number (the HARDWARE section)")
        key = udid if self.id_field == "udid" else serial
        if not isinstance(key, str) or not key or len(key) > MAX_ID:
            return None
        state = MdmState.MANAGED if managed else MdmState.UNMANAGED
        return Record(device_id=key, mdm_id=_text(str(mdm_id) if mdm_id is not None else ""), state=state,
                      name=_text(name))

    async def inventory(self) -> list[Record]:
        records: list[Record] = []
        async for c in self._pages("/api/v1/computers-inventory", "id"):
            r = self._record(c, c.get("id"), c.get("udid"), _dig(c, "hardware", "serialNumber"),
                             _dig(c, "general", "name"), _dig(c, "general", "remoteManagement", "managed"))
            if r is not None:
                records.append(r)
        async for m in self._pages("/api/v2/mobile-devices/detail", "mobileDeviceId"):
            r = self._record(m, m.get("mobileDeviceId"), _dig(m, "general", "udid"), _dig(m, "hardware", "serialNumber"),
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
        """Every item of a paged Graph collection; the last page's body is returned through `self.last`. A next
        link seen before, or more than MAX_RECORDS items, makes the collection unreadable."""
        # the links followed, as digests: a next link may be as long as a page
        links, count = {hashlib.sha256(url.encode()).digest()}, 0
        for _ in range(MAX_PAGES):
            body = await self.get(url, params)
            params = None  # a next link carries its query
            value = body.get("value")
            if not isinstance(value, list):
                raise MdmUnavailable(f"{url.split('?')[0]}: an answer without value")
            count += len(value)
            if count > MAX_RECORDS:
                raise MdmUnavailable(f"{url.split('?')[0]}: more than {MAX_RECORDS} items")
            for item in value:
                if not isinstance(item, dict):
                    raise MdmUnavailable(f"{url.split('?')[0]}: an item that is not an object")
                yield item
            nxt = body.get("@odata.nextLink")
            if not isinstance(nxt, str):
                self.last = body
                return
            if not nxt.startswith(self.graph + "/"):
                raise MdmUnavailable("a next link outside the Graph endpoint")
            digest = hashlib.sha256(nxt.encode("utf-8", "surrogatepass")).digest()
            if digest in links:
                raise MdmUnavailable("a next link that was followed before")
            links.add(digest)
            url = nxt
        raise MdmUnavailable(f"more than {MAX_PAGES} pages")

    async def managed_devices(self) -> list[dict]:
        """The managed devices, each with the properties asked for only (a Graph that does not honour $select
        answers all of them: kept, they would hold kilobytes per device)."""
        url = f"{self.graph}/v1.0/deviceManagement/managedDevices"
        return [{k: _kept(k, d[k]) for k in MANAGED_DEVICE_FIELDS if k in d}
                async for d in self._follow(url, {"$select": ",".join(MANAGED_DEVICE_FIELDS)})]

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
            if not isinstance(device_id, str) or len(device_id) > MAX_ID:  # names no device we can track
                continue
            out[device_id] = None if "@removed" in d else d.get("accountEnabled") is not False
        link = self.last.get("@odata.deltaLink")
        return out, link if isinstance(link, str) else None

    def records(self, managed: list[dict], enabled: dict[str, bool]) -> list[Record]:
        """Records of the managed devices; one whose Entra device is disabled is `disabled`."""
        field_of = {"device_id": "id", "azure_ad_device_id": "azureADDeviceId", "serial_number": "serialNumber"}
        out = []
        for d in managed:
            # a record without its id or the field read (a $select Graph did not honour, an answer of another
            # shape) makes the listing unreadable: read as a verdict, every device would look gone
            if not isinstance(d.get("id"), str) or not d["id"] or field_of[self.id_field] not in d:
                raise MdmUnavailable(f"a managed device without its id or {field_of[self.id_field]}")
            aad = d.get("azureADDeviceId")
            key = d[field_of[self.id_field]]
            if key is not None and not isinstance(key, str):
                raise MdmUnavailable(f"a managed device whose {field_of[self.id_field]} is not a string")
            if not key or len(key) > MAX_ID:  # no such value (no serial number known), or one longer than ours:
                continue  # it names no device of ours
            state = MdmState.DISABLED if isinstance(aad, str) and enabled.get(aad) is False else MdmState.MANAGED
            out.append(Record(device_id=key, mdm_id=_text(d.get("id")), state=state, name=_text(d.get("deviceName"))))
        return out
