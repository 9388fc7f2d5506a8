"""The report document keeps the seed's names and types; load_reports skips foreign files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from db_backup.reports.model import Report, load_reports, seed_field_problems, stem, write_report


def sample() -> Report:
    started = datetime(2025, 10, 11, 18, 0, tzinfo=UTC)
    report = Report(
        job="nightly",
        database="community",
        host="127.0.0.1",
        port=5432,
        mode="both",
        tool="oss2",
        stem=stem("community", started, "host"),
        started=started,
    )
    report.finished = datetime(2025, 10, 11, 18, 5, 12, tzinfo=UTC)
    return report


def test_times_with_fractions_show_whole_seconds_and_a_matching_duration() -> None:
    report = sample()
    report.started = datetime(2025, 10, 11, 18, 0, 0, 900_000, tzinfo=UTC)
    report.finished = datetime(2025, 10, 11, 18, 0, 2, 100_000, tzinfo=UTC)
    doc = report.to_json()
    assert doc["startedAt"] == "2025-10-11T18:00:00Z"
    assert doc["finishedAt"] == "2025-10-11T18:00:02Z"
    assert doc["durationSeconds"] == 2  # finishedAt - startedAt, as a reader computes it


def test_seed_example_fields_and_types() -> None:
    doc = sample().to_json()
    assert seed_field_problems(doc) == []
    assert doc["port"] == "5432" and doc["durationSeconds"] == 312
    assert (
        doc["startedAt"] == "2025-10-11T18:00:00Z" and doc["finishedAt"] == "2025-10-11T18:05:12Z"
    )
    assert list(doc)[:12] == [
        "database",
        "host",
        "port",
        "startedAt",
        "finishedAt",
        "durationSeconds",
        "mode",
        "tool",
        "status",
        "errorMessage",
        "local",
        "remote",
    ]
    assert set(doc["local"]) >= {"file", "globalsFile", "checksumSha256", "sizeBytes"}
    assert doc["remote"] == {"urls": []}
    assert len(doc["id"]) == 36


def test_stem_is_the_seed_file_name_pattern() -> None:
    assert stem("community", datetime(2025, 10, 11, 18, 0, tzinfo=UTC), "host") == (
        "community_20251011T180000Z_host"
    )
    assert (
        stem("we/ird db", datetime(2025, 1, 1, tzinfo=UTC), "h") == "we-ird-db_20250101T000000Z_h"
    )


def test_write_is_atomic_and_load_skips_corrupt_and_foreign(tmp_path: Path) -> None:
    path = write_report(tmp_path, sample())
    assert path.name == "community_20251011T180000Z_host.json"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "foreign.json").write_text(json.dumps({"hello": "world"}))
    (tmp_path / "list.json").write_text("[]")
    reports, warnings = load_reports(tmp_path)
    assert [r.path for r in reports] == [path]
    assert len(warnings) == 3 and all("skipped" in w for w in warnings)


def test_problems_are_found_in_a_renamed_or_retyped_report() -> None:
    doc = sample().to_json()
    doc["port"] = 5432
    del doc["errorMessage"]
    doc["local"]["sizeBytes"] = "12"
    assert seed_field_problems(doc) == [
        "port is int",
        "missing errorMessage",
        "local.sizeBytes is str",
    ]
