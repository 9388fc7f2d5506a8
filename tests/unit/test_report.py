"""The report document keeps the seed's names and types; load_reports skips foreign files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from db_backup.reports.model import (
    FAILED,
    SUCCESS,
    NotAReport,
    Report,
    TargetResult,
    load_reports,
    parse_report,
    read_reports,
    seed_field_problems,
    stem,
    write_report,
)


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


def stored_on_both(report: Report) -> None:
    """What a run records after the dump and its .sha256 are stored locally and on OSS."""
    s = report.stem
    report.stored = {"local": [f"{s}.dump", f"{s}.dump.sha256"], "oss": [f"{s}.dump"]}
    report.targets["local"] = TargetResult(
        SUCCESS,
        location=f"/data/{s}.dump",
        size_bytes=10,
        extra={"sha256": "ab"},
        checksum_location=f"/data/{s}.dump.sha256",
    )
    report.targets["oss"] = TargetResult(
        SUCCESS, location=f"oss://b/p/{s}.dump", size_bytes=10, extra={"crc64": "1"}
    )


def test_what_each_target_stored_is_recorded_once_and_every_view_derives_from_it() -> None:
    report = sample()
    stored_on_both(report)
    s = report.stem
    doc = report.to_json()
    assert doc["local"]["file"] == f"/data/{s}.dump"
    assert doc["local"]["checksumFile"] == f"/data/{s}.dump.sha256"
    assert doc["local"]["globalsFile"] == ""
    assert doc["remote"]["urls"] == [f"oss://b/p/{s}.dump"]
    assert doc["targets"]["local"]["files"] == [f"{s}.dump", f"{s}.dump.sha256"]
    assert doc["targets"]["oss"] == {
        "status": SUCCESS,
        "location": f"oss://b/p/{s}.dump",
        "sizeBytes": 10,
        "crc64": "1",
        "files": [f"{s}.dump"],
    }
    assert doc["artefacts"] == [f"{s}.dump", f"{s}.dump.sha256", f"{s}.json"]
    # Deleting what a target stored (the run empties its list) changes every view at once.
    report.stored["local"].clear()
    doc = report.to_json()
    assert doc["local"]["file"] == doc["local"]["checksumFile"] == ""
    assert "files" not in doc["targets"]["local"] and doc["targets"]["local"]["status"] == SUCCESS
    assert doc["remote"]["urls"] == [f"oss://b/p/{s}.dump"]
    assert doc["artefacts"] == [f"{s}.dump", f"{s}.json"]
    report.stored["oss"].clear()
    doc = report.to_json()
    assert doc["remote"]["urls"] == [] and doc["artefacts"] == [f"{s}.json"]


def test_a_failed_target_names_nothing_and_says_why() -> None:
    report = sample()
    stored_on_both(report)
    report.stored["oss"].clear()
    report.targets["oss"] = TargetResult(FAILED, error="upload failed")
    assert report.failed_targets() == {"oss": "upload failed"}
    doc = report.to_json()
    assert doc["targets"]["oss"] == {"status": FAILED, "error": "upload failed"}
    assert doc["remote"]["urls"] == []


def test_a_directory_dump_on_a_remote_gives_every_members_url() -> None:
    report = sample()
    members = [f"oss://b/p/{report.stem}.dump.d/{f}" for f in ("toc.dat", "3001.dat.gz")]
    report.stored = {"oss": [f"{report.stem}.dump.d/toc.dat"]}
    report.targets["oss"] = TargetResult(
        SUCCESS, location="oss://b/p/x.dump.d/", extra={"objects": members}
    )
    assert report.to_json()["remote"]["urls"] == members
    assert report.remote_urls == members and report.local_file == ""


def test_the_typed_view_reads_what_the_report_says(tmp_path: Path) -> None:
    report = sample()
    stored_on_both(report)
    report.status, report.size_bytes = SUCCESS, 10
    report.encryption = {"method": "age", "plaintextSizeBytes": 7}
    path = write_report(tmp_path, report)
    stored = parse_report(path.read_bytes(), path)
    assert (stored.name, stored.job, stored.database) == (path.name, "nightly", "community")
    assert (stored.status, stored.successful, stored.started) == (SUCCESS, True, report.started)
    assert (stored.dump_format, stored.compression, stored.encrypted) == ("custom", 9, True)
    assert stored.dump_size == 7  # pg_dump's output, before encryption
    assert stored.remote_urls == report.remote_urls
    assert stored.named_files()[:2] == [path.name, f"{report.stem}.dump"]
    seed_only = {k: v for k, v in stored.document.items() if k in list(stored.document)[:12]}
    old = parse_report(json.dumps(seed_only).encode(), tmp_path / "old.json")
    assert (old.job, old.dump_format, old.compression, old.encrypted) == ("", "custom", None, False)
    assert old.dump_size == 10  # not encrypted: the stored size


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "skipped, not readable JSON"),
        (b"[]", "skipped, not a report (top level is not an object)"),
        (b'{"hello": 1}', "skipped, not a report (missing database; missing host; missing port)"),
        (b"\xff", "skipped, not readable JSON"),
    ],
)
def test_a_file_that_is_no_report_says_why(tmp_path: Path, raw: bytes, reason: str) -> None:
    with pytest.raises(NotAReport, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        parse_report(raw, tmp_path / "x.json")


def test_read_reports_keeps_the_order_and_warns_per_skipped_file(tmp_path: Path) -> None:
    first = write_report(tmp_path, sample())
    later = sample()
    later.stem = "b"
    second = write_report(tmp_path, later)
    (tmp_path / "bad.json").write_text("{")
    reports, warnings = read_reports([second, tmp_path / "bad.json", tmp_path / "gone.json", first])
    assert [r.path for r in reports] == [second, first]
    assert [w.split(": ", 1)[0] for w in warnings] == [
        str(tmp_path / "bad.json"),
        str(tmp_path / "gone.json"),
    ]
