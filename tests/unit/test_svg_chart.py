"""SVG charts of the HTML report: scales, round axis tops, one mark per run, escaping."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from db_backup.observe.svg_chart import (
    BOTTOM,
    DURATION_UNITS,
    HEIGHT,
    LEFT,
    RIGHT,
    SIZE_UNITS,
    TOP,
    WIDTH,
    Chart,
    format_seconds,
    nice_ceiling,
    nice_top,
    render,
)

T0 = datetime(2026, 5, 1, 2, tzinfo=UTC)
MIB = 1024.0 * 1024


def circles(svg: str) -> list[tuple[float, float]]:
    return [
        (float(x), float(y))
        for x, y in re.findall(r'<circle class="point" cx="([\d.]+)" cy="([\d.]+)"', svg)
    ]


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 1), (1, 1), (1.5, 2), (3, 4), (4.5, 6), (7, 8), (9, 10), (0.03, 0.04), (250, 400)],
)
def test_nice_ceiling_is_a_round_top_split_in_four(value: float, top: float) -> None:
    assert nice_ceiling(value) == pytest.approx(top)


def test_the_axis_top_is_round_in_the_unit_the_labels_use() -> None:
    assert nice_top(7.3 * MIB, SIZE_UNITS) == 8 * MIB
    assert nice_top(900, SIZE_UNITS) == 1000
    assert nice_top(150, DURATION_UNITS) == 4 * 60
    assert nice_top(45, DURATION_UNITS) == 60
    assert nice_top(0, DURATION_UNITS) == 1


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (0, 42, 119, 210, 7199, 7200 * 3)] == [
        "0 s",
        "42 s",
        "119 s",
        "3.5 min",
        "120.0 min",
        "6.0 h",
    ]


def size_chart(points: list[tuple[datetime, float]], failures: list[datetime]) -> Chart:
    return Chart(
        "size", "Backup size", points, failures, lambda v: f"{v / MIB:.1f} MiB", SIZE_UNITS
    )


def test_each_successful_backup_is_a_point_placed_by_its_time_and_value() -> None:
    points = [(T0 + timedelta(days=day), (3 + day) * MIB) for day in (3, 0, 1, 4)]
    svg = render(size_chart(points, [T0 + timedelta(days=2)]))
    found = sorted(circles(svg))
    assert len(found) == 4 and svg.count('class="failure"') == 1
    # Earliest at the left edge, newest at the right, the largest (7 MiB on an 8 MiB axis)
    # seven eighths up the plot area.
    assert found[0][0] == LEFT and found[-1][0] == WIDTH - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    assert found[-1][1] == pytest.approx(TOP + plot_h * (1 - 7 / 8), abs=0.1)
    assert found[0][1] == pytest.approx(TOP + plot_h * (1 - 3 / 8), abs=0.1)
    assert "8.0 MiB" in svg and "2026-05-01" in svg and "2026-05-05" in svg
    line = re.search(r'<polyline class="line" points="([^"]+)"', svg)
    assert line is not None and len(line.group(1).split()) == 4


def test_one_point_sits_in_the_middle_and_no_point_says_so() -> None:
    svg = render(size_chart([(T0, MIB)], []))
    [(x, _)] = circles(svg)
    assert x == pytest.approx(LEFT + (WIDTH - LEFT - RIGHT) / 2)
    assert "<polyline" not in svg
    empty = render(size_chart([], []))
    assert "no backup yet" in empty and "<circle" not in empty


def test_only_failures_still_draw_their_marks() -> None:
    svg = render(size_chart([], [T0, T0 + timedelta(hours=1)]))
    assert svg.count('class="failure"') == 2 and "<circle" not in svg


def test_text_in_a_chart_is_escaped() -> None:
    chart = Chart("size", 'a<b>"c"', [(T0, 1.0)], [], lambda v: "<&>")
    svg = render(chart)
    assert (
        "<b>" not in svg
        and "&lt;&amp;&gt;" in svg
        and 'aria-label="a&lt;b&gt;&quot;c&quot;"' in svg
    )
