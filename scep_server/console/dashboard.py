"""What the console's dashboard shows: each CA (certificate and RA certificate expiry, the CRL's number, updates,
entries and re-sign state), each readiness check, and charts of the last 7 days:

- enrolments per hour, by state: the enrolments recorded (``scep_transactions``), by the hour they came in and
  their state now (issued, pending, rejected, awaiting_ack). A request refused before it is recorded (a wrong
  challenge, a policy refusal) is not one: those show in the ``scep.transaction`` log and the metrics;
- OTP verifications per hour, by protocol 2.0 status (both APIs): the OTP factor's hourly counts
  (``otp_verify_counts``), written by each process every minute.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError

from ..ca.overview import overview
from ..web.health import check_details
from .charts import HOUR, hour_floor, hourly_series, stacked_bars

if TYPE_CHECKING:
    from ..runtime import Runtime

DAYS = 7
HOURS = DAYS * 24
CHART_TIMEOUT = 5.0  # seconds: a chart whose query takes longer is left out, as /readyz bounds its checks
EXPIRY_WARNING = timedelta(days=30)  # a certificate closer than this to its end is shown as a warning


def window(now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the charts: the 168 hours ending with the current one."""
    end = hour_floor(now) + HOUR
    return end - HOURS * HOUR, end


def expiry(not_after: str, now: datetime) -> dict[str, Any]:
    """How far a certificate is from its end: days left (negative once past), and "ok", "soon" or "expired"."""
    end = datetime.fromisoformat(not_after)
    left = end - now
    state = "expired" if left <= timedelta(0) else "soon" if left < EXPIRY_WARNING else "ok"
    return {"days": left.days, "state": state}


async def charts(runtime: "Runtime", now: datetime) -> dict[str, Any]:
    """The dashboard's charts: each its SVG element or the reason it cannot be drawn now (the database failing or
    slow: the rest of the dashboard is still shown); the OTP one None when the factor is off."""
    from ..challenge.service import enrolment_counts

    start, end = window(now)

    async def enrolments() -> Markup:
        rows = await enrolment_counts(runtime.engine, start, end)
        return stacked_bars("Enrolments per hour, by state (last 7 days, UTC)", start, HOURS,
                            hourly_series(rows, start, HOURS), chart_id="chart-enrolments")

    async def otp() -> Markup:
        assert runtime.otp is not None
        rows = [(hour, status, n) for hour, _api, status, n in await runtime.otp.verify_counts(start, end)]
        return stacked_bars("OTP verifications per hour, by status (last 7 days, UTC)", start, HOURS,
                            hourly_series(rows, start, HOURS), chart_id="chart-otp")

    drawn = await asyncio.gather(_drawn(enrolments), *([_drawn(otp)] if runtime.otp is not None else []))
    return {"start": start, "end": end, "enrolments": drawn[0], "otp": drawn[1] if len(drawn) > 1 else None}


async def _drawn(draw: Callable[[], Awaitable[Markup]]) -> dict[str, Any]:
    """{"svg": the chart, "error": None}, or {"svg": None, "error": why it cannot be drawn now}."""
    try:
        async with asyncio.timeout(CHART_TIMEOUT):
            return {"svg": await draw(), "error": None}
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return {"svg": None, "error": f"cannot be drawn now ({exc.__class__.__name__})"}


async def dashboard_context(runtime: "Runtime") -> dict[str, Any]:
    """The dashboard page's context."""
    now = runtime.clock()
    cas, checks, drawn = await asyncio.gather(overview(runtime.cas, runtime.crl), check_details(runtime),
                                              charts(runtime, now))
    for ca in cas:
        ca["expiry"] = expiry(ca["certificate"]["not_after"], now)
        ca["ra_expiry"] = expiry(ca["ra_certificate"]["not_after"], now)
    return {"cas": cas, "checks": sorted(checks.items()), "ready": all(v == "ok" for v in checks.values()),
            "charts": drawn}
