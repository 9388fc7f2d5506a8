"""Combining part CRCs gives the CRC of the whole object, as OSS computes it."""

from __future__ import annotations

import random

from db_backup.storage.crc64 import crc64_combine
from tests.support.crc64 import crc64


def test_combined_part_crcs_equal_the_crc_of_the_concatenation() -> None:
    rng = random.Random(7)
    parts = [rng.randbytes(size) for size in (1, 100, 65_536, 0, 300_001)]
    combined = 0
    for part in parts:
        combined = crc64_combine(combined, crc64(part), len(part))
    assert combined == crc64(b"".join(parts))


def test_combining_with_an_empty_part_changes_nothing() -> None:
    assert crc64_combine(crc64(b"abc"), crc64(b""), 0) == crc64(b"abc")
