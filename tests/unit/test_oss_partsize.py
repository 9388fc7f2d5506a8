"""The part-size schedule of streaming OSS uploads: limits, growth, capacity."""

from __future__ import annotations

import pytest

from db_backup.storage.oss import (
    GROWTH_START_PART,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    choose_part_size,
    traffic_limit_bits,
)

MIB = 1024 * 1024
OSS_MAX_OBJECT_BYTES = 48_800_000_000_000  # "48.8 TB"


def capacity(configured: int, expected: int | None = None) -> int:
    """Returns how many bytes 10,000 parts of the schedule hold."""
    return sum(choose_part_size(configured, expected, n) for n in range(MAX_PARTS))


def test_configured_size_is_used_for_ordinary_dumps() -> None:
    assert choose_part_size(16 * MIB, None, 0) == 16 * MIB
    assert choose_part_size(16 * MIB, None, GROWTH_START_PART - 1) == 16 * MIB


@pytest.mark.parametrize("configured", [1, 50 * 1024, MIN_PART_SIZE - 1])
def test_too_small_sizes_are_raised_to_the_oss_minimum(configured: int) -> None:
    assert choose_part_size(configured, None, 0) == MIN_PART_SIZE


def test_too_large_sizes_are_capped_at_5_gb() -> None:
    assert choose_part_size(10 * 1024**3, None, 0) == MAX_PART_SIZE
    assert choose_part_size(16 * MIB, None, MAX_PARTS - 1) == MAX_PART_SIZE


def test_size_never_shrinks_as_parts_accumulate() -> None:
    sizes = [choose_part_size(MIN_PART_SIZE, None, n) for n in range(MAX_PARTS)]
    assert sizes == sorted(sizes)
    assert all(MIN_PART_SIZE <= size <= MAX_PART_SIZE for size in sizes)


@pytest.mark.parametrize("configured", [MIN_PART_SIZE, MIB, 16 * MIB, 64 * MIB, 1024 * MIB])
def test_any_configuration_holds_48_8_tb_in_10000_parts(configured: int) -> None:
    assert capacity(configured) >= OSS_MAX_OBJECT_BYTES


def test_size_hint_raises_the_starting_part_size() -> None:
    two_tb = 2 * 1024**4
    first = choose_part_size(16 * MIB, two_tb, 0)
    assert first > 16 * MIB
    assert two_tb / first <= 8_000
    assert choose_part_size(16 * MIB, 100 * MIB, 0) == 16 * MIB  # small hints change nothing
    assert choose_part_size(16 * MIB, 10**15, 0) == MAX_PART_SIZE


def test_traffic_limit_is_split_across_parallel_parts_and_clamped() -> None:
    assert traffic_limit_bits(None, 2) is None
    assert traffic_limit_bits(10 * MIB, 2) == 10 * MIB * 8 // 2
    assert traffic_limit_bits(1024, 1) == 819_200
    assert traffic_limit_bits(10**9, 1) == 838_860_800
