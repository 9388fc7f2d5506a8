"""Part-size maths of a streaming multipart upload: OSS's limits, growth, buffer, traffic limit."""

from __future__ import annotations

import math

MIN_PART_SIZE = 100 * 1024  # OSS: every part but the last is at least 100 KB
MAX_PART_SIZE = 5 * 1024**3  # OSS: at most 5 GB per part
MAX_PARTS = 10_000  # OSS: at most 10,000 parts per upload
# Part sizes stay as configured for the first GROWTH_INTERVAL parts and double every
# GROWTH_INTERVAL parts after that (capped at 5 GB): 10,000 parts then hold 1,023,000 x the
# configured size (2 TiB at 2 MiB), and a 10 GB dump never has parts above 4 x the configured size,
# so memory stays near `buffer_size` for the dumps people take with pg_dump.
GROWTH_INTERVAL = 1_000
# With a size hint, parts are made big enough that the hinted size needs at most this many.
HINT_PART_BUDGET = 8_000
# OSS's x-oss-traffic-limit is in bit/s and must lie in this range.
TRAFFIC_LIMIT_MIN_BITS = 819_200
TRAFFIC_LIMIT_MAX_BITS = 838_860_800


def choose_part_size(configured: int, expected_size: int | None, parts_so_far: int) -> int:
    """Returns the size of the next part, given how many parts this upload already has.

    Starts from `configured` (clamped to 100 KB..5 GB). Without a hint the size doubles every
    GROWTH_INTERVAL parts (capped at 5 GB), so that a stream of unknown length fits in 10,000
    parts up to about 1,000,000 x the configured size. An `expected_size` (the database's size)
    raises the size so that it needs at most HINT_PART_BUDGET parts and keeps it flat for those
    parts; the doubling after them leaves room for a dump bigger than the hint.
    """
    base = min(max(configured, MIN_PART_SIZE), MAX_PART_SIZE)
    flat = GROWTH_INTERVAL
    if expected_size is not None and expected_size > 0:
        base = max(base, min(math.ceil(expected_size / HINT_PART_BUDGET), MAX_PART_SIZE))
        flat = max(flat, min(math.ceil(expected_size / base), HINT_PART_BUDGET))
    doublings = max(parts_so_far - flat + GROWTH_INTERVAL, 0) // GROWTH_INTERVAL
    if doublings >= 40:  # 2**40 * 100 KB is far beyond the cap
        return MAX_PART_SIZE
    return min(base << doublings, MAX_PART_SIZE)


def buffer_capacity(buffer_size: int, part_size: int, parallel_parts: int) -> int:
    """Returns the bytes of parts a sink may hold: the buffer, but room for every connection."""
    return max(buffer_size, part_size * (max(parallel_parts, 1) + 1))


def traffic_limit_bits(bandwidth_limit: int | None, parallel_parts: int) -> int | None:
    """Returns the per-request x-oss-traffic-limit (bit/s) that keeps the total under the limit."""
    if not bandwidth_limit:
        return None
    per_request = bandwidth_limit * 8 // max(parallel_parts, 1)
    return min(max(per_request, TRAFFIC_LIMIT_MIN_BITS), TRAFFIC_LIMIT_MAX_BITS)
