"""Sizes and durations as the config writes them (`500GB`, `26h`), in bytes and timedeltas.

The schema's patterns admit only what these parse; the loader's second pass names what they
still refuse (a duration of zero), so no value fails when it is used.
"""

from __future__ import annotations

import re
from datetime import timedelta

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:([kmgtp])(?:i?b)?|b)?\s*$", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(?:[0-9]+[smhdw])+$")
_PART = re.compile(r"([0-9]+)([smhdw])")


def parse_size(value: int | float | str | None) -> int | None:
    """Returns a size in bytes from an integer or a text like "500GB" (powers of 1024)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    match = _SIZE.match(str(value))
    if match is None:
        raise ValueError(f"not a size: {value!r} (write bytes, or e.g. 500GB, 1.5TiB)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** _POWERS[unit.lower()] if unit else float(number))


def parse_duration(value: object) -> timedelta | None:
    """Returns the duration `value` names (`26h`, `90m`, `1d12h`, seconds), or None for off.

    Raises ValueError for anything else (the schema refuses such values first).
    """
    if value is False:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return timedelta(seconds=value)
    if isinstance(value, str) and _DURATION.match(value.strip()):
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value.strip()))
        if seconds > 0:
            return timedelta(seconds=seconds)
    raise ValueError(f"not a duration: {value!r} (use e.g. 26h, 90m, 2d, or seconds)")
