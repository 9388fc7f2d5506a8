"""The part-size schedule of streaming OSS uploads: limits, growth, capacity."""

from __future__ import annotations

import pytest

from db_backup.storage.oss import (
    GROWTH_INTERVAL,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    buffer_capacity,
    choose_part_size,
    traffic_limit_bits,
)

MIB = 1024 * 1024
OSS_MAX_OBJECT_BYTES = 48_800_000_000_000  # "48.8 TB"


def capacity(configured: int, expected: int | None = None) -> int:
    """Returns how many bytes 10,000 parts of the schedule hold."""
    return sum(choose_part_size(configured, expected, n) for n in range(MAX_PARTS))


def largest_part(configured: int, dump_bytes: int, expected: int | None = None) -> int:
    """Returns the biggest part a dump of `dump_bytes` gets under the schedule."""
    total = 0
    number = 0
    size = 0
    while total < dump_bytes:
        size = choose_part_size(configured, expected, number)
        total += size
        number += 1
    assert number <= MAX_PARTS
    return size


def test_configured_size_is_used_for_ordinary_dumps() -> None:
    assert choose_part_size(2 * MIB, None, 0) == 2 * MIB
    assert choose_part_size(2 * MIB, None, GROWTH_INTERVAL - 1) == 2 * MIB
    assert choose_part_size(2 * MIB, None, GROWTH_INTERVAL) == 4 * MIB


@pytest.mark.parametrize("configured", [1, 50 * 1024, MIN_PART_SIZE - 1])
def test_too_small_sizes_are_raised_to_the_oss_minimum(configured: int) -> None:
    assert choose_part_size(configured, None, 0) == MIN_PART_SIZE


def test_too_large_sizes_are_capped_at_5_gb() -> None:
    assert choose_part_size(10 * 1024**3, None, 0) == MAX_PART_SIZE
    assert choose_part_size(64 * MIB, None, MAX_PARTS - 1) == MAX_PART_SIZE


def test_size_never_shrinks_as_parts_accumulate() -> None:
    sizes = [choose_part_size(MIN_PART_SIZE, None, n) for n in range(MAX_PARTS)]
    assert sizes == sorted(sizes)
    assert all(MIN_PART_SIZE <= size <= MAX_PART_SIZE for size in sizes)


@pytest.mark.parametrize("configured", [MIN_PART_SIZE, MIB, 2 * MIB, 4 * MIB])
def test_10000_parts_hold_a_million_times_the_configured_size(configured: int) -> None:
    assert capacity(configured) >= 1_000_000 * configured


def test_default_parts_stay_small_for_dumps_people_take() -> None:
    # Memory is about the part size x (parallel_parts + 1) once parts outgrow the buffer, so
    # the schedule must not inflate parts for ordinary dumps (an earlier schedule reached
    # 256 MiB parts at 10 GB).
    assert largest_part(2 * MIB, 1_000_000_000) == 2 * MIB
    assert largest_part(2 * MIB, 10_000_000_000) <= 8 * MIB
    assert largest_part(2 * MIB, 100_000_000_000) <= 64 * MIB


@pytest.mark.parametrize("database_bytes", [10**11, 10**12, 10**13, OSS_MAX_OBJECT_BYTES])
def test_a_database_size_hint_sizes_parts_up_front(database_bytes: int) -> None:
    # The hint is pg_database_size: a dump of that size takes at most 8,000 parts, whose size
    # stays put, and the schedule still has room if the dump turns out bigger than the hint.
    first = choose_part_size(2 * MIB, database_bytes, 0)
    assert first == choose_part_size(2 * MIB, database_bytes, 999)
    assert database_bytes / first <= 8_000 or first == MAX_PART_SIZE
    assert capacity(2 * MIB, database_bytes) >= database_bytes


def test_small_hints_change_nothing() -> None:
    assert choose_part_size(2 * MIB, 100 * MIB, 0) == 2 * MIB
    assert choose_part_size(2 * MIB, 10**15, 0) == MAX_PART_SIZE
    assert largest_part(2 * MIB, 100_000_000_000, 100_000_000_000) <= 16 * MIB


def test_buffer_capacity_leaves_room_for_every_connection() -> None:
    assert buffer_capacity(24 * MIB, 2 * MIB, 2) == 24 * MIB
    assert buffer_capacity(24 * MIB, 16 * MIB, 2) == 48 * MIB
    assert buffer_capacity(1 * MIB, 2 * MIB, 0) == 4 * MIB


def test_traffic_limit_is_split_across_parallel_parts_and_clamped() -> None:
    assert traffic_limit_bits(None, 2) is None
    assert traffic_limit_bits(10 * MIB, 2) == 10 * MIB * 8 // 2
    assert traffic_limit_bits(1024, 1) == 819_200
    assert traffic_limit_bits(10**9, 1) == 838_860_800
