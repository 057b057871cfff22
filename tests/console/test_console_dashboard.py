"""The console's dashboard: each CA's expiry and CRL, and the charts of the last 7 days (server-side SVG: well
formed, labels escaped, one bar segment per hour and category with the right count). Runs on SQLite and
PostgreSQL."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest

from scep_server.console.charts import hourly_series, stacked_bars
from scep_server.console.dashboard import HOURS, expiry, window
from scep_server.store.tables import scep_transactions

SVG = "{http://www.w3.org/2000/svg}"
H = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)


def bars(svg: ET.Element) -> dict[tuple[str, str], int]:
    return {(r.get("data-hour"), r.get("data-category")): int(r.get("data-count"))
            for r in svg.iter(SVG + "rect") if r.get("class") == "bar"}


def legend(svg: ET.Element) -> dict[str, str]:
    return {t.get("data-category"): t.text for t in svg.iter(SVG + "text") if t.get("class") == "legend"}


def chart(page: str, chart_id: str) -> ET.Element:
    found = re.search(rf'<svg [^>]*id="{chart_id}".*?</svg>', page, re.S)
    assert found, chart_id
    return ET.fromstring(found.group(0))  # well-formed XML, or this raises


# ---- the chart module -------------------------------------------------------------------------------------

def test_hourly_series_buckets_rows_by_hour_and_ignores_rows_outside():
    rows = [(H, "a", 2), (H + timedelta(minutes=59), "a", 1), (H + timedelta(hours=2, minutes=1), "b", 4),
            (H - timedelta(seconds=1), "a", 100), (H + timedelta(hours=3), "a", 100)]
    assert hourly_series(rows, H, 3) == {"a": [3, 0, 0], "b": [0, 0, 4]}
    assert hourly_series([], H, 3) == {}


def test_the_svg_is_well_formed_and_escapes_every_label():
    hostile = '<script>alert("x")</script> & \'q\''
    svg_text = stacked_bars(f"Title {hostile}", H, 4, {hostile: [1, 0, 2, 0], "ok": [3, 1, 0, 0]},
                            chart_id="chart-test")
    assert "<script>" not in svg_text
    svg = ET.fromstring(str(svg_text))
    assert svg.tag == SVG + "svg" and svg.get("id") == "chart-test"
    assert svg.find(SVG + "title").text == f"Title {hostile}"
    assert bars(svg) == {(H.isoformat(), hostile): 1, (H.isoformat(), "ok"): 3,
                         ((H + timedelta(hours=1)).isoformat(), "ok"): 1,
                         ((H + timedelta(hours=2)).isoformat(), hostile): 2}
    assert legend(svg) == {hostile: f"{hostile}: 3", "ok": "ok: 4"}
    tips = [t.text for r in svg.iter(SVG + "rect") for t in r.iter(SVG + "title")]
    assert f"2026-11-23 12:00 UTC: {hostile} 2" in tips
    assert "style" not in str(svg_text)  # the console's CSP allows no inline style
    # stacked: the bars of one hour touch, the categories in name order from the bottom
    first = [r for r in svg.iter(SVG + "rect") if r.get("data-hour") == H.isoformat()]
    lower, upper = sorted(first, key=lambda r: -float(r.get("y")))
    assert float(upper.get("y")) + float(upper.get("height")) == pytest.approx(float(lower.get("y")), abs=0.11)
    assert (lower.get("data-category"), upper.get("data-category")) == (hostile, "ok")
    assert float(upper.get("height")) == pytest.approx(3 * float(lower.get("height")), rel=0.05)


def test_an_empty_chart_says_so():
    svg = ET.fromstring(str(stacked_bars("Nothing", H, 168, {}, chart_id="empty")))
    assert bars(svg) == {} and any("nothing recorded" in (t.text or "") for t in svg.iter(SVG + "text"))
    with pytest.raises(ValueError):
        stacked_bars("x", H, 1, {}, chart_id='"><x')


def test_the_window_is_the_168_hours_ending_with_this_one_and_expiry_is_in_days():
    start, end = window(H + timedelta(minutes=30))
    assert end == H + timedelta(hours=1) and end - start == timedelta(hours=HOURS) and HOURS == 168
    assert expiry((H + timedelta(days=400)).isoformat(), H) == {"days": 400, "state": "ok"}
    assert expiry((H + timedelta(days=10, hours=1)).isoformat(), H) == {"days": 10, "state": "soon"}
    assert expiry((H - timedelta(hours=1)).isoformat(), H)["state"] == "expired"


# ---- the page -----------------------------------------------------------------------------------------------

async def test_the_dashboard_charts_the_last_seven_days(console):
    rt = console.srv.runtime
    now = rt.clock()
    start, end = window(now)
    hour = start + timedelta(hours=100)

    def tx(name: str, state: str, at: datetime) -> dict:
        return dict(profile="p", transaction_id=name, state=state, message_type=19, csr_der=b"-",
                    public_key_sha256="0" * 64, created_at=at, updated_at=at)

    rows = [tx("a", "issued", hour), tx("b", "issued", hour + timedelta(minutes=59)),
            tx("c", "rejected", hour + timedelta(minutes=1)), tx("d", "pending", hour + timedelta(hours=1)),
            tx("old", "issued", start - timedelta(seconds=1)),  # before the window
            tx("e", "awaiting_ack", end - timedelta(seconds=1))]  # the current hour
    async with rt.engine.begin() as conn:
        await conn.execute(scep_transactions.insert(), rows)
    await rt.otp.store.add_verify_counts({(hour, "signin", "OK"): 5, (hour, "wsapi", "OK"): 2,
                                          (hour, "wsapi", "BAD_OTP"): 3,
                                          (start - timedelta(hours=1), "signin", "OK"): 50})
    cookie, _ = await console.sign_in()
    status, headers, page = await console.get("/admin/", cookie)
    assert status == 200 and "'unsafe-inline'" not in headers["Content-Security-Policy"]
    enrolments = chart(page, "chart-enrolments")
    iso = hour.isoformat()
    assert bars(enrolments) == {(iso, "issued"): 2, (iso, "rejected"): 1,
                                ((hour + timedelta(hours=1)).isoformat(), "pending"): 1,
                                ((end - timedelta(hours=1)).isoformat(), "awaiting_ack"): 1}
    assert legend(enrolments) == {"awaiting_ack": "awaiting_ack: 1", "issued": "issued: 2", "pending": "pending: 1",
                                  "rejected": "rejected: 1"}
    otp = chart(page, "chart-otp")
    assert bars(otp) == {(iso, "OK"): 7, (iso, "BAD_OTP"): 3}  # both APIs added up
    # verifications of this process are added to the chart once flushed
    key_rows = await rt.otp.verify_counts(start, end)
    await rt.otp.verify_signin("nobody", "cccccccccccc" + "c" * 32, source="192.0.2.9")
    await rt.otp.flush_verify_counts()
    assert len(await rt.otp.verify_counts(start, end)) == len(key_rows) + 1
    _, _, page = await console.get("/admin/", cookie)
    assert sum(n for (h, c), n in bars(chart(page, "chart-otp")).items() if c == "BAD_OTP") == 4


async def test_the_dashboard_shows_each_ca_s_expiry_and_crl(console):
    cookie, _ = await console.sign_in()
    status, _, page = await console.get("/admin/", cookie)
    assert status == 200
    ca = re.search(r'<section class="ca" id="ca-default">(.*?)</section>', page, re.S).group(1)
    assert re.search(r'class="ca-expiry">\S+ <span class="expiry ok">\(\d+ days left\)</span>', ca)
    assert re.search(r'class="ra-expiry">\S+ <span class="expiry (ok|soon)">\(\d+ days left\)</span>', ca)
    for cls in ("crl-state", "crl-number", "crl-this-update", "crl-next-update", "crl-entries", "crl-last-success"):
        assert f'class="{cls}' in ca, cls
    assert "/crl/default.crl" in ca
    assert 'id="readiness"' in page


async def test_a_chart_whose_query_fails_is_left_out_and_the_dashboard_still_shows(console, monkeypatch):
    async def broken(since, until):
        raise OSError("database unreachable")

    monkeypatch.setattr(console.srv.runtime.otp, "verify_counts", broken)
    cookie, _ = await console.sign_in()
    status, _, page = await console.get("/admin/", cookie)
    assert status == 200
    assert "OTP verifications per hour: cannot be drawn now (OSError)" in page
    assert 'id="chart-otp"' not in page
    chart(page, "chart-enrolments")  # the other chart is drawn
    assert 'id="ca-default"' in page
