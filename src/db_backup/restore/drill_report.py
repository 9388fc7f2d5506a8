"""The drill report as a typed record, and the drill's verdict as pure functions over it.

A drill report says which backup was restored where, how long it took, what the row counts and
the user's checks found, and whether the drill passed. `DrillReport.to_json` writes the JSON
that `<reports>/drills/*.json` holds (keys in this order, camelCase); `count_mismatches`,
`rows_outcome` and `verdict` decide, from what was counted and checked, whether it passed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from db_backup.reports.model import FAILED, REPORT_NAMESPACE, SUCCESS, StoredReport
from db_backup.util.clock import format_utc


@dataclass(frozen=True)
class Mismatch:
    """A table whose restored row count is not the one its backup recorded."""

    table: str
    expected: Any  # as the backup report holds it (an int in every report this program writes)
    actual: int | None  # None: the table is not in the restored database

    def to_json(self) -> dict[str, Any]:
        """Returns the mismatch as the drill report's JSON holds it."""
        return {"table": self.table, "expected": self.expected, "actual": self.actual}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one user SQL check: passed, or the reason it did not."""

    name: str
    database: str
    error: str | None = None

    @property
    def passed(self) -> bool:
        """Returns True when the check returned one row holding true."""
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """Returns the outcome as the drill report's JSON holds it (`error` only when failed)."""
        document: dict[str, Any] = {
            "name": self.name,
            "database": self.database,
            "passed": self.passed,
        }
        if self.error is not None:
            document["error"] = self.error
        return document


@dataclass
class DrillTarget:
    """Where the backup was restored: a throwaway cluster or a configured server."""

    kind: str
    database: str = ""
    server_version: str = ""

    def to_json(self) -> dict[str, Any]:
        """Returns the target as the drill report's JSON holds it."""
        return {"kind": self.kind, "database": self.database, "serverVersion": self.server_version}


@dataclass
class DrillReport:
    """One database's drill: what was restored, where, what was found, and the verdict."""

    id: str
    job: str
    database: str
    started_at: str
    trigger: str
    hostname: str
    target: DrillTarget
    backup_report_id: str = ""
    backup_report: str = ""  # the backup report's file name
    backup_started_at: str = ""
    status: str = FAILED  # until the drill has proven otherwise
    error_message: str = ""
    finished_at: str = ""
    duration_seconds: float = 0.0
    restore_seconds: float = 0.0
    source: str = ""
    sha256: str = ""
    row_counts: str = "none"
    tables_checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Returns True when the drill passed."""
        return self.status == SUCCESS

    def to_json(self) -> dict[str, Any]:
        """Returns the drill report's JSON document (the keys in the order it is written)."""
        return {
            "schemaVersion": 1,
            "kind": "drill",
            "id": self.id,
            "job": self.job,
            "database": self.database,
            "status": self.status,
            "errorMessage": self.error_message,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "durationSeconds": self.duration_seconds,
            "restoreSeconds": self.restore_seconds,
            "trigger": self.trigger,
            "hostname": self.hostname,
            "backupReportId": self.backup_report_id,
            "backupReport": self.backup_report,
            "backupStartedAt": self.backup_started_at,
            "source": self.source,
            "sha256": self.sha256,
            "target": self.target.to_json(),
            "rowCounts": self.row_counts,
            "tablesChecked": self.tables_checked,
            "mismatches": [m.to_json() for m in self.mismatches],
            "checks": [c.to_json() for c in self.checks],
        }


def new_report(
    job: str,
    database: str,
    backup: StoredReport | None,
    *,
    started: datetime,
    trigger: str,
    hostname: str,
    target_kind: str,
) -> DrillReport:
    """Returns the report of a drill of `backup` starting at `started` (FAILED until it passes).

    Its id is derived from the job, database, start and backup, so the same drill always gets
    the same id.
    """
    backup_id = str(backup.document.get("id", "")) if backup else ""
    started_at = format_utc(started)
    name = f"drill/{job}/{database}/{started_at}/{backup_id}"
    return DrillReport(
        id=str(uuid.uuid5(REPORT_NAMESPACE, name)),
        job=job,
        database=database,
        started_at=started_at,
        trigger=trigger,
        hostname=hostname,
        target=DrillTarget(target_kind),
        backup_report_id=backup_id,
        backup_report=backup.path.name if backup else "",
        backup_started_at=str(backup.document["startedAt"]) if backup else "",
    )


def drill_file_name(report: DrillReport, started: datetime) -> str:
    """Returns the file name of a drill report: `<backup report stem>.drill-<start>.json`."""
    backup = report.backup_report[: -len(".json")] if report.backup_report else "none"
    return f"{backup}.drill-{started:%Y%m%dT%H%M%SZ}.json"


# --------------------------------------------------------------------------- the verdict


def counts_to_compare(backup: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """Returns (rowCounts mode, the exact counts to compare or None) of a backup report.

    Only exact counts (recorded in the dump's own snapshot) can be compared; without them the
    restore itself is what the drill proves.
    """
    expected = backup.get("tables")
    if not isinstance(expected, dict):
        return "none", None
    mode = str(backup.get("rowCounts", "exact"))
    return mode, expected if mode == "exact" else None


def count_mismatches(expected: dict[str, Any], actual: dict[str, int]) -> list[Mismatch]:
    """Returns the tables whose restored row count differs from the recorded one, by name."""
    return [
        Mismatch(table, rows, actual.get(table))
        for table, rows in sorted(expected.items())
        if actual.get(table) != rows
    ]


def pg_text(value: Any) -> str:
    """Returns a value as psql would print it (booleans as t/f, NULL as nothing)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def rows_outcome(name: str, database: str, rows: list[tuple[Any, ...]] | None) -> CheckResult:
    """Returns a user check's outcome from the rows the query returned: one row of one true."""
    if rows is not None and len(rows) == 1 and len(rows[0]) == 1 and rows[0][0] is True:
        return CheckResult(name, database)
    if rows is None:
        shown = "no result set"
    else:
        shown = repr("\n".join("|".join(pg_text(v) for v in row) for row in rows)[:80])
    return CheckResult(name, database, f"returned {shown}, not one row with true")


def verdict(
    mismatches: list[Mismatch], checks: list[CheckResult], definition: list[str] | None = None
) -> tuple[str, str]:
    """Returns (status, errorMessage) of a drill whose restore went through.

    `definition`: the properties of the restored database that are not the recorded ones.
    """
    problems = []
    if definition:
        problems.append(f"database definition differs: {'; '.join(definition)}")
    if mismatches:
        problems.append(f"{len(mismatches)} table(s) with other row counts")
    failed = [c.name for c in checks if not c.passed]
    if failed:
        problems.append(f"check(s) failed: {', '.join(failed)}")
    return (FAILED if problems else SUCCESS), "; ".join(problems)
