"""Charts of the console's dashboard, rendered on the server as SVG (no script, no style attribute: the
console's Content-Security-Policy allows neither; colours are presentation attributes).

:func:`hourly_series` turns ``(hour, category, count)`` rows into one count per hour and category;
:func:`stacked_bars` draws them as a bar per hour, the categories stacked, with a legend of their totals.
Every text (title, category, tooltip) is escaped for XML.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from xml.sax.saxutils import escape, quoteattr

from markupsafe import Markup

HOUR = timedelta(hours=1)
WIDTH_PER_HOUR = 4
PLOT_HEIGHT = 140
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 26, 22
LEGEND_ROW = 18
# colours of the usual categories; others take the next of OTHER_COLOURS
COLOURS = {"issued": "#2e7d4f", "OK": "#2e7d4f", "pending": "#c58a00", "awaiting_ack": "#4f7fc1",
           "rejected": "#b3261e", "BAD_OTP": "#b3261e", "REPLAYED_OTP": "#e07b39", "REPLAYED_REQUEST": "#f0b27a",
           "BACKEND_ERROR": "#6d2e8c", "NO_SUCH_CLIENT": "#7f8c8d", "BAD_SIGNATURE": "#a04000",
           "MISSING_PARAMETER": "#95a5a6", "OPERATION_NOT_ALLOWED": "#5d6d7e"}
OTHER_COLOURS = ("#1f6f8b", "#8e44ad", "#d35400", "#16a085", "#7d6608", "#34495e")


def hour_floor(at: datetime) -> datetime:
    """The start of the UTC hour of `at`."""
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def hourly_series(rows: Iterable[tuple[datetime, str, int]], start: datetime,
                  hours: int) -> dict[str, list[int]]:
    """Category -> its count in each of the `hours` hours from `start` (a UTC hour's start); rows outside
    are ignored, rows of the same hour and category are added up. Categories in name order."""
    out: dict[str, list[int]] = {}
    for at, category, count in rows:
        index = int((hour_floor(at) - start) / HOUR)
        if 0 <= index < hours:
            out.setdefault(category, [0] * hours)[index] += count
    return dict(sorted(out.items()))


def _colour(category: str, used: list[str]) -> str:
    if category in COLOURS:
        return COLOURS[category]
    colour = OTHER_COLOURS[len(used) % len(OTHER_COLOURS)]
    used.append(category)
    return colour


def _nice_max(value: int) -> int:
    """The top of the y axis: `value` rounded up to 1, 2 or 5 times a power of ten (at least 1)."""
    if value <= 1:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def stacked_bars(title: str, start: datetime, hours: int, series: Mapping[str, Sequence[int]], *,
                 chart_id: str) -> Markup:
    """An SVG element: one bar for each of the `hours` hours from `start`, each category's count stacked on the others; the x axis
    marks each day (UTC), the y axis 0, half and the top; a legend names each category with its total.
    `chart_id` is the element's id (letters, digits, hyphens)."""
    if not chart_id.replace("-", "").isalnum():
        raise ValueError("chart_id: letters, digits and hyphens")
    totals = [sum(v[i] for v in series.values() if i < len(v)) for i in range(hours)]
    top = _nice_max(max(totals, default=0))
    plot_w = hours * WIDTH_PER_HOUR
    legend_rows = max(1, len(series))
    width = LEFT + plot_w + RIGHT
    height = TOP + PLOT_HEIGHT + BOTTOM + legend_rows * LEGEND_ROW + 6
    base_y = TOP + PLOT_HEIGHT

    def y_of(value: float) -> float:
        return base_y - value * PLOT_HEIGHT / top

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id={quoteattr(chart_id)} class="chart" role="img" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'aria-labelledby={quoteattr(chart_id + "-title")}>',
             f'<title id={quoteattr(chart_id + "-title")}>{escape(title)}</title>',
             f'<text x="{LEFT}" y="16" font-size="13" font-weight="600" fill="#1d2430">{escape(title)}</text>',
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{PLOT_HEIGHT}" fill="#ffffff" '
             f'stroke="#dde1e6"/>']
    for value in (0, top / 2, top):  # y axis: grid lines and labels
        y = y_of(value)
        label = f"{value:g}"
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eef0f3"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
                     f'fill="#4a5568">{escape(label)}</text>')
    start = hour_floor(start)
    for i in range(0, hours + 1):  # x axis: a tick at each UTC midnight
        at = start + i * HOUR
        if at.hour != 0:
            continue
        x = LEFT + i * WIDTH_PER_HOUR
        parts.append(f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{base_y + 4}" stroke="#c8ced6"/>')
        parts.append(f'<text x="{x}" y="{base_y + 16}" font-size="10" text-anchor="middle" '
                     f'fill="#4a5568">{escape(at.strftime("%m-%d"))}</text>')
    used: list[str] = []
    colours = {name: _colour(name, used) for name in series}
    for i in range(hours):
        if not totals[i]:
            continue
        at = start + i * HOUR
        stacked = 0
        x = LEFT + i * WIDTH_PER_HOUR
        for name, values in series.items():
            n = values[i] if i < len(values) else 0
            if not n:
                continue
            y1, y0 = y_of(stacked + n), y_of(stacked)
            stacked += n
            tip = f"{at:%Y-%m-%d %H:00} UTC: {name} {n}"
            parts.append(f'<rect class="bar" x="{x}" y="{y1:.1f}" width="{WIDTH_PER_HOUR - 1}" '
                         f'height="{y0 - y1:.1f}" fill="{colours[name]}" data-hour={quoteattr(at.isoformat())} '
                         f'data-category={quoteattr(name)} data-count="{n}"><title>{escape(tip)}</title></rect>')
    legend_y = base_y + BOTTOM + 8
    if not series:
        parts.append(f'<text x="{LEFT}" y="{legend_y + 10}" font-size="11" fill="#4a5568">nothing recorded in '
                     f'these hours</text>')
    for row, (name, values) in enumerate(series.items()):
        y = legend_y + row * LEGEND_ROW
        parts.append(f'<rect x="{LEFT}" y="{y}" width="12" height="12" fill="{colours[name]}"/>')
        parts.append(f'<text class="legend" x="{LEFT + 18}" y="{y + 10}" font-size="11" fill="#1d2430" '
                     f'data-category={quoteattr(name)}>{escape(name)}: {sum(values)}</text>')
    parts.append("</svg>")
    return Markup("\n".join(parts))
