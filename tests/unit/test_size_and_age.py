"""The one size formatter and the one age formatter every message, table and STATUS line uses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from db_backup.util.units import format_age, format_size

KIB = 1024
GIB = 1024**3
TIB = 1024**4


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (17, "17 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (312 * KIB, "312.0 KiB"),
        (5 * 1024 * KIB - 1, "5.0 MiB"),
        (3 * GIB, "3.0 GiB"),
        (2 * TIB, "2.0 TiB"),
        (2048 * TIB, "2048.0 TiB"),  # no unit beyond TiB
        (-17, "-17 B"),
        (-1536, "-1.5 KiB"),
    ],
)
def test_sizes_are_in_powers_of_1024_with_one_decimal(size: int, text: str) -> None:
    assert format_size(size) == text


def test_ages_are_short_and_readable() -> None:
    assert [format_age(timedelta(seconds=s)) for s in (59, 2700, 7 * 3600, 50 * 3600)] == [
        "0m",
        "45m",
        "7h",
        "2d",
    ]


@pytest.mark.parametrize(
    ("seconds", "short", "with_minutes"),
    [
        (-30, "0m", "0:00"),  # the wall clock stepped back
        (0, "0m", "0:00"),
        (3599, "59m", "0:59"),
        (3600, "1h", "1:00"),
        (7 * 3600 + 5 * 60 + 59, "7h", "7:05"),
        (2 * 86400 - 1, "47h", "47:59"),
        (2 * 86400, "2d", "2d"),
        (9 * 86400 + 3600, "9d", "9d"),
    ],
)
def test_ages_switch_to_days_at_two_days_with_or_without_minutes(
    seconds: int, short: str, with_minutes: str
) -> None:
    delta = timedelta(seconds=seconds)
    assert format_age(delta) == short
    assert format_age(delta, minutes=True) == with_minutes
