"""The drill report record and the drill's verdict: pure functions over what was counted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from db_backup.reports.model import REPORT_NAMESPACE, StoredReport
from db_backup.restore.drill_report import (
    CheckResult,
    DrillReport,
    DrillTarget,
    Mismatch,
    count_mismatches,
    counts_to_compare,
    drill_file_name,
    new_report,
    rows_outcome,
    verdict,
)

STARTED = datetime(2026, 11, 24, 4, 0, 1, 250000, tzinfo=UTC)
BACKUP = StoredReport(
    Path("/r/shop_20261124T020000Z_h.json"),
    {"id": "b-1", "startedAt": "2026-11-24T02:00:00Z", "database": "shop"},
)


def report_of(backup: StoredReport | None = BACKUP, database: str = "shop") -> DrillReport:
    return new_report(
        "nightly",
        database,
        backup,
        started=STARTED,
        trigger="schedule",
        hostname="db1",
        target_kind="cluster",
    )


def test_a_new_report_is_failed_until_proven_and_names_its_backup() -> None:
    report = report_of()
    assert report.status == "FAILED" and not report.ok
    assert report.started_at == "2026-11-24T04:00:01.250000Z"
    assert report.backup_report_id == "b-1"
    assert report.backup_report == "shop_20261124T020000Z_h.json"
    assert report.backup_started_at == "2026-11-24T02:00:00Z"
    expected_id = uuid.uuid5(REPORT_NAMESPACE, "drill/nightly/shop/2026-11-24T04:00:01.250000Z/b-1")
    assert report.id == str(expected_id)
    assert report_of().id == report.id, "the same drill gets the same id"
    assert report_of(database="crm").id != report.id


def test_a_report_without_a_backup_has_empty_backup_fields() -> None:
    report = report_of(None, "*")
    assert (report.backup_report_id, report.backup_report, report.backup_started_at) == (
        "",
        "",
        "",
    )
    assert report.id == str(uuid.uuid5(REPORT_NAMESPACE, f"drill/nightly/*/{report.started_at}/"))


def test_to_json_writes_every_key_in_the_order_of_the_drill_report() -> None:
    report = report_of()
    report.target = DrillTarget("server", "db_backup_drill_nightly_1", "16.4")
    report.status, report.error_message = "FAILED", "1 table(s) with other row counts"
    report.finished_at, report.duration_seconds, report.restore_seconds = "x", 2.5, 1.25
    report.source, report.sha256, report.row_counts, report.tables_checked = "/d", "ab", "exact", 2
    report.mismatches = [Mismatch("public.a", 3, None)]
    report.checks = [CheckResult("ok", "shop"), CheckResult("bad", "shop", "returned 'f'")]
    document = report.to_json()
    assert document == {
        "schemaVersion": 1,
        "kind": "drill",
        "id": report.id,
        "job": "nightly",
        "database": "shop",
        "status": "FAILED",
        "errorMessage": "1 table(s) with other row counts",
        "startedAt": "2026-11-24T04:00:01.250000Z",
        "finishedAt": "x",
        "durationSeconds": 2.5,
        "restoreSeconds": 1.25,
        "trigger": "schedule",
        "hostname": "db1",
        "backupReportId": "b-1",
        "backupReport": "shop_20261124T020000Z_h.json",
        "backupStartedAt": "2026-11-24T02:00:00Z",
        "source": "/d",
        "sha256": "ab",
        "target": {
            "kind": "server",
            "database": "db_backup_drill_nightly_1",
            "serverVersion": "16.4",
        },
        "rowCounts": "exact",
        "tablesChecked": 2,
        "mismatches": [{"table": "public.a", "expected": 3, "actual": None}],
        "checks": [
            {"name": "ok", "database": "shop", "passed": True},
            {"name": "bad", "database": "shop", "passed": False, "error": "returned 'f'"},
        ],
    }
    keys = ["schemaVersion", "kind", "id", "job", "database", "status", "errorMessage"]
    keys += ["startedAt", "finishedAt", "durationSeconds", "restoreSeconds", "trigger"]
    keys += ["hostname", "backupReportId", "backupReport", "backupStartedAt", "source"]
    keys += ["sha256", "target", "rowCounts", "tablesChecked", "mismatches", "checks"]
    assert list(document) == keys
    assert list(document["target"]) == ["kind", "database", "serverVersion"]


def test_a_fresh_report_serialises_with_the_defaults_a_failed_drill_shows() -> None:
    document = report_of(None, "*").to_json()
    assert document["status"] == "FAILED" and document["errorMessage"] == ""
    assert document["durationSeconds"] == 0.0 and isinstance(document["durationSeconds"], float)
    assert document["target"] == {"kind": "cluster", "database": "", "serverVersion": ""}
    assert (document["rowCounts"], document["tablesChecked"]) == ("none", 0)
    assert document["mismatches"] == [] and document["checks"] == []


@pytest.mark.parametrize(
    ("backup_report", "name"),
    [
        ("shop_20261124T020000Z_h.json", "shop_20261124T020000Z_h.drill-20261124T040001Z.json"),
        ("", "none.drill-20261124T040001Z.json"),
    ],
)
def test_the_file_name_is_the_backups_stem_and_the_start_to_the_second(
    backup_report: str, name: str
) -> None:
    report = report_of()
    report.backup_report = backup_report
    assert drill_file_name(report, STARTED) == name


@pytest.mark.parametrize(
    ("backup", "expected"),
    [
        ({}, ("none", None)),
        ({"tables": None}, ("none", None)),
        ({"tables": [1, 2]}, ("none", None)),
        ({"tables": {"public.a": 1}, "rowCounts": "exact"}, ("exact", {"public.a": 1})),
        ({"tables": {"public.a": 1}}, ("exact", {"public.a": 1})),  # reports before rowCounts
        ({"tables": {"public.a": 1}, "rowCounts": "estimated"}, ("estimated", None)),
        ({"tables": {}, "rowCounts": "exact"}, ("exact", {})),
        ({"rowCounts": "exact"}, ("none", None)),
    ],
)
def test_only_exact_counts_are_compared(
    backup: dict[str, Any], expected: tuple[str, dict[str, int] | None]
) -> None:
    assert counts_to_compare(backup) == expected


@pytest.mark.parametrize(
    ("expected", "actual", "mismatches"),
    [
        ({}, {}, []),
        ({"public.a": 3}, {"public.a": 3}, []),
        ({"public.a": 3}, {"public.a": 3, "public.extra": 9}, []),
        ({"public.a": 3}, {"public.a": 2}, [Mismatch("public.a", 3, 2)]),
        ({"public.a": 3}, {}, [Mismatch("public.a", 3, None)]),
        ({"public.a": 0}, {}, [Mismatch("public.a", 0, None)]),
        (
            {"z.t": 1, "a.t": 1, "m.t": 5},
            {"z.t": 2, "a.t": 0, "m.t": 5},
            [Mismatch("a.t", 1, 0), Mismatch("z.t", 1, 2)],
        ),
    ],
)
def test_mismatches_are_the_tables_whose_counts_differ_sorted_by_name(
    expected: dict[str, int], actual: dict[str, int], mismatches: list[Mismatch]
) -> None:
    assert count_mismatches(expected, actual) == mismatches


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ([(True,)], None),
        ([(False,)], "returned 'f', not one row with true"),
        ([(None,)], "returned '', not one row with true"),
        ([], "returned '', not one row with true"),
        (None, "returned no result set, not one row with true"),
        ([(True,), (True,)], "returned 't\\nt', not one row with true"),
        ([(True, True)], "returned 't|t', not one row with true"),
        ([("true",)], "returned 'true', not one row with true"),
        ([(1,)], "returned '1', not one row with true"),
        ([("x" * 100,)], f"returned {'x' * 80!r}, not one row with true"),
    ],
)
def test_a_check_passes_only_when_it_returns_one_row_of_one_true(
    rows: list[tuple[object, ...]] | None, error: str | None
) -> None:
    outcome = rows_outcome("c", "shop", rows)
    assert outcome == CheckResult("c", "shop", error)
    assert outcome.passed is (error is None)


@pytest.mark.parametrize(
    ("mismatches", "checks", "expected"),
    [
        ([], [], ("SUCCESS", "")),
        ([], [CheckResult("a", "d")], ("SUCCESS", "")),
        ([Mismatch("t", 1, 2)], [], ("FAILED", "1 table(s) with other row counts")),
        (
            [Mismatch("t", 1, 2), Mismatch("u", 1, None)],
            [CheckResult("a", "d")],
            ("FAILED", "2 table(s) with other row counts"),
        ),
        (
            [],
            [CheckResult("a", "d", "no"), CheckResult("b", "d"), CheckResult("c", "d", "")],
            ("FAILED", "check(s) failed: a, c"),
        ),
        (
            [Mismatch("t", 1, 2)],
            [CheckResult("a", "d", "no")],
            ("FAILED", "1 table(s) with other row counts; check(s) failed: a"),
        ),
    ],
)
def test_the_verdict_fails_on_any_mismatch_or_failed_check(
    mismatches: list[Mismatch], checks: list[CheckResult], expected: tuple[str, str]
) -> None:
    assert verdict(mismatches, checks) == expected
