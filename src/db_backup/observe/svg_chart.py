"""Inline SVG charts of a value over time (backup size, duration) for the HTML report.

Pure functions from points to SVG text: no scripts, no external assets, every text escaped.
Each successful backup is one `<circle class="point">` (its tooltip a `<title>`), joined by a
line; each failed run one `<path class="failure">` mark on the time axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

WIDTH = 640
HEIGHT = 220
LEFT, RIGHT, TOP, BOTTOM = 78, 16, 12, 30  # margins around the plot area
Y_TICKS = 4


@dataclass(frozen=True)
class Chart:
    """One chart: the successful backups' values and the failed runs' times."""

    kind: str  # "size" | "duration": names the chart in the page
    title: str
    points: Sequence[tuple[datetime, float]]
    failures: Sequence[datetime]
    format_value: Callable[[float], str]
    units: Sequence[float] = (1.0,)  # where `format_value` changes unit (1024 or 60 apart)


SIZE_UNITS = tuple(1024.0**power for power in range(5))
DURATION_UNITS = (1.0, 60.0, 3600.0)


def format_seconds(seconds: float) -> str:
    """Returns a duration for an axis or a tooltip: `42 s`, `3.5 min`, `1.2 h`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def nice_ceiling(value: float) -> float:
    """Returns the smallest of 1, 2, 4, 6, 8 x 10^k that is at least `value` (1 for 0): each
    splits into four round steps for the grid lines."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 4, 6, 8, 10):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10 * power  # pragma: no cover - the loop ends at 10


def nice_top(value: float, units: Sequence[float]) -> float:
    """Returns the top of a value axis: a round number of the largest unit not above `value`,
    so 7.3 MiB gets 8 MiB (not 10,000,000 bytes) and 150 s gets 4 min."""
    unit = max((u for u in units if u <= value), default=min(units))
    return nice_ceiling(value / unit) * unit


def _time_range(chart: Chart) -> tuple[datetime, datetime]:
    moments = [moment for moment, _ in chart.points] + list(chart.failures)
    first, last = min(moments), max(moments)
    if first == last:  # one run: put it in the middle of two hours
        return first - timedelta(hours=1), last + timedelta(hours=1)
    return first, last


def _label(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(chart: Chart, width: int = WIDTH, height: int = HEIGHT) -> str:
    """Returns the SVG element of `chart`."""
    head = (
        f'<svg class="chart-svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(chart.title)}">'
    )
    if not chart.points and not chart.failures:
        text = f'<text class="empty" x="{width / 2:.0f}" y="{height / 2:.0f}">no backup yet</text>'
        return f"{head}{text}</svg>"
    first, last = _time_range(chart)
    span = (last - first).total_seconds()
    top = nice_top(max((value for _, value in chart.points), default=0.0), chart.units)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def x_of(moment: datetime) -> float:
        return LEFT + plot_w * (moment - first).total_seconds() / span

    def y_of(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [head, _axes(chart, first, last, top, x_of, y_of, width)]
    ordered = sorted(chart.points, key=lambda point: point[0])
    if len(ordered) > 1:
        line = " ".join(f"{x_of(m):.1f},{y_of(v):.1f}" for m, v in ordered)
        parts.append(f'<polyline class="line" points="{line}"/>')
    for moment, value in ordered:
        tip = escape(f"{_label(moment)}: {chart.format_value(value)}")
        parts.append(
            f'<circle class="point" cx="{x_of(moment):.1f}" cy="{y_of(value):.1f}" r="4">'
            f"<title>{tip}</title></circle>"
        )
    base = y_of(0)
    for moment in sorted(chart.failures):
        x = x_of(moment)
        tip = escape(f"{_label(moment)}: FAILED")
        parts.append(
            f'<path class="failure" d="M{x - 4:.1f},{base - 4:.1f}l8,8m0,-8l-8,8">'
            f"<title>{tip}</title></path>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _axes(
    chart: Chart,
    first: datetime,
    last: datetime,
    top: float,
    x_of: Callable[[datetime], float],
    y_of: Callable[[float], float],
    width: int,
) -> str:
    """Returns the grid lines with value labels and the time labels of a chart."""
    parts = []
    for index in range(Y_TICKS + 1):
        value = top * index / Y_TICKS
        y = y_of(value)
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{width - RIGHT}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="y-label" x="{LEFT - 6}" y="{y + 4:.1f}">'
            f"{escape(chart.format_value(value))}</text>"
        )
    moments = [first, last]
    if last - first > timedelta(days=2):
        moments.insert(1, first + (last - first) / 2)
    anchors = ["start", "middle", "end"] if len(moments) == 3 else ["start", "end"]
    baseline = y_of(0) + 20
    for moment, anchor in zip(moments, anchors, strict=True):
        text = moment.astimezone(UTC).strftime(
            "%Y-%m-%d" if last - first > timedelta(days=2) else "%m-%d %H:%M"
        )
        parts.append(
            f'<text class="x-label" x="{x_of(moment):.1f}" y="{baseline:.1f}" '
            f'text-anchor="{anchor}">{escape(text)}</text>'
        )
    return "".join(parts)
