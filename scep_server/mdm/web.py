"""HTTP: Jamf Pro's webhooks, and the MDM sources of the admin API (`admin` token).

    POST /hooks/{source}                     a Jamf Pro webhook post (the source's webhook secret: the password of
                                             HTTP Basic, or the X-Webhook-Secret header)
    GET  /api/v1/mdm                         the configured sources
    GET  /api/v1/mdm/{source}                one source
    POST /api/v1/mdm/{source}/sync           {"dry_run"?: bool, "confirm_takedowns"?: int} -> the sync's report
                                             (409 when the brake held it or another sync of the source
                                             runs, 502 when the MDM could not be read)
    DELETE /api/v1/mdm/{source}              forget a source (devices keep their state)

Jamf Pro's webhook events and what they mean here (docs/mdm.md): MobileDeviceEnrolled, ComputerAdded,
MobileDeviceCheckIn and ComputerCheckIn say "managed"; MobileDeviceUnEnrolled says "no longer managed". Other
events are acknowledged and ignored (202), as is an event for a device this server does not know, or that another
source follows and this source's inventory has not listed.
"""
from __future__ import annotations

from datetime import datetime, timezone

from aiohttp import web

from trustkit.http import read_json_object
from trustkit.problems import BadRequest

from ..appkeys import RUNTIME
from ..binding.errors import InvalidInput
from ..web.auth import ACTOR, bad_webhook_secret, requires, webhook_secret
from .errors import DeviceNotListed, EventHeld, EventSuperseded, MdmSourceNotFound
from .plan import MdmState, Record
from .service import SOURCE_NAME, MdmService

MANAGED_EVENTS = frozenset({"MobileDeviceEnrolled", "ComputerAdded", "MobileDeviceCheckIn", "ComputerCheckIn"})
UNMANAGED_EVENTS = frozenset({"MobileDeviceUnEnrolled"})


def _service(request: web.Request) -> MdmService:
    return request.app[RUNTIME].mdm


def _source(request: web.Request) -> str:
    name = request.match_info["source"]
    if not SOURCE_NAME.fullmatch(name):
        raise MdmSourceNotFound(f"no MDM source {name[:40]!r}")
    return name


def _field(event: dict, key: str) -> str | None:
    value = event.get(key)
    return value if isinstance(value, str) and 0 < len(value) <= 255 else None


def _event_time(value: object, now: datetime) -> datetime | None:
    """Jamf's `webhook.eventTimestamp` (milliseconds since the epoch) as a time, or None. A time after `now` (a
    clock ahead, seconds read as milliseconds) is taken as `now`: it cannot make the device's later, real events
    look older than itself."""
    if type(value) is not int or not 0 < value < 253402300800000:  # before the year 10000
        return None
    return min(datetime.fromtimestamp(value / 1000, tz=timezone.utc), now)


async def jamf_webhook(request: web.Request) -> web.Response:
    name = request.match_info["source"]
    svc = _service(request)
    if not SOURCE_NAME.fullmatch(name):
        raise bad_webhook_secret("?")
    try:
        config = await svc.webhook_source(name, webhook_secret(request))
    except MdmSourceNotFound:
        raise bad_webhook_secret(name) from None
    if config["kind"] != "jamf":
        raise BadRequest("this source takes no webhooks")
    body = await read_json_object(request)  # a BadJSON is a 400
    hook = body.get("webhook") if isinstance(body.get("webhook"), dict) else {}
    event = body.get("event") if isinstance(body.get("event"), dict) else {}
    kind = hook.get("webhookEvent")
    if not isinstance(kind, str):
        kind = None  # a list or an object is no event name (and not hashable)
    if kind in MANAGED_EVENTS:
        state = MdmState.MANAGED
    elif kind in UNMANAGED_EVENTS:
        state = MdmState.UNMANAGED
    else:
        return web.json_response({"accepted": False, "reason": "event not used"}, status=202)
    key = _field(event, "udid") if config["id_field"] == "udid" else _field(event, "serialNumber")
    if key is None:
        raise BadRequest("the event names no device (udid / serialNumber)")
    mdm_id = event.get("jssID", event.get("id", ""))
    at = _event_time(hook.get("eventTimestamp"), svc.clock())
    try:
        change = await svc.event(name, Record(device_id=key, mdm_id=str(mdm_id)[:255], state=state), at=at)
    except EventSuperseded:
        return web.json_response({"accepted": False, "reason": "older than an event already applied"}, status=202)
    except EventHeld:
        return web.json_response({"accepted": False, "reason": "held by the brake: too many devices taken down by "
                                  "this source since its last sync interval began"}, status=202)
    except DeviceNotListed:
        return web.json_response({"accepted": False, "reason": "an unknown device, or another source's"},
                                 status=202)
    return web.json_response({"accepted": True, "device_id": key, "event": kind,
                              "change": change.to_json() if change else None})


@requires("admin")
async def list_sources(request: web.Request) -> web.Response:
    return web.json_response({"sources": await _service(request).sources()})


@requires("admin")
async def show_source(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).source(_source(request)))


@requires("admin")
async def sync_source(request: web.Request) -> web.Response:
    name = _source(request)
    body = await read_json_object(request, empty={})
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("dry_run: true or false")
    confirm = body.get("confirm_takedowns")
    if confirm is not None and (type(confirm) is not int or not 0 <= confirm <= 1_000_000):
        raise InvalidInput("confirm_takedowns: a number of devices, 0 to 1000000")
    report = await _service(request).sync(name, dry_run=dry_run, actor=request[ACTOR], confirm_takedowns=confirm)
    status = 502 if report.error is not None else 409 if report.held is not None and not dry_run else 200
    return web.json_response(report.to_json(), status=status)


@requires("admin")
async def remove_source(request: web.Request) -> web.Response:
    await _service(request).remove(_source(request), actor=request[ACTOR])
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/hooks/{source}", jamf_webhook)
    app.router.add_get("/api/v1/mdm", list_sources)
    app.router.add_get("/api/v1/mdm/{source}", show_source)
    app.router.add_post("/api/v1/mdm/{source}/sync", sync_source)
    app.router.add_delete("/api/v1/mdm/{source}", remove_source)
