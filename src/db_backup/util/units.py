"""Sizes and ages for a person: the one formatter of each that every message and table uses."""

from __future__ import annotations

from datetime import timedelta

_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_HOUR = 3600
_DAY = 86400


def format_size(size: int) -> str:
    """Returns `size` bytes for a person: "17 B", "312.0 KiB", "1.5 GiB" (powers of 1024)."""
    amount = float(size)
    for unit in _SIZE_UNITS:
        if abs(amount) < 1024 or unit == _SIZE_UNITS[-1]:
            break
        amount /= 1024
    return f"{amount:.0f} B" if unit == "B" else f"{amount:.1f} {unit}"


def format_age(delta: timedelta, *, minutes: bool = False) -> str:
    """Returns a short age: `45m`, `7h`, `2d`; with `minutes`, `7:05` below two days.

    Two days and more are whole days either way. A negative age (a clock step back) is 0.
    """
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 2 * _DAY:
        return f"{seconds // _DAY}d"
    if minutes:
        return f"{seconds // _HOUR}:{seconds % _HOUR // 60:02d}"
    if seconds < _HOUR:
        return f"{seconds // 60}m"
    return f"{seconds // _HOUR}h"
